"""The ingest step, independent of the Kafka client: decode, deduplicate, dead-letter, hand on, commit.

One :meth:`Ingestor.step` is one poll: every record ends as exactly one of accepted, rejected (dead-lettered)
or duplicate. Offsets are committed only after the batch was handed downstream and every dead letter was
acknowledged by the broker (at-least-once). The source and the dead-letter sink are small protocols, so a
confluent-kafka backend can replace kafka-python without touching this file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol, Sequence

from driftwatch.errors import CommitError
from driftwatch.events import Event, Kind, Rejected, decode, now_ms
from driftwatch.metrics import Metrics
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


class Source(Protocol):
    def poll(self) -> Sequence[Record]: ...
    def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...  # next offset to read, per partition
    def lag(self) -> dict[TopicPartition, int]: ...
    @property
    def joined(self) -> bool: ...
    def close(self) -> None: ...


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


@dataclass(slots=True)
class Batch:
    """One processed poll, waiting for its dead letters to be acknowledged and its offsets committed."""

    events: list[tuple[Kind, Event]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to read
    ranges: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    started: float = 0.0


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
        downstream: Callable[[Sequence[tuple[Kind, Event]]], None] = lambda events: None,
        group_id: str = "",
        dead_letter_head_bytes: int = 65_536,
        dead_letter_max_bytes: int = 1_000_000,
        feedback_hold_s: float = 60.0,
        max_held: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.sink = dead_letters
        self.metrics = metrics
        self.kinds = dict(kinds)
        self.max_record_bytes = max_record_bytes
        self.dedup = dedup
        self.journal = journal or OffsetJournal(None)
        self.downstream = downstream
        self.group_id = group_id
        self.head_bytes = dead_letter_head_bytes
        self.dl_max_bytes = dead_letter_max_bytes
        self.feedback_hold_s, self.max_held, self.clock = feedback_hold_s, max_held, clock
        # request_id -> (read at, feedback read before the request's inference event); oldest first
        self._held: OrderedDict[str, tuple[float, list[Event]]] = OrderedDict()
        self._n_held = 0
        self._outcome_children = {
            (topic, outcome): metrics.records.labels(topic=topic, outcome=outcome)
            for topic in self.kinds for outcome in ("accepted", "rejected", "duplicate")
        }

    def poll(self) -> Batch | None:
        records = self.source.poll()
        self.metrics.set_lag(self.source.lag())
        if not records:
            if self._held and (late := self._release(self.clock())):
                self.downstream(late)
            return None
        return self.process(records)

    def process(self, records: Iterable[Record]) -> Batch:
        """Decode and deduplicate: each record becomes accepted, rejected or duplicate. No I/O."""
        batch = Batch(started=time.perf_counter())
        counts: dict[tuple[str, str], int] = {}
        dups: dict[tuple[str, str], int] = {}
        kinds, dedup, journal, max_bytes = self.kinds, self.dedup, self.journal, self.max_record_bytes
        feedback: list[tuple[Kind, Event]] = []  # handed on after the batch's inference events (see _hold)
        for rec in records:
            topic, partition, offset = rec.topic, rec.partition, rec.offset
            tp = (topic, partition)
            batch.offsets[tp] = offset + 1
            first = batch.ranges.get(tp)
            batch.ranges[tp] = (first[0] if first else offset, offset + 1)
            if journal.redelivered(tp, offset):
                outcome, dup_kind = "duplicate", "redelivery"
            else:
                kind = kinds[topic]
                result = decode(kind, rec.value, max_bytes)
                if isinstance(result, Rejected):
                    if dedup.add(("o", topic, partition, offset)):
                        outcome, dup_kind = "duplicate", "redelivery"
                    else:
                        outcome, dup_kind = "rejected", ""
                        batch.dead_letters.append(self._dead_letter(rec, result))
                elif dedup.add((kind, result.dedup_key), tp_offset := (tp, offset)):
                    # the same record again (a failed commit, a rebalance) or the same key sent twice by a producer
                    redelivery = dedup.get((kind, result.dedup_key)) == tp_offset
                    outcome, dup_kind = "duplicate", "redelivery" if redelivery else "key"
                else:
                    outcome, dup_kind = "accepted", ""
                    if kind == "inference":
                        batch.events.append((kind, result))
                        if self._held and (held := self._held.pop(result.request_id, None)):
                            self._n_held -= len(held[1])
                            feedback.extend(("feedback", e) for e in held[1])
                    elif dedup.get(("inference", result.request_id)) is not None:
                        feedback.append((kind, result))
                    else:
                        self._hold(result)
            key = (topic, outcome)
            counts[key] = counts.get(key, 0) + 1
            if dup_kind:
                dk = (topic, dup_kind)
                dups[dk] = dups.get(dk, 0) + 1
        batch.events.extend(feedback)
        batch.events.extend(self._release(self.clock()))
        for key, n in counts.items():
            self._outcome_children[key].inc(n)
        for (topic, dup_kind), n in dups.items():
            self.metrics.duplicates.labels(topic=topic, kind=dup_kind).inc(n)
        for letter in batch.dead_letters:
            self.metrics.dead_letters.labels(reason=letter.reason).inc()
        self.metrics.dedup_entries.set(len(dedup))
        if batch.events:
            self.downstream(batch.events)
        return batch

    def _hold(self, event: Event) -> None:
        """Feedback is joined to the adapter that served its request, so it is handed on after the request's
        inference event. The two topics are not read in lockstep (a poll returns partition by partition, and one
        topic can lag the other): feedback read first waits here for its request, up to ``feedback_hold_s``. Held
        feedback is in memory only, like the monitor's windows: a crash loses it from the signals, not from Kafka."""
        entry = self._held.get(event.request_id)
        if entry is None:
            self._held[event.request_id] = (self.clock(), [event])
        else:
            entry[1].append(event)
        self._n_held += 1  # the gauge is set once per batch, by _release

    def _release(self, now: float) -> list[tuple[Kind, Event]]:
        """Feedback that waited its time (or past ``max_held``, the oldest): handed on without its request."""
        out: list[tuple[Kind, Event]] = []
        held = self._held
        while held:
            request_id, (since, events) = next(iter(held.items()))
            if since > now - self.feedback_hold_s and self._n_held <= self.max_held:
                break
            del held[request_id]
            self._n_held -= len(events)
            out.extend(("feedback", e) for e in events)
        self.metrics.feedback_held.set(self._n_held)
        return out

    def finish(self, batch: Batch) -> None:
        """Dead letters acknowledged, then journal, then commit. Raises DeadLetterError with nothing committed."""
        if batch.dead_letters:
            self.sink.deliver(batch.dead_letters)
            batch.dead_letters = []
        self.journal.record(batch.ranges)
        try:
            self.source.commit(batch.offsets)
        except CommitError as exc:
            self.metrics.commits.labels(outcome="failed").inc()
            log.warning("offset commit failed (kept and retried; records read again are counted as duplicates): %s", exc)
        else:
            self.metrics.commits.labels(outcome="ok").inc()
        self.metrics.batch_seconds.observe(time.perf_counter() - batch.started)

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
