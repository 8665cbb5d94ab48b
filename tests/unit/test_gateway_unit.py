"""Gateway pieces without a server: alias resolution, the event buffer's bound, the alias store."""

import random
import time

import pytest

from driftwatch.config import Kafka
from driftwatch.serving.gateway import AliasTable, EventSink
from driftwatch.metrics import GatewayMetrics
from driftwatch.state.store import SqliteStore


def test_alias_resolution():
    table = AliasTable.from_doc(3, {"production": {"v7": 1}, "canary": {"v7": 0.9, "v8": 0.1}, "off": {"v1": 0, "v2": 1}})
    rng = random.Random(0)
    assert table.resolve("production", rng) == ("production", "v7")
    assert table.resolve("v9", rng) == (None, "v9")  # not an alias: a concrete version, passed on
    assert table.resolve("off", rng) == ("off", "v2")  # a zero weight never routes
    picks = [table.resolve("canary", rng)[1] for _ in range(10_000)]
    assert 0.08 < picks.count("v8") / 10_000 < 0.12


def test_alias_table_versions_are_append_only_and_validated(tmp_path):
    store = SqliteStore(tmp_path / "s.db")
    assert store.alias_table() == (0, {})
    v1 = store.set_aliases({"production": {"v1": 1}}, time.time(), who="a", why="first")
    v2 = store.set_aliases({"canary": {"v1": 9, "v2": 1}}, time.time())
    assert (v1, v2) == (1, 2) and store.alias_table() == (2, {"production": {"v1": 1.0}, "canary": {"v1": 9.0, "v2": 1.0}})
    store.set_aliases({"canary": None}, time.time())
    assert store.alias_table()[1] == {"production": {"v1": 1.0}} and store.alias_table_version() == 3
    with pytest.raises(ValueError, match="positive sum"):
        store.set_aliases({"production": {"v1": 0}}, time.time())
    assert store.alias_table_version() == 3  # a refused change writes nothing


class FakeFuture:
    def __init__(self, ok, exception=None):
        from kafka.errors import KafkaConnectionError

        self.is_done, self._ok = True, ok
        self.exception = None if ok else exception or KafkaConnectionError("broker down")  # retriable

    def succeeded(self):
        return self._ok

    def failed(self):
        return not self._ok


class FakeProducer:
    def __init__(self):
        self.sent, self.up = [], False

    def send(self, topic, value, key):
        self.sent.append(value) if self.up else None
        return FakeFuture(self.up)

    def flush(self, timeout=None):
        pass

    def close(self, timeout=None):
        pass


