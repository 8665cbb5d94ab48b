"""Ingest against real brokers: dead letters, exact counts through rebalances and broker restarts, shutdown."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from driftwatch import app
from driftwatch.client import EventProducer
from driftwatch.errors import ContractError, TopicLayoutError
from driftwatch.dev.simulate import BAD_KINDS, SimConfig, Simulator

from .conftest import (DaemonProcess, InProcessDaemon, committed_offsets, make_settings, read_topic, settings_dict,
                       wait_for)


def send_stream(producer: EventProducer, settings, sim: Simulator, count: int, rate: float | None = None):
    """Send a simulated stream; return what was sent ({label: n}) and the outgoing records in order."""
    topics = {"inference": settings.kafka.topics.inference, "feedback": settings.kafka.topics.feedback}
    sent: Counter = Counter()
    records = []
    t0 = time.monotonic()
    n = 0
    for out in list(sim.stream(count, step_ms=10)) + list(sim.tail()):
        if rate and out.label == "inference":
            n += 1
            time.sleep(max(0.0, t0 + n / rate - time.monotonic()))
        future = producer.send_raw(topics[out.topic], out.value, key=out.key)
        records.append((out, future))
        sent[out.label] += 1
    producer.flush()
    return sent, records


def test_every_bad_record_is_dead_lettered_with_its_bytes_reason_and_source(broker, tmp_path):
    settings = make_settings(broker, tmp_path, ingest={"max_record_bytes": 64 * 1024},
                             kafka={"producer": {"max_request_size": 150_000}})
    d = InProcessDaemon(settings).wait_ready()
    sim = Simulator(SimConfig(seed=11, bad={k: 2 for k in BAD_KINDS}, oversize_bytes=100_000))
    with EventProducer(kafka=settings.kafka) as producer:
        sent, records = send_stream(producer, settings, sim, 300)
    t = settings.kafka.topics
    wait_for(lambda: d.accepted(t.inference) == sent["inference"] and d.accepted(t.feedback) == sent["feedback"]
             and d.value("driftwatch_dead_letters_total") == 16, 30, "all records to be counted")
    for kind in BAD_KINDS:
        if kind != "duplicate":
            assert d.value("driftwatch_dead_letters_total", reason=kind) == 2, kind
    assert d.value("driftwatch_duplicates_total", topic=t.inference, kind="key") == 2
    assert d.value("driftwatch_ingest_records_total", topic=t.inference, outcome="rejected") == 16
    assert d.stop() == 0

    bad = {}  # (partition, offset) of each bad record on the source topic -> (label, bytes)
    for out, future in records:
        if out.label not in ("inference", "feedback", "duplicate"):
            meta = future.get(timeout=10)
            bad[(meta.partition, meta.offset)] = (out.label, out.value or b"")
    letters = read_topic(broker.bootstrap, t.dead_letter, expect=16)
    assert len(letters) == 16
    for letter in letters:
        h = {k: v for k, v in letter.headers}
        label, original = bad[(int(h["driftwatch.source.partition"]), int(h["driftwatch.source.offset"]))]
        assert h["driftwatch.reason"].decode() == label
        assert h["driftwatch.source.topic"].decode() == t.inference
        if label == "oversize":  # above the dead-letter producer's limit: head, size and hash instead
            assert h["driftwatch.truncated"] == b"true"
            assert int(h["driftwatch.original_bytes"]) == len(original)
            assert letter.value == original[: settings.ingest.dead_letter_head_bytes]
        else:
            assert (letter.value or b"") == original


def test_counts_are_exact_while_a_second_daemon_joins_and_leaves(broker, tmp_path, caplog):
    # Graceful handovers only: a long session, so a member starved of CPU on a busy CI machine is not expelled
    # (an expelled member is a zombie until it notices; what it read meanwhile is read again, by design).
    settings = make_settings(broker, tmp_path, kafka={"consumer": {"session_timeout_ms": 12_000,
                                                                    "heartbeat_interval_ms": 1_000}})
    caplog.set_level(logging.INFO, logger="driftwatch.ingest")  # the partition moves, shown if this fails
    caplog.set_level(logging.INFO, logger="kafka.coordinator")
    t = settings.kafka.topics
    a = InProcessDaemon(settings, state_dir=tmp_path / "a").wait_ready()
    sim = Simulator(SimConfig(seed=12, feedback_rate=0.3, feedback_delay_s=0.5))
    result = {}
    producer = EventProducer(kafka=settings.kafka)
    writer = threading.Thread(target=lambda: result.update(sent=send_stream(producer, settings, sim, 3000, rate=250)[0]))
    writer.start()
    time.sleep(2)
    b = InProcessDaemon(settings, state_dir=tmp_path / "b")
    wait_for(lambda: b.daemon.source.joined and b.accepted(t.inference) > 0, 40, "the second daemon to take partitions")
    time.sleep(2)
    assert b.stop() == 0  # leaves the group gracefully while the producer is still writing
    writer.join(60)
    producer.close()
    assert not writer.is_alive()
    sent = result["sent"]
    total = lambda topic: a.accepted(topic) + b.accepted(topic)  # noqa: E731
    wait_for(lambda: total(t.inference) >= sent["inference"] and total(t.feedback) >= sent["feedback"], 40,
             "both daemons together to count everything")
    time.sleep(1)  # anything counted twice would show up now
    commits = {(name, outcome): d.value("driftwatch_offset_commits_total", outcome=outcome)
               for name, d in (("a", a), ("b", b)) for outcome in ("ok", "failed")}
    assert (total(t.inference), total(t.feedback)) == (sent["inference"], sent["feedback"]), commits
    assert a.value("driftwatch_duplicates_total") + b.value("driftwatch_duplicates_total") == 0
    if broker.kind == "tansu":  # noida-db refuses commits once a rebalance starts; they are re-committed after rejoin
        assert a.value("driftwatch_offset_commits_total", outcome="failed") == 0
    assert a.stop() == 0


def test_ingest_keeps_running_through_three_broker_restarts(noida, tmp_path):
    settings = make_settings(noida, tmp_path)
    t = settings.kafka.topics
    d = InProcessDaemon(settings).wait_ready()
    producer = EventProducer(kafka=settings.kafka, retries=2**31 - 1, delivery_timeout_ms=120_000, enable_idempotence=False)
    result = {}
    sim = Simulator(SimConfig(seed=13, feedback_rate=0.0))
    writer = threading.Thread(target=lambda: result.update(out=send_stream(producer, settings, sim, 4000, rate=200)))
    writer.start()
    for cycle in range(3):  # stop and start the broker three times while the daemon consumes
        before = d.accepted(t.inference)
        wait_for(lambda: d.accepted(t.inference) > before + 300, 60, f"ingest under way (cycle {cycle + 1})")
        noida.restart(down_s=1.0)
        assert d.thread.is_alive() and d.daemon.health()[0]
    writer.join(120)
    producer.close()
    sent, records = result["out"]
    acked = {out.key for out, f in records if f.succeeded()}
    on_topic = {r.key for r in read_topic(noida.bootstrap, t.inference)}
    print(f"sent {sent['inference']}, acknowledged {len(acked)}, distinct on the topic after the restart {len(on_topic)}")
    # noida-db 0.2.3 was seen to drop a few acknowledged records from its log across a restart (a broker
    # property): what the topic still holds must all be counted, and nothing may be counted twice, so the count
    # lies between the records on the topic and those plus every acknowledged one.
    assert len(on_topic) >= 0.9 * sent["inference"]
    wait_for(lambda: d.accepted(t.inference) >= len(on_topic), 60, "every record on the topic to be counted")
    time.sleep(1)
    assert len(on_topic) <= d.accepted(t.inference) <= len(acked | on_topic)
    assert d.daemon.readiness()[0]
    assert d.stop() == 0


def test_sigterm_finishes_the_batch_commits_and_exits_0(broker, tmp_path):
    raw = settings_dict(broker, tmp_path)
    proc = DaemonProcess(raw, tmp_path)
    try:
        proc.wait_ready()
        settings = make_settings(broker, tmp_path, kafka={"topics": raw["kafka"]["topics"]})
        with EventProducer(kafka=settings.kafka) as producer:
            sent, records = send_stream(producer, settings, Simulator(SimConfig(seed=14, feedback_rate=0)), 1500)
        t = settings.kafka.topics
        wait_for(lambda: proc.value("driftwatch_ingest_records_total", topic=t.inference, outcome="accepted") == 1500,
                 30, "the daemon to count 1500 events")
        proc.signal()
        assert proc.wait(20) == 0, proc.output()
    finally:
        proc.kill()
    ends: dict[int, int] = {}
    for _, future in records:
        meta = future.get(timeout=10)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    committed = committed_offsets(broker.bootstrap, raw["kafka"]["consumer"]["group_id"], t.inference, 4)
    assert {p: o for p, o in committed.items() if p in ends} == ends
    assert "finishing the batch in hand" in proc.output()
    # a quiet daemon: its own lines only (kafka-python's warnings and APScheduler's are let through by --verbose)
    assert not [line for line in proc.output().splitlines() if " kafka." in line or "apscheduler" in line]


def test_kill_9_then_restart_redelivers_from_the_last_commit_and_counts_duplicates(tansu, tmp_path):
    # On Tansu: noida-db 0.2.3 never evicts a member that died without leaving (seen for > 90 s), so after a kill -9
    # its group cannot rebalance at all. Tansu evicts it after the session timeout.
    raw = settings_dict(tansu, tmp_path, kafka={"consumer": {"max_poll_records": 50}})
    settings = make_settings(tansu, tmp_path, kafka={"topics": raw["kafka"]["topics"]})
    t, n = settings.kafka.topics, 30_000
    with EventProducer(kafka=settings.kafka) as producer:
        send_stream(producer, settings, Simulator(SimConfig(seed=15, feedback_rate=0)), n)
    first = DaemonProcess(raw, tmp_path, "first")
    try:
        wait_for(lambda: first.value("driftwatch_ingest_records_total", topic=t.inference) > 3000, 60,
                 "the first daemon to be mid-stream", interval_s=0.01)
    finally:
        first.kill()  # SIGKILL: no batch finished, no commit, no goodbye
    group = raw["kafka"]["consumer"]["group_id"]
    committed = committed_offsets(tansu.bootstrap, group, t.inference, 4)
    journal = json.loads((Path(raw["daemon"]["state_dir"]) / f"offsets-{group}.json").read_text())
    expected_dups = sum(end - committed[p] for topic, p, start, end in journal["ranges"]
                        if topic == t.inference and start <= committed[p] < end)
    remaining = n - sum(committed.values())
    assert remaining > 0, "the kill came after everything was committed: nothing was tested"

    second = DaemonProcess(raw, tmp_path, "second")
    try:
        second.wait_ready(timeout_s=60)
        seen = lambda: second.value("driftwatch_ingest_records_total", topic=t.inference)  # noqa: E731
        wait_for(lambda: seen() >= remaining, 60, "the second daemon to read everything after the last commit")
        time.sleep(0.5)
        assert seen() == remaining  # at-least-once: exactly the uncommitted tail comes back, nothing is lost
        assert second.value("driftwatch_duplicates_total", topic=t.inference, kind="redelivery") == expected_dups
        assert second.value("driftwatch_ingest_records_total", topic=t.inference, outcome="accepted") == remaining - expected_dups
    finally:
        second.signal()
        second.wait(20)


def test_a_correction_held_for_its_request_survives_kill_9_and_is_harvested(tansu, tmp_path):
    """Finding 5, on a real broker and daemon processes: a correction read before its request waits for it, and its
    offset is committed with its batch. The daemon is killed with -9 before the request comes: the next one loads the
    held correction from the state store, joins it when the request is read, and harvests it."""
    from driftwatch.state.store import SqliteStore

    raw = settings_dict(tansu, tmp_path, ingest={"feedback_hold_s": 600})
    settings = make_settings(tansu, tmp_path, kafka={"topics": raw["kafka"]["topics"]})
    t = settings.kafka.topics
    request = {"schema_version": 1, "request_id": "held-1", "timestamp": 1795514400000, "model": "base",
               "adapter": "support-v2", "prompt": "Where is my parcel?", "response": "No idea.", "latency_ms": 40,
               "status": "ok", "route": "qa"}
    correction = {"schema_version": 1, "feedback_id": "fb-held-1", "request_id": "held-1",
                  "timestamp": 1795514401000, "correction": "It left the depot this morning."}
    first = DaemonProcess(raw, tmp_path, "first")
    try:
        first.wait_ready(timeout_s=60)
        with EventProducer(kafka=settings.kafka) as producer:
            producer.send_raw(t.feedback, json.dumps(correction).encode(), key=b"held-1")
            producer.flush()
        wait_for(lambda: first.value("driftwatch_feedback_held") == 1, 30, "the correction to be held")
        group = raw["kafka"]["consumer"]["group_id"]
        wait_for(lambda: sum(committed_offsets(tansu.bootstrap, group, t.feedback, 4).values()) == 1, 30,
                 "the held correction's offset to be committed")
    finally:
        first.kill()  # SIGKILL, with the correction held and its record committed: it is never read again
    with EventProducer(kafka=settings.kafka) as producer:
        producer.send_raw(t.inference, json.dumps(request).encode(), key=b"held-1")
        producer.flush()
    second = DaemonProcess(raw, tmp_path, "second")
    try:
        second.wait_ready(timeout_s=60)
        wait_for(lambda: second.value("driftwatch_ingest_records_total", topic=t.inference) == 1, 60,
                 "the second daemon to read the request")
        wait_for(lambda: second.value("driftwatch_training_examples_total", source="correction") == 1, 30,
                 "the held correction to be joined and harvested")
        assert second.value("driftwatch_ingest_records_total", topic=t.feedback) == 0  # never read again
        assert second.value("driftwatch_feedback_held") == 0
    finally:
        second.signal()
        second.wait(20)
    store = SqliteStore(settings.model_copy(update={"daemon": settings.daemon.model_copy(
        update={"state_dir": Path(raw["daemon"]["state_dir"])})}).state_store_path)
    assert [(e.request_id, e.source, e.target) for e in store.examples()] == [
        ("held-1", "correction", "It left the depot this morning.")]


def test_topic_layout_problems_stop_the_start_with_the_fix(tansu, tmp_path):
    settings = make_settings(tansu, tmp_path, kafka={"create_topics": False})
    t = settings.kafka.topics
    with pytest.raises(TopicLayoutError, match="do not exist.*create_topics"):
        app.build(settings, serve_http=False)
    admin = KafkaAdminClient(bootstrap_servers=tansu.bootstrap)
    admin.create_topics([NewTopic(t.inference, 4, 1), NewTopic(t.feedback, 2, 1), NewTopic(t.dead_letter, 1, 1)])
    admin.close()
    with pytest.raises(TopicLayoutError, match=rf"'{t.inference}' has 4 partitions but feedback topic '{t.feedback}' has 2"):
        app.build(settings, serve_http=False)
    raw = settings_dict(tansu, tmp_path, kafka={"create_topics": False, "topics": settings.kafka.topics.model_dump()})
    proc = DaemonProcess(raw, tmp_path)
    assert proc.wait(30) == 1
    assert "require_copartitioned" in proc.output()


def test_producer_helper_validates_and_co_partitions_feedback_with_its_request(tansu, tmp_path):
    settings = make_settings(tansu, tmp_path)
    app.build(settings, serve_http=False)._close()  # creates the topics, equal partition counts
    t = settings.kafka.topics
    with EventProducer(kafka=settings.kafka) as events:
        with pytest.raises(ContractError, match="latency_ms"):
            events.inference({"request_id": "r", "model": "m", "adapter": "a", "prompt": "p", "status": "ok",
                              "latency_ms": "slow"})
        metas = []
        for i in range(20):
            rid = f"req-{i}"
            inf = events.inference({"request_id": rid, "model": "base", "adapter": "v1", "prompt": "hi",
                                    "response": "hello", "latency_ms": 12.5, "status": "ok"}).get(10)
            fb = events.feedback({"feedback_id": f"fb-{i}", "request_id": rid, "thumbs": "up"}).get(10)
            metas.append((inf.partition, fb.partition))
    assert all(a == b for a, b in metas) and len({a for a, _ in metas}) > 1
    records = read_topic(tansu.bootstrap, t.inference, expect=20)
    assert len(records) == 20 and all(r.key.decode() == json.loads(r.value)["request_id"] for r in records)


def test_a_broker_outage_is_a_few_lines_of_driftwatch_s_and_broker_up_says_it_within_15_s(noida, tmp_path, caplog):
    """Finding 9: three outages of 20-30 s logged 212 ERROR lines from kafka-python's own loggers, and nothing
    metric-shaped said the broker was gone until the group's session timed out, ~60 s in."""
    import logging

    from driftwatch.log import keep_kafka_logs

    keep_kafka_logs(quiet=True)
    caplog.set_level(logging.INFO)
    settings = make_settings(noida, tmp_path, control={"token": "s3cret-token-0123456789"})
    d = InProcessDaemon(settings).wait_ready()
    try:
        wait_for(lambda: d.value("driftwatch_broker_up") == 1, 15, "broker_up 1")
        noida.stop()
        lost = time.monotonic()
        wait_for(lambda: d.value("driftwatch_broker_up") == 0, 20, "broker_up 0")
        assert time.monotonic() - lost < 15
        # pause and rollback are needed exactly now: the control API answers through the outage
        url = f"http://127.0.0.1:{d.daemon.http.port}"
        status = httpx.get(url + "/v1/status", headers={"Authorization": "Bearer s3cret-token-0123456789"}, timeout=10)
        assert status.status_code == 200 and httpx.get(url + "/readyz", timeout=10).status_code == 503
        noida.start()
        wait_for(lambda: d.value("driftwatch_broker_up") == 1, 60, "broker_up 1 again")
        wait_for(lambda: d.daemon.readiness()[0], 60, "ready again")
    finally:
        if noida.proc is None:
            noida.start()
        d.stop()
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in lines if r.name.startswith("kafka")], [r.getMessage() for r in lines][:5]
    ours = [r.getMessage() for r in lines]
    assert sum("lost the broker" in m for m in ours) == 1 and sum("the broker is back after" in m for m in ours) == 1
    assert len(ours) <= 6, ours
