"""Two replicas, as `driftwatch run` processes, on one real broker and one real PostgreSQL: both ingest (disjoint
partitions of one consumer group), one leads (a file lock here; a Kubernetes Lease in a cluster). The leader's
verdict comes from both replicas' windows: each replica's own window is too small for the rule, the merged one is
not, so the one retrain decision for the shift proves the merge. Killing the leader hands over to the other, which
goes on from the shared store without a second trigger. A control call to the follower is forwarded to the leader."""

from __future__ import annotations

import dataclasses
import re
import time
import uuid

import httpx
import pytest

from driftwatch.client import EventProducer
from driftwatch.config import Settings
from driftwatch.events import decode
from driftwatch.monitor.monitor import build_profile
from driftwatch.dev.simulate import SimConfig, Simulator
from driftwatch.state.store import open_store

from .conftest import DaemonProcess, settings_dict, wait_for
from .test_ingest import send_stream
from .test_operations import SHIFTED

TOKEN = "replica-test-token-0123456789"
WINDOW = 300  # events per replica window; the rule wants more than one replica's window holds
RULE_MIN = 400


@pytest.mark.timeout(300)
def test_two_replicas_one_retrain_for_one_shift_and_a_clean_handover(tansu, postgres, tmp_path):
    sim = Simulator(SimConfig(seed=500, feedback_rate=0))
    build_profile([decode("inference", o.value, 10**7) for o in sim.stream(6000, start_ms=1795514400000)]
                  ).save(tmp_path / "ref.json")
    url = postgres.database(f"r{uuid.uuid4().hex[:10]}")
    doc = settings_dict(
        tansu, tmp_path,
        store={"url": url},
        leader={"backend": "file", "lock_path": str(tmp_path / "leader.lock"), "renew_s": 0.5, "lease_s": 3},
        monitor={"reference_path": str(tmp_path / "ref.json"), "window_events": WINDOW, "check_interval_s": 0.5,
                 "min_samples": 100},
        policy={"rules": [{"name": "input-drift", "signal": "input_drift", "threshold": 1, "clear": 0.5,
                           "min_samples": RULE_MIN}]},
        control={"token": TOKEN},
    )
    replicas = []
    try:
        a = DaemonProcess({**doc, "daemon": {**doc["daemon"], "state_dir": str(tmp_path / "a")}}, tmp_path, "a")
        a.wait_ready()
        b = DaemonProcess({**doc, "daemon": {**doc["daemon"], "state_dir": str(tmp_path / "b")}}, tmp_path, "b")
        replicas = [a, b]
        b.wait_ready()
        assert (a.value("driftwatch_leader"), b.value("driftwatch_leader")) == (1, 0)
        store = open_store(url)

        # a control call to the follower reaches the leader, which records it
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.post(b.url + "/v1/pause", json={"reason": "forwarding test"}, headers=auth, timeout=30)
        assert r.status_code == 200 and r.json() == {"paused": True} and r.headers["x-driftwatch-forwarded"] == a.url
        status = httpx.get(b.url + "/v1/status", headers=auth, timeout=30).json()
        assert status["paused"] and status["leader"]["url"] == a.url
        httpx.post(b.url + "/v1/resume", json={"reason": "forwarding test done"}, headers=auth, timeout=30)
        assert httpx.post(b.url + "/v1/pause", json={"reason": "x"}, timeout=30).status_code == 401

        settings = Settings.model_validate(doc)
        with EventProducer(kafka=settings.kafka) as producer:
            sent, _ = send_stream(producer, settings, Simulator(SHIFTED), 2 * WINDOW + 100)
        inference = settings.kafka.topics.inference
        counted = lambda d: d.value("driftwatch_ingest_records_total", topic=inference, outcome="accepted")  # noqa: E731
        wait_for(lambda: counted(a) + counted(b) == sent["inference"], 60, "both replicas to ingest the shift")
        assert 0 < counted(a) < sent["inference"] and 0 < counted(b) < sent["inference"]  # disjoint shares

        retrains = lambda: store.decisions(action="retrain")  # noqa: E731
        (decision,) = wait_for(retrains, 60, "the leader to decide a retrain on the merged windows")
        assert decision.adapter == "shifted" and decision.rule == "input-drift"
        events = int(re.search(r"window of (\d+) events", decision.reasons[0]).group(1))
        assert events >= RULE_MIN > WINDOW, decision.reasons  # no replica's own window could have fired the rule
        assert a.value("driftwatch_monitor_replicas") == 2

        # the leader dies; the follower takes over, and with a new follower sees the same shift: it goes on from
        # the store (the rule is firing already), so no second decision of any kind (not even a hold)
        a.kill()
        wait_for(lambda: b.value("driftwatch_leader") == 1, 30, "the follower to take over")
        c = DaemonProcess({**doc, "daemon": {**doc["daemon"], "state_dir": str(tmp_path / "c")}}, tmp_path, "c")
        replicas.append(c)
        c.wait_ready()
        assert c.value("driftwatch_leader") == 0
        with EventProducer(kafka=settings.kafka) as producer:
            send_stream(producer, settings, Simulator(dataclasses.replace(SHIFTED, seed=501)), RULE_MIN + 100)
        wait_for(lambda: b.value("driftwatch_monitor_replicas") == 2 and
                 b.value("driftwatch_window_events", adapter="shifted") >= RULE_MIN, 60,
                 "the new leader to check the merged drifting window")
        wait_for(lambda: b.value("driftwatch_drift_detected", adapter="shifted") >= 1, 30, "a drifting verdict")
        time.sleep(3)  # several more checks, each with a firing verdict
        assert [(d.action, d.adapter) for d in store.decisions()] == [("retrain", "shifted")]
        assert store.rule_states()[("input-drift", "shifted")].state == "firing"
        assert store.leader("driftwatch")[1] == b.url
        store.close()
    finally:
        for d in replicas:
            d.kill()
