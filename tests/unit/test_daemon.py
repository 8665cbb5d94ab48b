import json
import threading
import time

from driftwatch.app import Daemon, State
from driftwatch.config import Settings
from driftwatch.errors import DeadLetterError
from driftwatch.ingest.pipeline import Ingestor
from driftwatch.metrics import Metrics
from driftwatch.ingest.recent import DedupWindow

from .fakes import FakeSink, FakeSource, Rec
from .test_events import GOOD

SETTINGS = Settings.model_validate({"ingest": {"dead_letter_retry_s": 0.01}})
BATCH = [Rec("inf", 0, 0, json.dumps(GOOD).encode()), Rec("inf", 0, 1, b"not json")]


class FlakySink(FakeSink):
    """Refuses the first ``failures`` deliveries; records what the daemon exposed at each attempt."""

    def __init__(self, failures):
        super().__init__()
        self.failures = failures
        self.attempts = 0
        self.daemon = None
        self.observed = []

    def deliver(self, letters):
        self.attempts += 1
        if self.daemon is not None:
            self.observed.append((self.daemon.readiness()[0],
                                  self.daemon.metrics.registry.get_sample_value("driftwatch_dead_letter_blocked")))
        if self.attempts <= self.failures:
            raise DeadLetterError("dead-letter topic unreachable", letters)
        super().deliver(letters)


def start(sink):
    source, metrics = FakeSource([BATCH]), Metrics()
    ing = Ingestor(source, sink, metrics, kinds={"inf": "inference"}, max_record_bytes=10_000, dedup=DedupWindow(100, 60))
    daemon = Daemon(SETTINGS, metrics, source, sink, ing)
    sink.daemon = daemon
    stop = threading.Event()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", daemon.run(stop)))
    thread.start()
    return daemon, source, stop, thread, result


def wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_offsets_wait_for_the_dead_letter_topic_then_commit():
    sink = FlakySink(failures=3)
    daemon, source, stop, thread, result = start(sink)
    wait(lambda: source.commits)
    stop.set()
    thread.join(5)
    assert source.commits == [{("inf", 0): 2}]
    assert len(sink.delivered) == 1
    assert sink.observed[1:4] == [(False, 1.0)] * 3  # blocked: not ready, gauge up, nothing committed
    assert daemon.metrics.registry.get_sample_value("driftwatch_dead_letter_blocked") == 0
    assert result["code"] == 0 and daemon.state is State.STOPPED


def test_stop_while_blocked_exits_1_without_committing():
    sink = FlakySink(failures=10**9)
    daemon, source, stop, thread, result = start(sink)
    wait(lambda: sink.attempts >= 3)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert source.commits == [] and result["code"] == 1


def test_liveness_fails_once_the_loop_cannot_join_for_longer_than_the_bound():
    """After a kill -9 a broker may never evict the dead member: readiness stays false, and liveness must fail in time
    so that Kubernetes restarts the pod rather than leave it unready for ever."""
    source, metrics = FakeSource([]), Metrics()
    source.joined = False
    ing = Ingestor(source, FakeSink(), metrics, kinds={"inf": "inference"}, max_record_bytes=10_000,
                   dedup=DedupWindow(100, 60))
    settings = Settings.model_validate({"daemon": {"stuck_after_s": 0.2}})
    daemon = Daemon(settings, metrics, source, FakeSink(), ing)
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,))
    thread.start()
    try:
        wait(lambda: daemon.state is State.RUNNING)
        assert daemon.health()[0] and not daemon.readiness()[0]  # not joined yet, within the bound
        wait(lambda: not daemon.health()[0])
        assert daemon.health()[1]["not_joined_s"] >= 0.2
        source.joined = True  # it joins: alive and ready again
        wait(lambda: daemon.health()[0] and daemon.readiness()[0])
    finally:
        stop.set()
        thread.join(5)


def test_the_broker_watch_says_an_outage_in_a_few_lines_and_a_group_it_cannot_join_within_a_minute(caplog):
    import logging

    from driftwatch.app import BrokerWatch
    from driftwatch.metrics import Metrics

    now = [0.0]
    metrics = Metrics()
    watch = BrokerWatch(metrics, "kafka-0:9092", "driftwatch", clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="driftwatch")
    watch.observe(True)
    assert metrics.registry.get_sample_value("driftwatch_broker_up") == 1
    for t in range(0, 200):  # a loop turn a second, the broker gone for 200 s
        now[0] = 10.0 + t
        watch.observe(False, ConnectionError("refused") if t % 2 else None)
    assert metrics.registry.get_sample_value("driftwatch_broker_up") == 0
    now[0] = 215.0
    watch.observe(True)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("lost the broker (kafka-0:9092)" in m for m in lines) == 1
    assert sum("still unreachable" in m for m in lines) == 3  # once a minute
    assert [m for m in lines if "is back" in m] == [
        "the broker is back after 3 min 25 s: reading goes on from the committed offsets (records read again count "
        "as duplicates); 100 failed polls, 0 client errors meanwhile"]
    caplog.clear()
    for t in range(0, 400, 5):  # restarted after a kill -9: the dead member holds the partitions
        now[0] = 1000.0 + t
        watch.unjoined(1000.0, lambda: "the coordinator has not assigned partitions")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("not a member of consumer group 'driftwatch' for 1 min 0 s")
