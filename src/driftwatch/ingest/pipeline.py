"""The ingest step, independent of the Kafka client: decode, deduplicate, join, dead-letter, hand on, commit.

:meth:`Ingestor.poll` takes one batch from the source and :meth:`Ingestor.process` turns it into plain values with
no I/O: every record ends as exactly one of accepted, rejected (a dead letter) or duplicate, and each accepted one is
an :class:`Accepted` carrying the adapter label it counts under. :meth:`Ingestor.finish` then does the batch's I/O:
dead letters acknowledged by the broker, examples harvested from feedback saved (and feedback still waiting for its
request: :meth:`Ingestor._hold`), the offset journal written, the batch's counters moved (only now: a process killed
before the journal counts nothing, and the next one counts the batch once), the offsets committed (at-least-once: nothing is committed before the rest landed). The source and the
dead-letter sink are small protocols, so a confluent-kafka backend can replace kafka-python without touching this
file.

**The one request-id join.** The dedup window's entry for an inference event is a :class:`Served`: where it was
read, the adapter label it counts under (resolved once, here), and the event itself while it is among the last
``max_kept`` requests (what harvesting a correction or a positive rating needs). Feedback finds its request there;
signals, windows and the harvest read the label off the :class:`Accepted` and keep no join of their own.

**OTLP sources.** A topic of ``spans`` (``ingest.sources``) holds OpenTelemetry trace exports: its decoder
(ingest/otel.py) turns a record into several inference events, each accepted or a duplicate on its own (request id
from trace and span id), or rejects the record as garbage (a dead letter like any other). A record whose spans are
all skipped (no GenAI span) is ``skipped``. Span events are never kept for harvesting, and those without content
never reach a window (:func:`windowed`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Protocol, Sequence

from driftwatch.errors import CommitError, StoreError
from driftwatch.events import Event, Kind, Rejected, decode, encode, now_ms
from driftwatch.metrics import UNKNOWN, Metrics
from driftwatch.ingest.recent import DedupWindow

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]


class Record(Protocol):
    """What a source yields; kafka-python's ConsumerRecord satisfies it as it is."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] | None


class SpanDecoder(Protocol):
    """An OTLP source's decoder (ingest/otel.py): a record → its events and skipped spans, or Rejected."""

    def __call__(self, raw: bytes | None) -> Any: ...
    def refresh(self) -> None: ...  # the I/O its names need, between polls


class Source(Protocol):
    assigned: frozenset[TopicPartition]  # the partitions the group gives this member now (what poll reads)

    def poll(self) -> Sequence[Record]: ...
    def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...  # next offset to read, per partition
    def lag(self) -> dict[TopicPartition, int]: ...
    @property
    def joined(self) -> bool: ...
    def close(self) -> None: ...


class HeldFeedback(Protocol):
    """Where held feedback outlives the process (the state store: state/store.py)."""

    def save_held_feedback(self, group: str, held: list[tuple[str, int, int, str, bytes]], released: list[str],
                           now: float) -> None: ...
    def held_feedback(self, group: str, partitions: list[TopicPartition]) -> list[tuple[str, int, int, str, bytes]]: ...


