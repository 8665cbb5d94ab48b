"""The kafka-python edge: consumer group source, dead-letter producer, topic layout check, and the producer every
other part of driftwatch sends with (the gateway's event sink, the producer helper).

The one place kafka-python is imported, and the one map of its errors into driftwatch's tree (:func:`translate`,
as httpx maps httpcore's): every call into kafka-python that can raise is translated here, with ``from exc``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kerr
from kafka.errors import KafkaError  # noqa: F401 - re-exported: the class the edge's callers catch before translate()
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from driftwatch.config import Kafka
from driftwatch.errors import (
    BrokerUnavailable, CommitError, ConfigError, ConfigProblem, DeadLetterError, DriftwatchError, IngestError,
    TopicLayoutError,
)
from driftwatch.ingest.pipeline import DeadLetter, Record

log = logging.getLogger(__name__)


def client_kwargs(cfg: Kafka) -> dict[str, Any]:
    """Connection and security settings shared by consumer, producer and admin client (secrets revealed here only)."""
    sec = cfg.security
    kw: dict[str, Any] = {
        "bootstrap_servers": list(cfg.bootstrap_servers),
        "client_id": cfg.client_id,
        "request_timeout_ms": cfg.request_timeout_ms,
        "security_protocol": sec.protocol,
    }
    if sec.protocol.startswith("SASL"):
        kw["sasl_mechanism"] = sec.sasl_mechanism
        kw["sasl_plain_username"] = sec.sasl_username
        kw["sasl_plain_password"] = sec.sasl_password.get_secret_value() if sec.sasl_password else None
    if sec.protocol.endswith("SSL"):
        kw["ssl_check_hostname"] = sec.ssl_check_hostname
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(sec, name)
            if value is not None:
                kw[name] = str(value)
        if sec.ssl_password is not None:
            kw["ssl_password"] = sec.ssl_password.get_secret_value()
    return kw


# a broker that is down, restarting or unreachable: worth retrying with backoff
# raised by send() for one record, never to succeed (too large for the producer): not a reason to stop sending others
PERMANENT_SEND_ERRORS = (kerr.MessageSizeTooLargeError, ValueError, TypeError)
_TRANSIENT = (kerr.RetriableError, kerr.KafkaConnectionError, kerr.NodeNotReadyError)
# the group moved on under a commit: the records are redelivered
_COMMIT = (kerr.CommitFailedError, kerr.IllegalGenerationError, kerr.RebalanceInProgressError,
           kerr.UnknownMemberIdError)


def translate(exc: Exception, cfg: Kafka, doing: str) -> DriftwatchError:
    """kafka-python's error as driftwatch's (raise it ``from exc``): the settings refused (ConfigError), no broker
    or a broken connection (BrokerUnavailable, transient), a commit the group refused (CommitError), anything else
    from Kafka (IngestError)."""
    what = f"{doing}: {type(exc).__name__}: {exc}"
    if isinstance(exc, kerr.KafkaConfigurationError):
        return ConfigError([ConfigProblem("kafka", f"kafka-python refused the settings: {exc}",
                                          "adjust the kafka settings it names")])
    if isinstance(exc, _COMMIT):
        return CommitError(what)
    if isinstance(exc, _TRANSIENT):
        return BrokerUnavailable(f"{what} (brokers {','.join(cfg.bootstrap_servers)}; check kafka.bootstrap_servers, "
                                 "kafka.security and that the broker is up)")
    return IngestError(what)


def producer(cfg: Kafka, **config: Any) -> KafkaProducer:
    """A KafkaProducer with the connection and security settings of ``cfg`` and ``config`` on top."""
    try:
        return KafkaProducer(**{**client_kwargs(cfg), **config})
    except kerr.KafkaError as exc:
        raise translate(exc, cfg, "creating a producer") from exc


def ensure_topics(cfg: Kafka, extra: Sequence[str] = ()) -> dict[str, int]:
    """Check (or, with kafka.create_topics, create) the three topics and the ``extra`` ones (ingest.sources'; new
    ones get kafka.partitions); return partition counts.

    Raises TopicLayoutError when a topic is missing or inference and feedback are not co-partitioned.
    """
    t = cfg.topics
    wanted = [t.inference, t.feedback, t.dead_letter, *extra]
    try:
        admin = KafkaAdminClient(**client_kwargs(cfg))
    except kerr.KafkaError as exc:
        raise translate(exc, cfg, "checking the topics") from exc
    try:
        counts = _partition_counts(admin, wanted)
        missing = [name for name in wanted if name not in counts]
        if missing and not cfg.create_topics:
            raise TopicLayoutError(
                f"topic(s) {missing} do not exist; create them (inference and feedback with the same partition count), "
                "or set kafka.create_topics: true to let driftwatch create them"
            )
        if missing:
            # a new feedback topic copies the inference topic's partition count, and the other way round
            pair = counts.get(t.inference) or counts.get(t.feedback) or cfg.partitions
            new = [NewTopic(name, pair if name in (t.inference, t.feedback) else cfg.partitions, cfg.replication_factor)
                   for name in missing]
            try:
                admin.create_topics(new)
            except kerr.TopicAlreadyExistsError:
                pass
            log.info("created topics %s", missing)
            counts = _partition_counts(admin, wanted)
        n_inf, n_fb = counts.get(t.inference), counts.get(t.feedback)
        if cfg.require_copartitioned and n_inf != n_fb:
            raise TopicLayoutError(
                f"inference topic '{t.inference}' has {n_inf} partitions but feedback topic '{t.feedback}' has {n_fb}: "
                "records are keyed by request_id, so a feedback record only meets its inference record in the same "
                f"replica when both topics have the same partition count. Fix: give '{t.feedback}' {n_inf} partitions "
                "(or recreate it), or set kafka.require_copartitioned: false"
            )
        return counts
    except kerr.KafkaError as exc:
        raise translate(exc, cfg, "checking the topics") from exc
    finally:
        admin.close()


def _partition_counts(admin: KafkaAdminClient, names: Sequence[str]) -> dict[str, int]:
    existing = set(admin.list_topics())
    present = [n for n in names if n in existing]
    if not present:
        return {}
    return {d["name"]: len(d["partitions"]) for d in admin.describe_topics(present) if d.get("partitions")}


class _Listener(ConsumerRebalanceListener):
    """Runs inside the consumer's poll: only state changes here, no broker I/O (that would block the client's loop)."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions revoked: %s", sorted((tp.topic, tp.partition) for tp in revoked))
        self.source._joined = False  # until the group assigns again: not ready, and liveness counts from here
        self.source.assigned = self.source.assigned - {(tp.topic, tp.partition) for tp in revoked}
        for tp in revoked:
            self.source._handover.pop(tp, None)

    def on_partitions_assigned(self, assigned: Any) -> None:
        src = self.source
        src._joined = True
        src._rejoined = True
        log.info("partitions assigned: %s", sorted((tp.topic, tp.partition) for tp in assigned))
        src.assigned = src.assigned | {(tp.topic, tp.partition) for tp in assigned}
        for tp in set(assigned) & set(src._pending):
            src._consumer.seek(tp, src._pending[tp])  # kept, and already processed up to there: do not re-read
        # Every other partition starts from its committed offset, read after a short hold. Not from the position
        # the client may still hold: a member whose sync failed misses a generation, another member reads and
        # commits meanwhile, and the client keeps the stale position of a partition it "still" has (seen on
        # Tansu: everything the other member read was read again). The hold is for a previous owner whose
        # commit was refused mid-rebalance: it commits again right after rejoining.
        arrived = set(assigned) - set(src._pending)
        if arrived:
            src._consumer.pause(*arrived)
            due = time.monotonic() + src._handover_s
            src._handover.update({tp: due for tp in arrived})