def test_the_buffer_is_bounded_counts_what_it_drops_and_delivers_the_rest_later():
    producer, metrics = FakeProducer(), GatewayMetrics()
    sink = EventSink(Kafka(), 5, metrics, producer_factory=lambda: producer, retry_s=0.05).start()
    accepted = [sink.offer("t", b"k", f"e{i}".encode()) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert metrics.registry.get_sample_value("driftwatch_gateway_events_dropped_total", {"topic": "t", "reason": "buffer_full"}) == 3
    time.sleep(0.2)
    assert sink.pending == 5  # Kafka down: kept, retried
    producer.up = True
    deadline = time.monotonic() + 5
    while sink.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert producer.sent == [f"e{i}".encode() for i in range(5)] and sink.close() == 0
    assert metrics.registry.get_sample_value("driftwatch_gateway_events_delivered_total", {"topic": "t"}) == 5


class SlowAckProducer(FakeProducer):
    """Every send lands, but the first flush gives up before the acknowledgements come back."""

    def __init__(self):
        super().__init__()
        self.up, self.flushes, self.futures = True, 0, []

    def send(self, topic, value, key):
        super().send(topic, value, key)
        self.futures.append(FakeFuture(True))
        self.futures[-1].is_done = False
        return self.futures[-1]

    def flush(self, timeout=None):
        self.flushes += 1
        for f in self.futures:
            f.is_done = True  # acknowledged, but for the first flush too late
        if self.flushes == 1:
            raise TimeoutError("Timeout waiting for future")


def test_a_flush_that_times_out_resends_only_what_was_not_acknowledged():
    producer, metrics = SlowAckProducer(), GatewayMetrics()
    sink = EventSink(Kafka(), 10, metrics, producer_factory=lambda: producer, retry_s=0.05).start()
    for i in range(3):
        sink.offer("t", b"k", f"e{i}".encode())
    deadline = time.monotonic() + 5
    while sink.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.close() == 0
    assert producer.sent == [b"e0", b"e1", b"e2"]  # each once: the late acknowledgements were counted
    assert metrics.registry.get_sample_value("driftwatch_gateway_events_resent_total", {"topic": "t"}) is None


def test_unacknowledged_events_are_resent_and_counted():
    producer, metrics = FakeProducer(), GatewayMetrics()
    sink = EventSink(Kafka(), 10, metrics, producer_factory=lambda: producer, retry_s=0.05).start()
    sink.offer("t", b"k", b"e0")
    time.sleep(0.2)  # Kafka down: retried a few times
    producer.up = True
    deadline = time.monotonic() + 5
    while sink.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.close() == 0 and producer.sent == [b"e0"]
    assert metrics.registry.get_sample_value("driftwatch_gateway_events_resent_total", {"topic": "t"}) >= 2


def test_a_record_kafka_refuses_for_good_is_dropped_and_counted_not_a_block_on_the_rest():
    from kafka.errors import MessageSizeTooLargeError

    class Picky(FakeProducer):
        def send(self, topic, value, key):
            if value == b"huge":
                raise MessageSizeTooLargeError("The message is 2000000 bytes when serialized")
            return super().send(topic, value, key)

    producer, metrics = Picky(), GatewayMetrics()
    producer.up = True
    sink = EventSink(Kafka(), 100, metrics, producer_factory=lambda: producer, retry_s=0.05).start()
    for value in (b"a", b"huge", b"b"):
        sink.offer("t", b"k", value)
    deadline = time.monotonic() + 5
    while sink.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert producer.sent == [b"a", b"b"] and sink.pending == 0
    value = metrics.registry.get_sample_value
    assert value("driftwatch_gateway_events_dropped_total", {"topic": "t", "reason": "refused"}) == 1
    assert value("driftwatch_gateway_events_delivered_total", {"topic": "t"}) == 2


def test_what_is_still_buffered_at_the_drain_deadline_is_counted():
    producer, metrics = FakeProducer(), GatewayMetrics()  # Kafka down
    sink = EventSink(Kafka(), 100, metrics, producer_factory=lambda: producer, retry_s=0.05).start()
    for i in range(4):
        sink.offer("t", b"k", b"e")
    assert sink.close(timeout_s=0.3) == 4
    assert metrics.registry.get_sample_value("driftwatch_gateway_events_dropped_total",
                                             {"topic": "t", "reason": "shutdown"}) == 4


def test_a_record_the_broker_refuses_for_good_does_not_wedge_the_rest_nor_resend_what_was_acknowledged():
    from kafka.errors import TopicAuthorizationFailedError

    class Refusing(FakeProducer):
        def __init__(self):
            super().__init__()
            self.up, self.calls = True, []

        def send(self, topic, value, key):
            self.calls.append(value)
            if value == b"forbidden":
                return FakeFuture(False, TopicAuthorizationFailedError("not authorised"))
            return super().send(topic, value, key)

    producer, metrics = Refusing(), GatewayMetrics()
    sink = EventSink(Kafka(), 100, metrics, producer_factory=lambda: producer, retry_s=0.05).start()
    for value in (b"forbidden", b"a", b"b", b"c"):
        sink.offer("t", b"k", value)
    deadline = time.monotonic() + 5
    while sink.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    for i in range(50):  # the sink goes on delivering
        sink.offer("t", b"k", f"n{i}".encode())
    while sink.pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sink.pending == 0 and sorted(producer.calls).count(b"a") == 1  # each sent once
    assert metrics.registry.get_sample_value("driftwatch_gateway_events_dropped_total",
                                             {"topic": "t", "reason": "refused"}) == 1


def test_the_buffer_is_bounded_in_bytes_too():
    producer, metrics = FakeProducer(), GatewayMetrics()  # Kafka down
    sink = EventSink(Kafka(), 1000, metrics, producer_factory=lambda: producer, retry_s=0.05, max_bytes=2**20)
    assert [sink.offer("t", b"k", b"x" * 400_000) for _ in range(3)] == [True, True, False]


def test_a_broker_back_within_the_drain_grace_gets_every_buffered_event():
    """SIGTERM while Kafka is down: the drain gave up after its first failed round, though the grace had time left.
    It retries at a short interval (not retry_s) until the grace ends."""
    import threading

    producer, metrics = FakeProducer(), GatewayMetrics()  # Kafka down
    sink = EventSink(Kafka(), 100, metrics, producer_factory=lambda: producer, retry_s=30).start()
    for i in range(4):
        sink.offer("t", b"k", f"e{i}".encode())
    time.sleep(0.1)  # a first round failed: the sink waits retry_s (30 s) before the next
    left: list[int] = []
    drain = threading.Thread(target=lambda: left.append(sink.close(timeout_s=5)))
    t0 = time.monotonic()
    drain.start()
    time.sleep(0.5)
    producer.up = True  # the broker is back within the grace
    drain.join(10)
    assert left == [0] and time.monotonic() - t0 < 2.5
    assert producer.sent == [f"e{i}".encode() for i in range(4)]
    assert metrics.registry.get_sample_value("driftwatch_gateway_events_dropped_total",
                                             {"topic": "t", "reason": "shutdown"}) is None


def test_the_sinks_producer_reconnects_within_a_second(monkeypatch):
    """kafka-python's reconnect backoff grows to 30 s: a broker back 2 s into a 20 s drain was reached after it."""
    import driftwatch.ingest.kafka as kafka

    given = {}
    monkeypatch.setattr(kafka, "producer", lambda cfg, **kw: given.update(kw) or FakeProducer())
    EventSink(Kafka(), 10, GatewayMetrics())._producer()
    assert given["reconnect_backoff_max_ms"] <= 1000 and given["reconnect_backoff_ms"] <= given["reconnect_backoff_max_ms"]


def test_the_hourly_quota_refills_evenly_and_holds_a_bounded_number_of_keys():
    from driftwatch.serving.gateway import HourlyQuota

    quota = HourlyQuota(3, max_keys=2)
    assert [quota.take("a", now=0) for _ in range(4)] == [True, True, True, False]
    assert quota.take("a", now=1199) is False and quota.take("a", now=1201) is True  # one back every 20 minutes
    assert quota.take("b", now=1201) and quota.take("c", now=1201)  # a third key: "a" is forgotten, the oldest
    assert len(quota._buckets) == 2 and "a" not in quota._buckets