@dataclass(slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    reason: str


class DeadLetterSink(Protocol):
    def deliver(self, letters: Sequence[DeadLetter]) -> None:
        """Block until the broker acknowledged every letter; raise DeadLetterError(pending=...) otherwise."""
        ...

    def close(self) -> None: ...


class OffsetJournal:
    """Which offsets this replica processed but may not have committed, kept in a small local file.

    Written after a batch is processed and before its offsets are committed. After a kill -9 and a restart
    with the same state directory, records redelivered from that range are counted as duplicates
    (kind="redelivery") instead of being counted again. An entry applies only when the partition resumes
    exactly inside its range; anything else (another replica moved on, the topic was recreated) drops it.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._ranges: dict[TopicPartition, tuple[int, int]] = {}
        self._armed: dict[TopicPartition, tuple[int, int]] = {}
        if path is not None and path.exists():
            try:
                raw = json.loads(path.read_text())
                self._armed = {(t, int(p)): (int(a), int(b)) for t, p, a, b in raw.get("ranges", [])}
            except (ValueError, TypeError, OSError) as exc:
                log.warning("ignoring unreadable offset journal %s: %s", path, exc)
            self._ranges = dict(self._armed)

    def redelivered(self, tp: TopicPartition, offset: int) -> bool:
        """True if this record is one this replica already processed before a restart."""
        armed = self._armed.get(tp)
        if armed is None:
            return False
        start, end = armed
        if start <= offset < end:
            return True
        del self._armed[tp]  # resumed elsewhere: the entry no longer describes this partition
        return False

    def record(self, ranges: Mapping[TopicPartition, tuple[int, int]]) -> None:
        if self.path is None or not ranges:
            return
        self._ranges.update(ranges)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ranges": [[t, p, a, b] for (t, p), (a, b) in self._ranges.items()]}))
        os.replace(tmp, self.path)


def _row_key(dedup_key: str) -> str:
    """A held feedback event's key in the store: its dedup key holds NUL separators, which PostgreSQL's text refuses."""
    return hashlib.sha256(dedup_key.encode()).hexdigest()[:32]


class Served:
    """The join's entry for a request: where it was read, the adapter label it counts under, and the event while it
    is among the last ``max_kept`` (None after, or when there is nothing to harvest from it)."""

    __slots__ = ("where", "adapter", "event")

    def __init__(self, where: tuple[TopicPartition, int], adapter: str, event: Event | None) -> None:
        self.where, self.adapter, self.event = where, adapter, event


def windowed(items: Sequence[Accepted]) -> Sequence[Accepted]:
    """The accepted events that may move a monitor window: all but events made of spans from a source not marked
    ``trusted`` (anyone who reaches the Collector could write them: they must not decide a retrain or roll a bake
    back) and spans that carried no content (``metadata.content: none``: an empty prompt would skew the length
    features and the drift tests). Both count in the signals only. A batch without them is returned as it is."""
    if not any(map(_signals_only, items)):
        return items
    return [a for a in items if not _signals_only(a)]


def _signals_only(a: Accepted) -> bool:
    if a.kind != "inference":
        return False
    metadata = a.event.metadata
    return metadata.get("source") == "otlp" and (metadata.get("content") == "none" or not metadata.get("trusted"))


class Accepted(NamedTuple):
    """An accepted event as it goes downstream: a plain value."""

    kind: Kind
    event: Event
    adapter: str  # inference: the serving adapter's label; feedback: its request's label, else "unknown"
    request: Event | None = None  # feedback: the InferenceEvent it rates, while the join still keeps it


@dataclass(slots=True)
class Batch:
    """One processed poll, waiting for its dead letters to be acknowledged and its offsets committed."""

    events: list[Accepted] = field(default_factory=list)
    examples: list[Any] = field(default_factory=list)  # harvested from feedback: saved before the commit
    dead_letters: list[DeadLetter] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to read
    ranges: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    started: float = 0.0
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic, outcome): moved once journalled
    duplicates: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic, duplicate kind)
    rejected: list[str] = field(default_factory=list)  # dead letters' reasons


class Ingestor:
    def __init__(
        self,
        source: Source,
        dead_letters: DeadLetterSink,
        metrics: Metrics,
        *,
        kinds: Mapping[str, Kind],
        max_record_bytes: int,
        dedup: DedupWindow,
        journal: OffsetJournal | None = None,
        downstream: Callable[[Sequence[Accepted]], None] = lambda events: None,
        label: Callable[[str], str] = str,
        harvest: Callable[[Accepted], Any | None] | None = None,
        save_examples: Callable[[list[Any]], None] | None = None,
        max_kept: int = 0,
        group_id: str = "",
        dead_letter_head_bytes: int = 65_536,
        dead_letter_max_bytes: int = 1_000_000,
        feedback_hold_s: float = 60.0,
        max_held: int = 50_000,
        held_feedback: HeldFeedback | None = None,
        clock: Callable[[], float] = time.monotonic,
        spans: Mapping[str, SpanDecoder] | None = None,
        span_dedup: DedupWindow | None = None,
    ) -> None:
        self.source = source
        self.spans = dict(spans or {})  # OTLP topic -> its decoder (ingest/otel.SpanDecoder): Decoded | Rejected
        # spans have their own dedup table: a flood of them (anyone who reaches the Collector) can never evict the
        # gateway's requests, whose entries the feedback join and redelivery detection need
        self.span_dedup = span_dedup if span_dedup is not None else (
            DedupWindow(dedup.max_entries, dedup.max_age_s, dedup._clock) if self.spans else dedup)
        self.sink = dead_letters
        self.metrics = metrics
        self.kinds = dict(kinds)
        self.max_record_bytes = max_record_bytes
        self.dedup = dedup
        self.journal = journal or OffsetJournal(None)
        self.downstream = downstream
        self.label = label  # the adapter label an event counts under (metrics.adapter_cap): chosen once, here
        self.harvest, self.save_examples = harvest, save_examples
        self._kept: deque[Served] = deque()  # the joined requests that still hold their event, oldest first
        self.max_kept = max_kept if harvest is not None else 0
        self.group_id = group_id
        self.head_bytes = dead_letter_head_bytes
        self.dl_max_bytes = dead_letter_max_bytes
        self.feedback_hold_s, self.max_held, self.clock = feedback_hold_s, max_held, clock
        # request_id -> (read at, [(its partition, feedback read before the request's inference event)]); oldest first
        self._held: OrderedDict[str, tuple[float, list[tuple[TopicPartition, Event]]]] = OrderedDict()
        self._held_keys: set[str] = set()  # their dedup keys: one held once, however often it is loaded or read
        self.held_store = held_feedback
        self._to_save: list[tuple[str, int, int, str, bytes]] = []  # held since the last save: saved before the commit
        self._to_delete: set[str] = set()  # row keys joined or handed on since
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._outcome_children = {
            (topic, outcome): metrics.records.labels(topic=topic, outcome=outcome)
            for topic in self.kinds for outcome in ("accepted", "rejected", "duplicate")
        }
        if self.spans:
            from driftwatch.ingest.otel import SKIP_REASONS  # no protobuf: the decoders brought that in

            self._outcome_children.update({
                (topic, outcome): metrics.records.labels(topic=topic, outcome=outcome)
                for topic in self.spans for outcome in ("accepted", "rejected", "duplicate", "skipped")})
            self._span_children = {o: metrics.otel_spans.labels(outcome=o)
                                   for o in ("event", "metrics_only", "duplicate", "skipped")}
            self._skip_children = {r: metrics.otel_skipped.labels(reason=r) for r in SKIP_REASONS}

    def poll(self) -> Batch | None:
        records = self.source.poll()
        self.metrics.set_lag(self.source.lag())
        if self.held_store is not None and (assigned := self.source.assigned) != self._assigned:
            self._reassigned(assigned)
        if not records:
            if self._held and (late := self._release(self.clock())):
                self.downstream(late)
                self._save_held(quiet=True)  # failing, the rows stay: a restart before the next save hands on again
            return None
        for decoder in self.spans.values():
            decoder.refresh()  # the registry's names, read again when due: I/O here, none in process()
        return self.process(records)

    def process(self, records: Iterable[Record]) -> Batch:
        """Decode, deduplicate and join: each record becomes accepted, rejected or duplicate. No I/O."""
        batch = Batch(started=time.perf_counter())
        counts, dups = batch.counts, batch.duplicates
        kinds, dedup, journal, max_bytes = self.kinds, self.dedup, self.journal, self.max_record_bytes
        feedback: list[Accepted] = []  # handed on after the batch's inference events (see _hold)
        for rec in records:
            topic, partition, offset = rec.topic, rec.partition, rec.offset
            tp = (topic, partition)
            batch.offsets[tp] = offset + 1
            first = batch.ranges.get(tp)
            batch.ranges[tp] = (first[0] if first else offset, offset + 1)
            if journal.redelivered(tp, offset):
                outcome, dup_kind = "duplicate", "redelivery"
            elif topic in self.spans:
                outcome, dup_kind = self._spans(rec, (tp, offset), batch, feedback, dups), ""
            else:
                kind = kinds[topic]
                result = decode(kind, rec.value, max_bytes)
                where = (tp, offset)
                if isinstance(result, Rejected):
                    if dedup.add(("o", topic, partition, offset)):
                        outcome, dup_kind = "duplicate", "redelivery"
                    else:
                        outcome, dup_kind = "rejected", ""
                        batch.dead_letters.append(self._dead_letter(rec, result))
                else:
                    outcome, dup_kind = self._accept(kind, result, where, batch, feedback)
            key = (topic, outcome)
            counts[key] = counts.get(key, 0) + 1
            if dup_kind:
                dk = (topic, dup_kind)
                dups[dk] = dups.get(dk, 0) + 1
        batch.events.extend(feedback)
        batch.events.extend(self._release(self.clock()))
        batch.rejected = [letter.reason for letter in batch.dead_letters]
        self.metrics.dedup_entries.set(len(dedup))
        if batch.events:
            self.downstream(batch.events)
            if self.harvest is not None:
                batch.examples = [x for x in map(self.harvest, batch.events) if x is not None]
        return batch

    def _spans(self, rec: Record, where: tuple[TopicPartition, int], batch: Batch, feedback: list[Accepted],
               dups: dict[tuple[str, str], int]) -> str:
        """The outcome of an OTLP record: each of its spans' events accepted or a duplicate on its own (counted in
        ``dups`` and the span counters); the record rejected (a dead letter) when it is no trace export."""
        topic = rec.topic
        result = self.spans[topic](rec.value)
        if isinstance(result, Rejected):
            if self.span_dedup.add(("o", topic, rec.partition, rec.offset)):
                dups[(topic, "redelivery")] = dups.get((topic, "redelivery"), 0) + 1
                return "duplicate"
            batch.dead_letters.append(self._dead_letter(rec, result))
            return "rejected"
        spans = self._span_children
        skipped = 0
        for reason, n in result.skipped.items():
            self._skip_children[reason].inc(n)
            skipped += n
        if skipped:
            spans["skipped"].inc(skipped)
        new = dup = 0
        for event in result.events:
            _, dup_kind = self._accept("inference", event, where, batch, feedback, keep=False, dedup=self.span_dedup)
            if dup_kind:
                dups[(topic, dup_kind)] = dups.get((topic, dup_kind), 0) + 1
                dup += 1
                spans["duplicate"].inc()
            else:
                new += 1
                spans["event" if event.metadata.get("content") == "full" else "metrics_only"].inc()
        return "accepted" if new else "duplicate" if dup else "skipped"

    def _accept(self, kind: Kind, event: Event, where: tuple[TopicPartition, int], batch: Batch,
                feedback: list[Accepted], keep: bool = True, dedup: DedupWindow | None = None) -> tuple[str, str]:
        """(outcome, duplicate kind) of a decoded event; an accepted one joins the batch (feedback after it). With
        ``keep`` false (spans: not vouched traffic) the join keeps the label only, never the event: no harvest."""
        dedup = self.dedup if dedup is None else dedup
        key = (kind, event.dedup_key)
        served = Served(where, "", event if keep else None) if kind == "inference" else None
        if dedup.add(key, served or where):
            # the same record again (a failed commit, a rebalance) or the same key sent twice by a producer
            prior = dedup.get(key)
            redelivery = (prior.where if isinstance(prior, Served) else prior) == where
            return "duplicate", "redelivery" if redelivery else "key"
        if served is not None:
            served.adapter = self.label(event.adapter)
            batch.events.append(Accepted(kind, event, served.adapter))
            if keep:
                self._keep(served)
            if self._held and (held := self._held.pop(event.request_id, None)):
                self._unhold(held[1])
                feedback.extend(Accepted("feedback", e, served.adapter, served.event) for _, e in held[1])
        elif (request := dedup.get(("inference", event.request_id))
              or self.span_dedup.get(("inference", event.request_id))) is not None:
            feedback.append(Accepted(kind, event, request.adapter, request.event))
        else:
            self._hold(event, where)
        return "accepted", ""

    def _keep(self, served: Served) -> None:
        """The join keeps the event of the last ``max_kept`` requests only (what harvesting needs); older entries
        keep their label."""
        if not self.max_kept:
            served.event = None
            return
        kept = self._kept
        kept.append(served)
        if len(kept) > self.max_kept:
            kept.popleft().event = None

    def _hold(self, event: Event, where: tuple[TopicPartition, int], loaded: bool = False) -> None:
        """Feedback is joined to the adapter that served its request, so it is handed on after the request's
        inference event. The two topics are not read in lockstep (a poll returns partition by partition, and one
        topic can lag the other): feedback read first waits here for its request, up to ``feedback_hold_s``. With a
        ``held_feedback`` store it is saved there before its offset is committed, deleted once joined or handed on,
        and loaded by whichever member owns its partition next (a restart, a rebalance), so a crash loses no
        correction from harvesting; its record read again after that is a redelivery (see _reassigned)."""
        key = event.dedup_key
        if key in self._held_keys:
            return
        self._held_keys.add(key)
        tp = where[0]
        entry = self._held.get(event.request_id)
        if entry is None:
            self._held[event.request_id] = (self.clock(), [(tp, event)])
        else:
            entry[1].append((tp, event))
        if self.held_store is not None and not loaded:
            row = _row_key(key)
            self._to_delete.discard(row)  # released, then read again before the save: held, not deleted
            self._to_save.append((*tp, where[1], row, encode(event)))

    def _unhold(self, events: list[tuple[TopicPartition, Event]]) -> None:
        for _, e in events:
            self._held_keys.discard(e.dedup_key)
            if self.held_store is not None:
                self._to_delete.add(_row_key(e.dedup_key))

    def _release(self, now: float) -> list[Accepted]:
        """Feedback that waited its time (or past ``max_held``, the oldest): handed on without its request."""
        out: list[Accepted] = []
        held = self._held
        while held:
            request_id, (since, events) = next(iter(held.items()))
            if since > now - self.feedback_hold_s and len(self._held_keys) <= self.max_held:
                break
            del held[request_id]
            self._unhold(events)
            out.extend(Accepted("feedback", e, UNKNOWN) for _, e in events)
        self.metrics.feedback_held.set(len(self._held_keys))
        return out

    def _reassigned(self, assigned: frozenset[TopicPartition]) -> None:
        """The group moved partitions. Feedback held from one this member lost is forgotten here: its new owner
        loads it. What is held on one it gained is loaded, and its record is marked in the dedup window as read
        where it was (the previous owner saved it, then died before its commit: read again, it is a redelivery, not
        a second hand-on). A store that cannot be read is asked again on the next poll."""
        gone, new = self._assigned - assigned, sorted(tp for tp in assigned - self._assigned
                                                      if self.kinds.get(tp[0]) == "feedback")
        for request_id, (since, events) in list(self._held.items()) if gone else ():
            if any(tp in gone for tp, _ in events):
                self._held_keys.difference_update(e.dedup_key for tp, e in events if tp in gone)
                if kept := [(tp, e) for tp, e in events if tp not in gone]:
                    self._held[request_id] = (since, kept)
                else:
                    del self._held[request_id]
        try:
            rows = self.held_store.held_feedback(self.group_id, new) if new else []  # type: ignore[union-attr]
        except StoreError as exc:
            log.warning("could not load the feedback held on %s (asked again on the next poll): %s", new, exc)
            self._assigned = assigned - set(new)
            self.metrics.feedback_held.set(len(self._held_keys))
            return
        self._assigned = assigned
        loaded = 0
        for topic, partition, offset, row, body in rows:
            event = decode("feedback", body, 1 << 30)
            if isinstance(event, Rejected):  # written by another version: nothing to hold
                self._to_delete.add(row)
                continue
            where = ((topic, partition), offset)
            self.dedup.add(("feedback", event.dedup_key), where)
            self._hold(event, where, loaded=True)
            loaded += 1
        if loaded:
            log.info("loaded %d feedback event(s) held for their request on %s", loaded, new)
        self.metrics.feedback_held.set(len(self._held_keys))

    def _save_held(self, quiet: bool = False) -> None:
        """What was held, joined or handed on since the last save, in the store. In a batch's finish a failure
        raises (nothing is committed); between batches (``quiet``) it is kept for the next save."""
        if not (self._to_save or self._to_delete):
            return
        try:
            self.held_store.save_held_feedback(self.group_id, self._to_save,  # type: ignore[union-attr]
                                               sorted(self._to_delete), time.time())
        except StoreError as exc:
            if not quiet:
                raise
            log.warning("could not save held feedback (kept for the next batch): %s", exc)
            return
        self._to_save, self._to_delete = [], set()

    def finish(self, batch: Batch) -> None:
        """Dead letters acknowledged, harvested examples saved, then journal, then commit. Raises DeadLetterError (or
        the store's StoreError) with nothing committed; called again, it goes on from what is left."""
        if batch.dead_letters:
            self.sink.deliver(batch.dead_letters)
            batch.dead_letters = []
        if batch.examples and self.save_examples is not None:
            self.save_examples(batch.examples)
            batch.examples = []
        self._save_held()
        self.journal.record(batch.ranges)
        self._count(batch)
        try:
            self.source.commit(batch.offsets)
        except CommitError as exc:
            self.metrics.commits.labels(outcome="failed").inc()
            log.warning("offset commit failed (kept and retried; records read again are counted as duplicates): %s", exc)
        else:
            self.metrics.commits.labels(outcome="ok").inc()
        self.metrics.batch_seconds.observe(time.perf_counter() - batch.started)

    def _count(self, batch: Batch) -> None:
        """The batch's outcomes, once it is journalled (a batch finished again after a failure counts nothing)."""
        for key, n in batch.counts.items():
            self._outcome_children[key].inc(n)
        for (topic, dup_kind), n in batch.duplicates.items():
            self.metrics.duplicates.labels(topic=topic, kind=dup_kind).inc(n)
        for reason in batch.rejected:
            self.metrics.dead_letters.labels(reason=reason).inc()
        batch.counts, batch.duplicates, batch.rejected = {}, {}, []

    def _dead_letter(self, rec: Record, rejected: Rejected) -> DeadLetter:
        value = rec.value or b""
        headers = list(rec.headers or ())
        headers += [
            ("driftwatch.reason", rejected.reason.value.encode()),
            ("driftwatch.detail", rejected.detail[:1000].encode("utf-8", "replace")),
            ("driftwatch.source.topic", rec.topic.encode()),
            ("driftwatch.source.partition", str(rec.partition).encode()),
            ("driftwatch.source.offset", str(rec.offset).encode()),
            ("driftwatch.source.timestamp", str(rec.timestamp).encode()),
            ("driftwatch.group", self.group_id.encode()),
            ("driftwatch.rejected_at", str(now_ms()).encode()),
        ]
        if len(value) > self.dl_max_bytes:
            headers += [
                ("driftwatch.truncated", b"true"),
                ("driftwatch.original_bytes", str(len(value)).encode()),
                ("driftwatch.original_sha256", hashlib.sha256(value).hexdigest().encode()),
            ]
            value = value[: self.head_bytes]
        return DeadLetter(key=rec.key, value=value, headers=headers, reason=rejected.reason.value)