class KafkaSource:
    """A kafka-python consumer group over the inference and feedback topics (and ``extra_topics``: ingest.sources');
    manual commits only.

    Exact counts across graceful rebalances: offsets are committed after every batch. If a broker refuses that
    commit because a rebalance started (noida-db does; Apache Kafka and Tansu accept it), the offsets are kept,
    partitions this consumer keeps resume from them, and they are committed again as soon as it has rejoined;
    every other assigned partition waits ``handover_grace_ms``, then starts from its committed offset.
    """

    def __init__(self, cfg: Kafka, extra_topics: Sequence[str] = ()) -> None:
        self.cfg = cfg
        c = cfg.consumer
        self._joined = False
        self._rejoined = False
        self.assigned: frozenset[tuple[str, int]] = frozenset()  # (topic, partition)s: the listener keeps it
        self._pending: dict[TopicPartition, int] = {}
        self._handover: dict[TopicPartition, float] = {}
        self._handover_s = c.handover_grace_ms / 1000
        self._poll_timeout_ms = c.poll_timeout_ms
        self._max_records = c.max_poll_records
        self._quiet = False  # the last poll returned nothing: the next one waits on this side first (see poll)
        try:
            self._consumer = KafkaConsumer(
                **client_kwargs(cfg),
                group_id=c.group_id,
                enable_auto_commit=False,
                auto_offset_reset=c.auto_offset_reset,
                max_poll_records=c.max_poll_records,
                session_timeout_ms=c.session_timeout_ms,
                heartbeat_interval_ms=c.heartbeat_interval_ms,
                max_poll_interval_ms=c.max_poll_interval_ms,
                fetch_max_bytes=c.fetch_max_bytes,
                max_partition_fetch_bytes=c.max_partition_fetch_bytes,
            )
        except kerr.KafkaError as exc:
            raise translate(exc, cfg, "joining the consumer group") from exc
        self._consumer.subscribe([cfg.topics.inference, cfg.topics.feedback, *extra_topics], listener=_Listener(self))

    @property
    def joined(self) -> bool:
        return self._joined

    def reachable(self) -> bool:
        """Whether the client holds a live connection to any broker: kafka-python's own state, no I/O (a stopped
        broker's sockets close at once; its polls alone would say so only after the group's session timed out)."""
        try:
            conns = self._consumer._client._manager._conns
        except AttributeError:  # another kafka-python: the polls' failures alone tell
            return True
        return any(getattr(conn, "connected", False) for conn in list(conns.values()))

    def why_unjoined(self) -> str:
        """Why the consumer is not a member of its group, as far as the client can tell."""
        if not self.reachable():
            return "no broker is reachable"
        coordinator = getattr(getattr(self._consumer, "_coordinator", None), "coordinator_id", "?")
        if coordinator is None:
            return "no group coordinator found yet"
        return (f"the group coordinator (broker {coordinator}) has not assigned partitions: a member killed without "
                "leaving holds them until kafka.consumer.session_timeout_ms, and some brokers never evict it (then "
                "/healthz fails at daemon.stuck_after_s and the pod is restarted)")

    def poll(self) -> Sequence[Record]:
        timeout_ms = self._poll_timeout_ms
        if self._quiet and self._joined and not self._handover:
            # Nothing came last time: wait here, then take what the broker sent meanwhile (the fetch sent by the
            # last poll stays in flight through the wait). A broker that holds an empty fetch for fetch_max_wait_ms
            # (Kafka, Tansu) costs the same either way; one that answers at once (noida-db 0.2.3: ~260 fetches/s)
            # kept the client's poll loop busy: 0.6 of a core with no traffic (bench/idle.py). The first record
            # after a quiet spell waits up to two poll timeouts more (with a broker that answers at once, the fetch
            # poll(0) sends is read on the next poll); a group (re)join polls in full, as before.
            time.sleep(timeout_ms / 1000)
            timeout_ms = 0
        try:
            batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=self._max_records)
        except kerr.KafkaError as exc:  # the coordinator or a connection broke inside the client: the loop retries
            raise translate(exc, self.cfg, "polling") from exc
        if self._rejoined:
            self._rejoined = False
            if self._pending:
                try:
                    self._commit({})  # what the last generation refused, now under the new one
                    log.info("committed the offsets the previous generation refused")
                except CommitError as exc:
                    log.warning("re-commit after rejoin failed (kept for the next commit): %s", exc)
        if self._handover:
            self._release_handovers()
        self._quiet = not batches
        if not batches:
            return ()
        if len(batches) == 1:
            return next(iter(batches.values()))
        return [rec for recs in batches.values() for rec in recs]

    def _release_handovers(self) -> None:
        """Partitions whose hold is over start from their committed offset. Asked only while a broker is reachable,
        and with a short timeout: kafka-python's committed() waits for a broker that is gone, and the ingest loop
        stopped turning for the whole outage. One that cannot be read stays paused and is asked again a second
        later."""
        now = time.monotonic()
        released = []
        due = [tp for tp, t in self._handover.items() if t <= now]
        if due and not self.reachable():  # kafka-python's committed() waits out an outage whatever its timeout
            self._handover.update({tp: now + 1.0 for tp in due})
            return
        for tp in due:
            try:
                committed = self._consumer.committed(tp, timeout_ms=min(self.cfg.request_timeout_ms, 2000))
            except kerr.KafkaError as exc:
                log.debug("could not re-read the committed offset of %s yet: %s", tp, exc)
                self._handover[tp] = now + 1.0
                continue
            del self._handover[tp]
            if committed is not None:
                self._consumer.seek(tp, committed)
            released.append(tp)
        if released:
            self._consumer.resume(*released)

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
        self._commit({TopicPartition(t, p): o for (t, p), o in offsets.items()})

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        merged = {**self._pending, **offsets}
        try:
            self._consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in merged.items()},
                                  timeout_ms=self.cfg.request_timeout_ms)
        except kerr.KafkaError as exc:
            self._pending = merged
            raise CommitError(f"committing offsets: {type(exc).__name__}: {exc}") from exc
        self._pending = {}

    def lag(self) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        consumer = self._consumer
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            position = consumer.position(tp)  # known once a fetch returned: no broker round trip
            if position is not None:
                out[(tp.topic, tp.partition)] = max(0, high - position)
        return out

    def close(self) -> None:
        self._consumer.close(autocommit=False, timeout_ms=5_000)


