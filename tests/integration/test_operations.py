"""Operations end to end: a real daemon on a real broker, scraped by a real Prometheus that evaluates the shipped
alert rules and sends to a real Alertmanager routed (deploy/prometheus/alertmanager.yaml) to the daemon's control
API. Every dashboard query runs against that Prometheus."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import threading
import time

import httpx
import pytest

from driftwatch.client import EventProducer
from driftwatch.events import decode
from driftwatch.monitor.monitor import build_profile
from driftwatch.monitor.features import CATEGORICAL, NUMERIC
from driftwatch.dev.simulate import SimConfig, Simulator
from driftwatch.state.registry import AdapterRecord
from driftwatch.state.store import SqliteStore

from . import promstack
from .conftest import InProcessDaemon, make_settings, wait_for
from .test_ingest import send_stream

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None or promstack.ALERTMANAGER is None,
                                reason="Prometheus and Alertmanager come from Debian (.ci/run installs them)")

TOKEN = "ops-test-token-0123456789abcdef"
SHIFTED = SimConfig(seed=402, feedback_rate=0.3, adapters={"shifted": 1.0}, error_rate=0.2,
                    routes={"qa": 0.05, "summarize": 0.8, "code": 0.05, "chat": 0.05, "extract": 0.05})


@pytest.fixture(scope="module")
def stack(tansu, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ops")
    sim = Simulator(SimConfig(seed=400, feedback_rate=0))
    reference = build_profile([decode("inference", o.value, 10**7) for o in sim.stream(6000, start_ms=1795514400000)])
    reference.save(tmp / "ref.json")
    # the daemon's own rules only alert: the retrain request this test looks for comes from Alertmanager
    rules = [{"name": "input-drift", "signal": "input_drift", "threshold": 1, "clear": 0.5, "min_samples": 500,
              "action": "alert"}]
    settings = make_settings(tansu, tmp, monitor={"reference_path": str(tmp / "ref.json"), "window_events": 1000,
                                                  "check_interval_s": 0.5},
                             policy={"rules": rules}, control={"token": TOKEN, "retrain_alerts": ["DriftwatchInputDrift"]})
    seed = SqliteStore(settings.registry_path)  # production points somewhere, as in any deployment after a rollout
    seed.set_aliases({"production": {"stable": 1.0}}, at=time.time(), who="test", why="seed")
    # the webhook acts on adapters the registry knows only
    seed.save_adapter(AdapterRecord("shifted", str(tmp / "shifted"), None, None, "candidate", 1.0, 1.0))
    seed.close()
    d = InProcessDaemon(settings).wait_ready()
    am = promstack.alertmanager(tmp, d.daemon.http.url + "/v1/alertmanager", TOKEN)
    prom = promstack.prometheus(tmp, f"127.0.0.1:{d.daemon.http.port}", am.url)
    stop = threading.Event()
    trickle = threading.Thread(target=steady_traffic, args=(settings, stop), daemon=True)
    try:
        with EventProducer(kafka=settings.kafka) as producer:
            send_stream(producer, settings, Simulator(SimConfig(seed=401, feedback_rate=0.3, adapters={"stable": 1.0})), 1200)
            send_stream(producer, settings, Simulator(SHIFTED), 1200)
            for _ in range(3):
                producer.send_raw(settings.kafka.topics.inference, b"not json")
            producer.flush()
        wait_for(lambda: d.value("driftwatch_window_events", adapter="shifted") == 1000, 60, "the windows to be checked")
        trickle.start()  # and traffic goes on, as in production, so rates are not 0/0
        yield d, prom, am
    finally:
        stop.set()
        trickle.join(10)
        prom.stop()
        am.stop()
        d.stop()


def steady_traffic(settings, stop: threading.Event, rate: float = 150.0) -> None:
    """Both adapters' traffic at ``rate`` inference events per second (with their feedback) until ``stop``."""
    streams = [Simulator(SimConfig(seed=403, feedback_rate=0.3, adapters={"stable": 1.0})).stream(10**6, step_ms=10),
               Simulator(dataclasses.replace(SHIFTED, seed=404)).stream(10**6, step_ms=10)]
    topics = {"inference": settings.kafka.topics.inference, "feedback": settings.kafka.topics.feedback}
    with EventProducer(kafka=settings.kafka) as producer:
        t0, n = time.monotonic(), 0
        while not stop.is_set():
            for stream in streams:
                out = next(stream)
                producer.send_raw(topics[out.topic], out.value, key=out.key)
                n += out.label == "inference"
            stop.wait(max(0.0, t0 + n / rate - time.monotonic()))


