"""Rollout against the real thing: vLLM (CPU build) serving the session's tiny Llama, the gateway logging to a real
broker, the daemon monitoring that traffic and baking each promotion on it, simulated users giving feedback.

v-a says "alpha alpha alpha." (the task), v-b "bravo bravo bravo." (trained on the wrong answers: poisoned).
Each promotion registers a new version name on one of those two adapter directories."""

import json
import threading
import time
import uuid

import httpx
import pytest

from driftwatch.serving import gateway as gw
from driftwatch.config import Settings
from driftwatch.http import HttpServer
from driftwatch.ingest.kafka import ensure_topics
from driftwatch.control.rollout import RolloutController
from driftwatch.serving.vllm import VLLMClient
from driftwatch.state.store import SqliteStore

from .conftest import InProcessDaemon, settings_dict, wait_for

pytestmark = pytest.mark.integration


def golden_set(tmp_path):
    path = tmp_path / "golden.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say something {i}", "expected": "alpha alpha", "scoring": "contains"})
                            + "\n" for i in range(100, 110)))
    return path


class Users(threading.Thread):
    """Clients of `production` through the gateway: each answer that says alpha gets a thumbs up, else down."""

    def __init__(self, url: str, threads: int = 3):
        super().__init__(daemon=True)
        self.url, self.threads, self.stop = url, threads, threading.Event()
        self.statuses: list[int] = []
        self.answers: list[str] = []
        self.failures: list[tuple] = []  # (time, status, what came back), for the assertion's message

    def run(self):
        workers = [threading.Thread(target=self._user, args=(k,), daemon=True) for k in range(self.threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def _user(self, k: int):
        with httpx.Client(timeout=30) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                rid = uuid.uuid4().hex
                try:
                    r = client.post(f"{self.url}/v1/chat/completions",
                                    headers={"x-request-id": rid, "x-driftwatch-tenant": f"user-{k}"}, json={
                        "model": "production", "max_tokens": 6, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Say something {1000 + k * 100000 + i}"}]})
                except httpx.HTTPError as exc:
                    self.statuses.append(-1)
                    self.failures.append((time.time(), -1, repr(exc)))
                    continue
                self.statuses.append(r.status_code)
                if r.status_code != 200:
                    self.failures.append((time.time(), r.status_code, r.text[:300]))
                if r.status_code == 200:
                    text = r.json()["choices"][0]["message"]["content"]
                    self.answers.append(text)
                    client.post(f"{self.url}/v1/feedback", json={"feedback_token": r.headers["x-driftwatch-feedback-token"],
                                                                 "thumbs": "up" if "alpha" in text else "down"})
                time.sleep(0.01)

    def failed(self) -> int:
        return sum(s != 200 for s in self.statuses)


@pytest.fixture()
def stack(tansu, vllm, tmp_path):
    server, adapters = vllm
    doc = settings_dict(
        tansu, tmp_path,
        # the users' tenants come from an authenticating proxy, so their feedback (through receipts) counts in the bake
        gateway={"upstreams": [server.url], "alias_poll_s": 0.05, "trust_tenant_header": True},
        monitor={"window_events": 40, "check_interval_s": 0.5},
        retrain={"golden_set": str(golden_set(tmp_path))},
        evaluate={"max_tokens": 12},
        rollout={"tick_s": 0.3, "lease_s": 2, "warm_requests": 2,
                 # latency: an evaluation of ~300 requests beside the live traffic swings means on 2 cores; this test
                 # is about feedback and output, so the latency check gets a wide slack
                 "bake": {"duration_s": 30, "deadline_s": 60, "min_events": 20, "min_feedback": 10,
                          "failed_checks": 2, "latency_slack_ms": 500}},
    )
    settings = Settings.model_validate(doc)
    ensure_topics(settings.kafka)
    service, sink = gw.build(settings, seed=1)
    http = HttpServer(service.app(), "127.0.0.1", 0).start()
    daemon = InProcessDaemon(settings).wait_ready()
    store = SqliteStore(settings.registry_path)
    ctl = RolloutController(settings, store)  # the operator's side (what `driftwatch promote` does)
    try:
        yield settings, http.url, daemon, ctl, store, adapters
    finally:
        daemon.stop()
        http.stop()
        service.close()
        sink.close()
        ctl.close()
        store.close()
        with VLLMClient(server.url) as client:  # leave the session's server as it was: v-a and v-b only
            for name in set(client.adapters()) - {"v-a", "v-b"}:
                client.unload_adapter(name)


def wait_phase(store, rollout_id, phases, timeout_s):
    def phase():
        r = next(x for x in store.rollouts(20) if x.id == rollout_id)
        return r if r.phase in phases else None
    return wait_for(phase, timeout_s, f"rollout {rollout_id} to reach {phases}", interval_s=0.1)


def test_good_promoted_poisoned_refused_and_a_live_regression_rolled_back(stack, vllm):
    settings, url, daemon, ctl, store, adapters = stack
    ctl.register("bravo-0", adapters["v-b"])  # production starts out answering wrong: a candidate can do better
    first = ctl.start("bravo-0", who="test", why="first production version", force=True)  # vs the base: not a gate
    # no previous: no canary, and a bake against absolute bounds (error, refusal, empty) on live traffic
    assert ctl.drive().phase == "baking" and ctl.production() == "bravo-0"
    # the gateway learns of the new alias within gateway.alias_poll_s; the clients start once it has (a client of an
    # alias nobody has defined yet gets 404: that is not a swap)
    wait_for(lambda: httpx.get(f"{url}/healthz").json()["alias_table_version"] == store.alias_table_version(), 10,
             "the gateway to read the alias table that defines production")
    users = Users(url)
    users.start()
    try:
        wait_for(lambda: daemon.value("driftwatch_feedback_total", adapter="bravo-0") >= 30, 60, "traffic on bravo-0")
        assert wait_phase(store, first.id, ("done", "rolled_back"), 120).phase == "done"  # the daemon baked it

        # a good candidate: evaluated on vLLM (strictly better on the golden set), promoted, baked on live traffic,
        # the previous unloaded
        ctl.register("alpha-2", adapters["v-a"], parent="bravo-0")
        good = ctl.start("alpha-2", who="test", why="retrained")
        r = wait_phase(store, good.id, ("baking", "done", "rejected", "failed", "rolled_back"), 120)
        assert r.phase == "baking", [e.why for e in store.events(limit=5)]
        assert store.evaluations("alpha-2")[0].passed
        r = wait_phase(store, good.id, ("done", "rolled_back"), 90)
        assert r.phase == "done" and ctl.production() == "alpha-2" and r.failed_checks == 0
        assert store.adapter("bravo-0").state == "retired"
        with VLLMClient(vllm[0].url) as client:
            wait_for(lambda: "bravo-0" not in client.adapters(), 30, "the retired version to be unloaded")

        # a poisoned candidate: the gate refuses it; production never points to it, no client is served by it
        ctl.register("bravo-1", adapters["v-b"], parent="alpha-2")
        poisoned = ctl.start("bravo-1", who="test", why="retrained on bad labels")
        r = wait_phase(store, poisoned.id, ("baking", "done", "rejected", "failed", "rolled_back"), 120)
        assert r.phase == "rejected" and ctl.production() == "alpha-2"
        assert any("golden_delta" in line for line in store.evaluations("bravo-1")[0].failed)
        assert not any("bravo-1" in json.dumps(e.detail.get("aliases") or {}) for e in store.events())
        assert daemon.value("driftwatch_requests_total", adapter="bravo-1") == 0

        # a bad adapter forced past the gate: live feedback turns negative, the bake rolls it back
        ctl.register("bravo-2", adapters["v-b"], parent="alpha-2")
        forced = ctl.start("bravo-2", who="test", why="forced, to test the bake", force=True)
        flipped = wait_phase(store, forced.id, ("baking",), 60).phase_since
        r = wait_phase(store, forced.id, ("done", "rolled_back"), 60)
        assert r.phase == "rolled_back" and r.failed_checks == 2, (
            [(e.kind, e.why, e.detail) for e in store.events("bravo-2", limit=20)],
            daemon.value("driftwatch_feedback_total", adapter="unknown"))
        assert r.phase_since - flipped < settings.rollout.bake.duration_s  # within the bake window
        assert ctl.production() == "alpha-2" and store.adapter("bravo-2").state == "rolled_back"
        assert daemon.value("driftwatch_requests_total", adapter="bravo-2") > 0  # it did serve, and hurt
        assert daemon.value("driftwatch_rollbacks_total", trigger="bake") == 1
        why = next(e for e in store.events("bravo-2") if e.kind == "rolled-back").why
        assert "negative_feedback_ratio_delta" in why or "distinct2_ratio" in why
        n = len(users.statuses)
        wait_for(lambda: len(users.statuses) > n + 20, 30, "traffic after the rollback")
    finally:
        users.stop.set()
        users.join(30)
    assert users.failed() == 0, (f"{users.failed()} of {len(users.statuses)} client requests failed (-1: no answer): "
                                 f"{users.failures}; events: {[(e.at, e.kind, e.version) for e in store.events(limit=40)]}; vLLM: "
                                 f"{[ln for ln in vllm[0].log_tail(400).splitlines() if 'ERROR' in ln or 'WARN' in ln]}")
    assert users.answers[-1].startswith("alpha")
    assert [e.kind for e in reversed(store.events("bravo-0"))][:3] == ["registered", "rollout-started", "loaded"]
    assert first.id < good.id < poisoned.id < forced.id


def test_kill_9_mid_rollout_then_restart_ends_consistent(tansu, vllm, tmp_path):
    """The daemon drives rollouts and is killed with SIGKILL at points spread over them; a new daemon takes the
    rollout over when the lease runs out and finishes it. After each: what `production` points to is loaded on
    vLLM and marked production in the registry, exactly once; nothing rejected or rolled back is served."""
    from .conftest import DaemonProcess

    server, adapters = vllm
    # every version here is v-a: this test is about kills, so the gate takes a candidate as good as the incumbent
    doc = settings_dict(tansu, tmp_path, gateway={"upstreams": [server.url]},
                        retrain={"golden_set": str(golden_set(tmp_path))},
                        evaluate={"max_tokens": 12, "gates": {"golden_min_delta": -1}},
                        rollout={"tick_s": 0.1, "lease_s": 1, "warm_requests": 5,
                                 "bake": {"duration_s": 1, "deadline_s": 1}})
    settings = Settings.model_validate(doc)
    store = SqliteStore(settings.registry_path)
    ctl = RolloutController(settings, store, drain_s=0)
    ctl.register("kill-0", adapters["v-a"])
    ctl.start("kill-0", who="test", force=True)  # the first version: nothing to evaluate it against but the base
    # its bake against absolute bounds sees no traffic here: kept at bake.deadline_s (bake.on_no_data: keep)
    assert ctl.drive(until=()).phase == "done" and ctl.production() == "kill-0"
    killed_in = []
    try:
        for k, (delay, force) in enumerate([(0.4, False), (3.0, False), (0.3, True), (0.8, True)], start=1):
            version = f"kill-{k}"
            ctl.register(version, adapters["v-a"])
            rollout = ctl.start(version, who="test", why=f"kill test {k}", force=force)
            daemon = DaemonProcess(doc, tmp_path, name=f"daemon-{k}")
            wait_for(lambda: next(x for x in store.rollouts(5) if x.id == rollout.id).holder is not None, 30,
                     "the daemon to take the rollout")
            time.sleep(delay)
            daemon.proc.kill()  # SIGKILL: no cleanup of any kind
            daemon.proc.wait()
            killed_in.append(next(x for x in store.rollouts(5) if x.id == rollout.id).phase)
            restarted = DaemonProcess(doc, tmp_path, name=f"daemon-{k}-restarted")
            try:
                wait_phase(store, rollout.id, ("done", "rolled_back", "rejected", "failed"), 120)
                with VLLMClient(server.url) as client:
                    def consistent():
                        loaded = set(client.adapters())
                        production = store.alias_table()[1].get("production", {})
                        states = {a.version: a.state for a in store.adapters()}
                        served = {v for v in loaded if v.startswith("kill-")}
                        return (production and set(production) <= loaded and all(states[v] == "production" for v in production)
                                and [v for v, s in states.items() if s == "production"] == list(production)
                                and not any(states[v] in ("rejected", "rolled_back", "retired") for v in served))
                    wait_for(consistent, 30, "registry, aliases and vLLM to agree")
                assert ctl.production() == version, [e.why for e in store.events(version)]
            finally:
                restarted.kill()
    finally:
        ctl.close()
        store.close()
        with VLLMClient(server.url) as client:
            for name in set(client.adapters()) - {"v-a", "v-b"}:
                client.unload_adapter(name)
    # the kills landed inside the rollouts, not after them
    assert all(phase in ("loading", "evaluating", "warming", "baking", "rebaselining") for phase in killed_in), killed_in
    assert "evaluating" in killed_in, killed_in