class KafkaDeadLetterSink:
    """Writes dead letters and waits for the broker's acknowledgement before the source offsets are committed."""

    def __init__(self, cfg: Kafka) -> None:
        p = cfg.producer
        self.topic = cfg.topics.dead_letter
        self.timeout_s = p.delivery_timeout_ms / 1000
        try:
            kwargs = client_kwargs(cfg)
            kwargs["request_timeout_ms"] = min(cfg.request_timeout_ms, p.delivery_timeout_ms - p.linger_ms - 1)
            self._producer = KafkaProducer(
                **kwargs,
                acks="all" if p.acks == "all" else int(p.acks),
                linger_ms=p.linger_ms,
                max_request_size=p.max_request_size,
                compression_type=None if p.compression_type == "none" else p.compression_type,
                delivery_timeout_ms=p.delivery_timeout_ms,
                max_block_ms=p.delivery_timeout_ms,
            )
        except kerr.KafkaError as exc:
            raise translate(exc, cfg, "creating the dead-letter producer") from exc

    def deliver(self, letters: Sequence[DeadLetter]) -> None:
        sent = []
        failed: list[DeadLetter] = []
        first_error: Exception | None = None
        for letter in letters:
            try:
                sent.append((letter, self._producer.send(self.topic, key=letter.key, value=letter.value, headers=letter.headers)))
            except kerr.KafkaError as exc:
                failed.append(letter)
                first_error = first_error or exc
        try:
            self._producer.flush(timeout=self.timeout_s)
        except kerr.KafkaError as exc:
            first_error = first_error or exc
        for letter, future in sent:
            if not future.succeeded():
                failed.append(letter)
                first_error = first_error or future.exception or TimeoutError("not acknowledged in time")
        if failed:
            raise DeadLetterError(
                f"{len(failed)} of {len(letters)} dead letters not acknowledged by topic '{self.topic}': "
                f"{type(first_error).__name__}: {first_error}",
                failed,
            )

    def close(self) -> None:
        self._producer.close(timeout=5)


