"""One of two model servers down during a promotion and during a rollback: the real gateway (logging to a real
broker) in front of two stand-in vLLM servers (dev/standin.py: vLLM's adapter API; a restart comes back with no
adapters), the real rollout controller and its serving-state reconcile, clients calling `production` all along.

Invariants: no request is routed to a server that lacks its version (the stand-in records each such request), and
production always points at a version that some reachable server has loaded."""

import threading
import time

import httpx
import pytest

from driftwatch.config import Settings
from driftwatch.control.rollout import RolloutController
from driftwatch.dev.standin import StandIn
from driftwatch.http import HttpServer
from driftwatch.ingest.kafka import ensure_topics
from driftwatch.serving import gateway as gw
from driftwatch.serving.vllm import VLLMClient
from driftwatch.state.store import SqliteStore

from .conftest import settings_dict, wait_for

pytestmark = pytest.mark.integration


class Clients(threading.Thread):
    """Closed-loop clients of `production`; each answer's status kept."""

    def __init__(self, url: str, threads: int = 2):
        super().__init__(daemon=True)
        self.url, self.threads, self.stop = url, threads, threading.Event()
        self.statuses: list[int] = []

    def run(self):
        def one():
            with httpx.Client(timeout=30) as http:
                while not self.stop.is_set():
                    r = http.post(f"{self.url}/v1/completions", json={"model": "production", "prompt": "hi",
                                                                      "max_tokens": 2})
                    self.statuses.append(r.status_code)
        workers = [threading.Thread(target=one, daemon=True) for _ in range(self.threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()


class Production(threading.Thread):
    """Checks, every few milliseconds, that production points at a version some reachable server has loaded."""

    def __init__(self, registry: SqliteStore, servers: list[StandIn]):
        super().__init__(daemon=True)
        self.registry, self.servers, self.stop = registry, servers, threading.Event()
        self.violations: list[tuple[float, dict]] = []
        self.checks = 0

    def run(self):
        while not self.stop.wait(0.005):
            weights = self.registry.alias_table()[1].get("production", {})
            for version in weights:
                if not any(s.is_up and version in s.adapters for s in self.servers):
                    self.violations.append((time.time(), weights))
            self.checks += 1


@pytest.fixture
def rig(tansu, tmp_path):
    a, b = StandIn().start(), StandIn().start()
    doc = settings_dict(tansu, tmp_path, gateway={"upstreams": [a.url, b.url], "alias_poll_s": 0.1,
                                                  "store_path": str(tmp_path / "registry.db")},
                        rollout={"warm_requests": 1, "load_deadline_s": 60, "bake": {"min_events": 10}})
    settings = Settings.model_validate(doc)
    ensure_topics(settings.kafka)
    registry = SqliteStore(tmp_path / "registry.db")
    clients = [VLLMClient(s.url, retries=0) for s in (a, b)]
    ctl = RolloutController(settings, registry, clients=clients, drain_s=0.5)
    for v in ("v1", "v2"):
        (tmp_path / v).mkdir()
        (tmp_path / v / "adapter_config.json").write_text("{}")
    ctl.register("v1", tmp_path / "v1")
    registry.commit(time.time(), "test", "seed", "v1", aliases={"production": {"v1": 1.0}},
                    states={"v1": "production"})
    ctl.reconcile()  # v1 loaded on both
    service, sink = gw.build(settings, seed=1)
    http = HttpServer(service.app(), "127.0.0.1", 0).start()
    users, watch = Clients(http.url), Production(registry, [a, b])
    users.start()
    watch.start()
    yield a, b, ctl, registry, service, users, watch, tmp_path
    users.stop.set()
    watch.stop.set()
    users.join(30)
    watch.join(30)
    http.stop()
    service.close()
    sink.close()
    for c in clients:
        c.close()
    a.down()
    b.down()


def tick(ctl, n=1):
    """The reconciler's tick, as far as serving goes: one rollout step, then the serving state reconciled."""
    for _ in range(n):
        r = ctl.step()
        ctl.reconcile()
        time.sleep(0.05)
    return r


def test_one_server_down_during_a_promotion_and_a_rollback_never_gets_a_request_for_what_it_lacks(rig):
    a, b, ctl, registry, service, users, watch, tmp = rig
    wait_for(lambda: len(users.statuses) > 20, 30, "traffic on v1")
    # a promotion while b is down: loading waits for it; b comes back empty and is loaded before it gets traffic
    b.down()
    ctl.register("v2", tmp / "v2")
    ctl.start("v2", force=True)
    assert tick(ctl, 5).phase == "loading"  # b unreachable: the candidate is not served anywhere yet
    b.up()
    wait_for(lambda: tick(ctl).phase == "baking", 30, "v2 loaded on both, warmed and promoted")
    assert "v1" in b.adapters and "v2" in b.adapters  # b came back with nothing; reconcile loaded what aliases need
    wait_for(lambda: b.served["v2"] > 5 and a.served["v2"] > 5, 30, "both servers serving v2")
    # a rollback while b is down: production goes back at once; b, back empty, gets traffic once v1 is loaded again
    b.down()
    t0 = time.monotonic()
    assert ctl.rollback(who="test", why="users complain") == "v1"
    assert time.monotonic() - t0 < 1.0  # the flip never waits for the server that is down
    served_a = a.served["v1"]
    wait_for(lambda: a.served["v1"] > served_a + 10, 30, "v1 served again")
    b.up()
    served_b = b.served["v1"]
    wait_for(lambda: (tick(ctl), b.served["v1"] > served_b + 5)[1], 30, "b serving v1 after it was loaded there")
    users.stop.set()
    users.join(30)
    assert a.misses == [] and b.misses == [], (a.misses[:3], b.misses[:3])
    assert watch.checks > 100 and watch.violations == [], watch.violations[:3]
    failed = [s for s in users.statuses if s != 200]
    assert len(failed) <= 0.01 * len(users.statuses), (len(failed), len(users.statuses), set(failed))