def test_an_alert_fires_and_alertmanager_has_the_daemon_record_a_retrain(stack):
    d, prom, am = stack
    store = d.daemon.control.store
    decided = lambda: [x for x in store.decisions() if x.rule == "alert:DriftwatchInputDrift"]  # noqa: E731
    try:
        (decision,) = wait_for(decided, 90, "Alertmanager's webhook call to record a retrain decision")
    except AssertionError:
        alerts = httpx.get(prom.url + "/api/v1/alerts", timeout=5).text
        raise AssertionError(f"prometheus alerts: {alerts}\nalertmanager log:\n{am.log.read_text()[-3000:]}") from None
    assert (decision.action, decision.adapter) == ("retrain", "shifted")
    assert "Input drift on adapter shifted" in decision.reasons[0]
    # the webhook call counts its outcome when it sees the request done, a moment after the decision is stored
    wait_for(lambda: d.value("driftwatch_webhook_alerts_total", outcome="retrain") == 1, 30, "the webhook's outcome")
    assert d.value("driftwatch_webhook_alerts_total", outcome="held") == 0
    assert d.value("driftwatch_retrain_requests_total", rule="alert:DriftwatchInputDrift") == 1
    # the stable adapter's traffic matches the reference: no alert, no decision
    assert all(x.adapter == "shifted" for x in store.decisions())
    firing = httpx.get(am.url + "/api/v2/alerts", params={"filter": 'alertname="DriftwatchInputDrift"'}, timeout=5).json()
    assert {a["labels"]["adapter"] for a in firing} == {"shifted"}


def test_unauthenticated_control_calls_are_refused(stack):
    d, _, _ = stack
    for path in ("/v1/retrain", "/v1/rollback", "/v1/pause", "/v1/alertmanager"):
        r = httpx.post(d.daemon.http.url + path, json={"adapter": "shifted", "reason": "x", "alerts": []}, timeout=5)
        assert r.status_code == 401, path
    assert httpx.get(d.daemon.http.url + "/v1/status", timeout=5).status_code == 401
    ok = httpx.get(d.daemon.http.url + "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert ok.status_code == 200 and set(ok.json()["windows"]) == {"stable", "shifted"}
    assert not d.daemon.control.policy.paused


DASHBOARDS = sorted((promstack.ROOT / "dashboards").glob("*.json"))
MACROS = {"$__rate_interval": "5m", "$__interval": "15s", "$__range": "1h"}


def exprs(board: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p["targets"]]


def concrete(expr: str) -> str:
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    return re.sub(r"\$\{?(\w+)\}?", ".*", expr)


def test_dashboards_are_well_formed():
    assert {p.stem for p in DASHBOARDS} == {"overview", "drift", "quality", "lifecycle"}
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] not in uids and len(board["uid"]) <= 40, path
        uids.add(board["uid"])
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        for p in board["panels"]:
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], (path.name, p["title"])
            for t in p["targets"]:
                used = set(re.findall(r"\$(\w+)", t["expr"])) - {m[1:] for m in MACROS}
                assert used <= set(variables), f"{path.name}/{p['title']}: undefined variable in {t['expr']}"
    # the drift panels list every feature the monitor checks, each under its kind of score
    drift = json.loads((promstack.ROOT / "dashboards/drift.json").read_text())
    for title, features in (("Numeric", NUMERIC), ("Categorical", CATEGORICAL)):
        (expr,) = [e for t, e in exprs(drift) if t.startswith(title)]
        assert set(re.search(r'feature=~"([^"]+)"', expr).group(1).split("|")) == set(features)


def test_every_dashboard_query_returns_data_from_the_daemon(stack):
    d, prom, _ = stack
    # feedback counts in the window it arrives in: wait for a window closed while traffic and feedback flowed
    wait_for(lambda: len(promstack.query(prom, "driftwatch_negative_feedback_ratio")["data"]["result"]) == 2, 90,
             "both adapters' windows to close with feedback in them")
    empty = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for title, expr in exprs(board):
            # a scrape that timed out (1 s, beside a CPU hog) marks the target's series stale: an instant selector
            # answers nothing until the next scrape succeeds, so a panel gets a few scrapes to show its data
            deadline = time.monotonic() + 15
            while True:
                answer = promstack.query(prom, concrete(expr))
                assert answer["http"] == 200 and answer["status"] == "success", f"{path.name}/{title}: {answer}"
                values = [float(r["value"][1]) for r in answer["data"]["result"]]
                if any(not math.isnan(v) for v in values):
                    break
                if time.monotonic() > deadline:
                    empty.append(f"{path.name} / {title}: {concrete(expr)} -> {values}")
                    break
                time.sleep(0.5)
        for v in board["templating"]["list"]:
            if v["type"] == "query":
                metric = re.search(r"label_values\((\w+), (\w+)\)", v["definition"])
                r = httpx.get(f"{prom.url}/api/v1/label/{metric.group(2)}/values",
                              params={"match[]": metric.group(1)}, timeout=5).json()
                assert set(r["data"]) >= {"stable", "shifted"}, (path.name, v["name"], r)
    assert not empty, "queries with no data:\n" + "\n".join(empty)