def end_offsets(cfg: Kafka, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """Each partition's end (the next offset to be written), read without a consumer group."""
    consumer = KafkaConsumer(**client_kwargs(cfg), group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        return {(tp.topic, tp.partition): o for tp, o in consumer.end_offsets(tps).items()}
    finally:
        consumer.close(autocommit=False)


def committed_offsets(cfg: Kafka, group: str, partitions) -> dict[tuple[str, int], int]:
    """A consumer group's committed offsets for ``partitions`` ((topic, partition) pairs; 0 where none), read
    without joining the group."""
    consumer = KafkaConsumer(**client_kwargs(cfg), group_id=group, enable_auto_commit=False)
    try:
        return {k: consumer.committed(TopicPartition(*k), timeout_ms=10_000) or 0 for k in partitions}
    finally:
        consumer.close(autocommit=False)


def read_range(cfg: Kafka, topic: str, *, since_ms: int | None = None, until_ms: int | None = None,
               max_records: int | None = None, timeout_s: float = 120.0, idle_s: float = 5.0) -> list[bytes]:
    """Record values of ``topic`` with a broker timestamp in [since_ms, until_ms), read without a consumer group
    (nothing is committed, nobody's offsets move). Reads every partition up to the high watermark seen when the
    read started, stopping early at ``max_records``; a partition that goes quiet for ``idle_s`` counts as read."""
    try:
        consumer = KafkaConsumer(**client_kwargs(cfg), group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="earliest", max_partition_fetch_bytes=cfg.consumer.max_partition_fetch_bytes)
    except kerr.KafkaError as exc:
        raise translate(exc, cfg, "reading a topic range") from exc
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise TopicLayoutError(f"topic '{topic}' does not exist (or has no partitions)")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        values: list[bytes] = []
        ends: dict[TopicPartition, int] = {}  # the high watermark first seen per partition: where this read ends
        deadline = last_new = time.monotonic()
        deadline += timeout_s
        while time.monotonic() < deadline and time.monotonic() - last_new < idle_s:
            for tp, records in consumer.poll(timeout_ms=200, max_records=5000).items():
                last_new = time.monotonic()
                for r in records:
                    if (since_ms is None or r.timestamp >= since_ms) and (until_ms is None or r.timestamp < until_ms):
                        values.append(r.value)
                        if max_records is not None and len(values) >= max_records:
                            return values
            for tp in tps:
                if tp not in ends and consumer.highwater(tp) is not None:
                    ends[tp] = consumer.highwater(tp)
            if len(ends) == len(tps) and all(consumer.position(tp) >= end for tp, end in ends.items()):
                break
        return values
    finally:
        consumer.close(autocommit=False)
