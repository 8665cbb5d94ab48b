"""The control API on the real Starlette app, with the real control loop ticking on its own thread (the policy,
the retrain service, the store). Jobs are held (ManualJobs): the run a retrain queues is not built or trained here;
runs are tested in test_retrain_service, test_reconciler and the integration tests."""

import time

import pytest
from starlette.testclient import TestClient

from driftwatch.config import Settings
from driftwatch.control.api import OPENAPI, control_routes, daemon_app
from driftwatch.control.policy import Policy
from driftwatch.control.reconciler import Reconciler
from driftwatch.control.rollout import RolloutController
from driftwatch.metrics import Metrics
from driftwatch.monitor.monitor import Monitor
from driftwatch.retrain.service import RetrainService
from driftwatch.state.registry import AdapterRecord
from driftwatch.state.store import SqliteStore

from .fakes import ManualJobs
from .test_policy import snap

TOKEN = "s3cret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}", "X-Driftwatch-User": "ana"}


@pytest.fixture
def rig(tmp_path):
    started = []

    def make(token=TOKEN, **settings):
        cfg = Settings.model_validate({"daemon": {"state_dir": str(tmp_path)}, "rollout": {"tick_s": 0.05},
                                       "retrain": {"base_model": str(tmp_path), "golden_set": str(tmp_path / "g.jsonl")},
                                       "policy": {"rules": [{"name": "errors", "signal": "error_ratio", "threshold": 0.1}],
                                                  "cooldown_s": 3600}, **settings})
        store, metrics, jobs = SqliteStore(tmp_path / "state.db"), Metrics(), ManualJobs()
        store.save_adapter(AdapterRecord("support-v2", "/adapters/support-v2", None, None, "production", 1.0, 1.0))
        control = Reconciler(cfg, store=store, registry=store, metrics=metrics, monitor=Monitor(None),
                             policy=Policy(cfg.policy.rules, store, metrics, cooldown_s=3600),
                             rollouts=RolloutController(cfg, store, metrics=metrics, jobs=jobs, clients=[]),
                             retrain=RetrainService(cfg.retrain, tmp_path, store, runner=None), jobs=jobs)
        control.start()
        started.append(control)
        deadline = time.monotonic() + 30  # its first tick takes the lease: before it, calls answer 503 "no leader yet"
        while not control.leading:
            assert time.monotonic() < deadline, "the control loop did not take the lease"
            time.sleep(0.01)
        app = daemon_app(metrics.registry, lambda: (True, {}), lambda: (True, {}),
                         control=control_routes(lambda: control, token))
        client = TestClient(app)
        client.app_ = app
        return client, control

    yield make
    for control in started:
        control.stop()


def alert(name="DriftwatchInputDrift", adapter="support-v2", fingerprint="f1", starts="2026-11-24T10:00:00Z",
          status="firing"):
    return {"status": status, "labels": {"alertname": name, **({"adapter": adapter} if adapter else {})},
            "annotations": {"summary": f"{name} on {adapter}"}, "startsAt": starts, "fingerprint": fingerprint}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": f"Bearer {TOKEN}x"}])
def test_unauthenticated_calls_are_refused_and_change_nothing(rig, headers):
    client, daemon = rig()
    for method, path in (("GET", "/v1/status"), ("POST", "/v1/retrain"), ("POST", "/v1/rollback"),
                         ("POST", "/v1/pause"), ("POST", "/v1/resume"), ("POST", "/v1/alertmanager"),
                         ("GET", "/v1/openapi.json")):
        r = client.request(method, path, headers=headers, json={"adapter": "a", "reason": "x", "alerts": [alert()]})
        assert r.status_code == 401 and "unauthorized" in r.json()["error"], (method, path)
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert daemon.store.decisions() == [] and daemon.store.requests() == [] and not daemon.policy.paused


def test_without_a_token_the_api_is_off(rig):
    client, _ = rig(token=None)
    r = client.get("/v1/status", headers=AUTH)
    assert r.status_code == 503 and "DRIFTWATCH__CONTROL__TOKEN" in r.json()["error"]


def test_manual_retrain_returns_its_run_and_one_at_a_time(rig):
    client, daemon = rig()
    assert client.post("/v1/retrain", headers=AUTH, json={"adapter": "support-v2"}).status_code == 400  # no reason
    assert client.post("/v1/retrain", headers=AUTH, content=b"{nope").status_code == 400
    r = client.post("/v1/retrain", headers=AUTH, json={"adapter": "support-v2", "reason": "new product line",
                                                       "routes": ["summarize"]})
    assert r.status_code == 202, r.text
    (d,) = daemon.store.decisions()
    (run,) = daemon.store.runs()
    assert r.json() == {"decision_id": d.id, "run_id": run.id} and run.id.endswith(f"-d{d.id}")
    assert (d.action, d.rule, d.reasons) == ("retrain", "manual", ["manual, by ana: new product line"])
    assert (run.status, run.adapter, run.decision_id, run.detail) == ("queued", "support-v2", d.id,
                                                                      {"focus_routes": ["summarize"],
                                                                       "queued_at": run.started})
    again = client.post("/v1/retrain", headers=AUTH, json={"adapter": "support-v2", "reason": "again"})
    assert again.status_code == 409 and f"{run.id} is queued" in again.json()["error"]
    assert len(daemon.store.decisions()) == 1


def test_pause_holds_automatic_retrains_survives_a_restart_and_resume_ends_it(rig):
    client, daemon = rig()
    assert client.post("/v1/pause", headers=AUTH, json={}).status_code == 400  # a reason is required
    assert client.post("/v1/pause", headers=AUTH, json={"reason": "incident 42"}).json() == {"paused": True}
    assert daemon.metrics.registry.get_sample_value("driftwatch_retrain_paused") == 1
    (d,) = daemon.policy.decide(snap("v1", error_ratio=0.5), now=1000)
    assert d.action == "hold" and "paused" in d.reasons[-1]
    assert Policy([], daemon.store).paused  # a new process on the same store is paused too
    assert client.get("/v1/status", headers=AUTH).json()["paused"] is True
    # a person can still retrain by hand while automatic retraining is paused
    assert client.post("/v1/retrain", headers=AUTH, json={"adapter": "v1", "reason": "by hand"}).status_code == 202
    assert client.post("/v1/resume", headers=AUTH, json={"reason": "incident over"}).json() == {"paused": False}
    assert not Policy([], daemon.store).paused
    kinds = [(e.kind, e.who, e.why, e.detail["paused"]) for e in daemon.store.events(kind="automatic-retraining")]
    assert kinds == [("automatic-retraining", "ana", "incident over", False),
                     ("automatic-retraining", "ana", "incident 42", True)]


def test_alertmanager_webhook_is_idempotent_per_occurrence(rig):
    client, daemon = rig()
    payload = {"version": "4", "status": "firing", "alerts": [
        alert(), alert("DriftwatchConsumerLag", adapter=None, fingerprint="f2"), alert(adapter=None, fingerprint="f3"),
        alert("DriftwatchOutputQualityDrop", fingerprint="f4", status="resolved")]}
    r = client.post("/v1/alertmanager", headers=AUTH, json=payload)
    assert r.status_code == 200, r.text
    out = r.json()
    (d,) = daemon.store.decisions()
    assert out == {"retrain": [{"alert": "DriftwatchInputDrift", "adapter": "support-v2", "decision_id": d.id,
                                "run_id": daemon.store.runs()[0].id}], "held": [], "queued": [], "duplicate": 0,
                   "ignored": 3, "unknown_adapter": 0}
    assert d.rule == "alert:DriftwatchInputDrift" and "DriftwatchInputDrift on support-v2" in d.reasons[0]
    # Alertmanager repeats a firing alert every repeat_interval: the same occurrence, nothing new
    assert client.post("/v1/alertmanager", headers=AUTH, json=payload).json()["duplicate"] == 1
    assert len(daemon.store.decisions()) == 1
    # while its run is queued, a new occurrence is held for that; once the run ended, for the slot's cooldown
    busy = client.post("/v1/alertmanager", headers=AUTH, json={"alerts": [alert(starts="2026-11-24T10:30:00Z")]})
    assert "retrain run" in busy.json()["held"][0]["reason"]
    from dataclasses import replace

    daemon.store.save_run(replace(daemon.store.runs()[0], status="failed"))
    # the alert resolved and fired again: a new occurrence, which the policy holds (cooldown after the first)
    refire = client.post("/v1/alertmanager", headers=AUTH, json={"alerts": [alert(starts="2026-11-24T11:00:00Z")]})
    (held,) = refire.json()["held"]
    assert "cooldown" in held["reason"] and daemon.store.decision(held["decision_id"]).action == "hold"
    value = daemon.metrics.registry.get_sample_value
    assert [value("driftwatch_webhook_alerts_total", {"outcome": o}) for o in ("retrain", "held", "duplicate", "ignored")] \
        == [1, 2, 1, 6]
    bad = client.post("/v1/alertmanager", headers=AUTH, json={"receiver": "x"})
    assert bad.status_code == 400 and "alerts" in bad.json()["error"]


def test_rollback_with_nothing_to_roll_back_is_a_conflict(rig):
    client, _ = rig()
    assert client.post("/v1/rollback", headers=AUTH, json={"reason": "x"}).status_code == 409


def test_status_reports_rules_aliases_runs_and_decisions(rig):
    client, daemon = rig()
    daemon.store.set_aliases({"production": {"ft-1": 1.0}}, at=1.0, who="t", why="seed")
    daemon.policy.decide(snap("v1", error_ratio=0.5), now=1000)
    doc = client.get("/v1/status", headers=AUTH).json()
    assert doc["production"] == "ft-1" and doc["aliases"] == {"production": {"ft-1": 1.0}}
    assert [(r["rule"], r["adapter"], r["state"], r["value"]) for r in doc["rules"]] == [("errors", "v1", "firing", 0.5)]
    assert doc["decisions"][0]["action"] == "retrain" and doc["paused"] is False and doc["rollout"] is None


def test_the_openapi_description_covers_every_route():
    routes = {r.path: r.methods - {"HEAD"} for r in control_routes(lambda: None, TOKEN)}
    described = {path: {m.upper() for m in ops} for path, ops in OPENAPI["paths"].items()}
    assert routes == described
    assert OPENAPI["openapi"].startswith("3.1") and OPENAPI["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, ops in OPENAPI["paths"].items():
        for op in ops.values():
            assert "401" in op["responses"] and op.get("security"), path  # docs/security.md: every call


def test_the_control_token_setting_is_checked(tmp_path):
    from driftwatch.config import load_settings
    from driftwatch.errors import ConfigError

    with pytest.raises(ConfigError, match="control.token: the control token is shorter than 16"):
        load_settings(env={"DRIFTWATCH__CONTROL__TOKEN": "short"})
    with pytest.raises(ConfigError, match="control.token_file: file .* does not exist"):
        load_settings(env={"DRIFTWATCH__CONTROL__TOKEN_FILE": str(tmp_path / "nope")})
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert load_settings(env={"DRIFTWATCH__CONTROL__TOKEN_FILE": str(tmp_path / "token")}).control.secret() == TOKEN
    assert "s3cret" not in str(load_settings(env={"DRIFTWATCH__CONTROL__TOKEN": TOKEN}).redacted())


def test_the_cli_acts_through_the_api(rig):
    from click.testing import CliRunner

    from driftwatch.cli import main
    from driftwatch.http import HttpServer

    client, daemon = rig()
    server = HttpServer(client.app_, "127.0.0.1", 0).start()
    url = server.url
    try:
        run = lambda *args, token=TOKEN: CliRunner().invoke(  # noqa: E731
            main, [*args, "--url", url], env={"DRIFTWATCH__CONTROL__TOKEN": token})
        assert run("pause", "--why", "maintenance").output == "automatic retraining paused\n"
        assert daemon.policy.paused
        out = run("retrain", "--adapter", "support-v2", "--reason", "new docs", "--routes", "qa")
        (r,) = daemon.store.runs()
        assert out.exit_code == 0 and f"retrain run {r.id} queued" in out.output and r.detail["focus_routes"] == ["qa"]
        status = run("status")
        assert status.exit_code == 0 and "automatic retraining: PAUSED" in status.output and r.id in status.output
        refused = run("rollback", "--why", "test")
        assert refused.exit_code == 1 and "answered 409" in refused.output
        wrong = run("status", token="not-the-token-0123456789")
        assert wrong.exit_code == 1 and "answered 401" in wrong.output
        assert run("resume", "--why", "done").exit_code == 0 and not daemon.policy.paused
    finally:
        server.stop()
    down = CliRunner().invoke(main, ["status", "--url", url], env={"DRIFTWATCH__CONTROL__TOKEN": TOKEN})
    assert down.exit_code == 2 and "cannot reach the daemon" in down.output


def test_an_occurrence_whose_handling_failed_is_handled_when_alertmanager_retries(rig):
    client, daemon = rig()
    add = daemon.store.add_request

    def store_down(*args, **kwargs):
        daemon.store.add_request = add  # down for this call only
        raise OSError("disk I/O error")

    daemon.store.add_request = store_down
    with pytest.raises(OSError):
        client.post("/v1/alertmanager", headers=AUTH, json={"alerts": [alert()]})
    assert daemon.store.decisions() == []
    out = client.post("/v1/alertmanager", headers=AUTH, json={"alerts": [alert()]}).json()  # Alertmanager retries
    assert out["duplicate"] == 0 and len(out["retrain"]) == 1


def test_a_request_the_loop_has_not_reached_answers_202_with_its_id(rig):
    client, daemon = rig(control={"request_wait_s": 0})
    daemon.stop()  # the loop is not ticking
    r = client.post("/v1/pause", headers=AUTH, json={"reason": "incident"})
    assert r.status_code == 202 and r.json() == {"request_id": 1, "status": "pending"}
    (request,) = daemon.store.requests(pending=True)
    assert (request.kind, request.who, request.reason) == ("pause", "ana", "incident") and not daemon.policy.paused
    daemon.tick()  # the next tick acts on it
    assert daemon.policy.paused and daemon.store.request(1).status == "done"
    # an alert the loop has not reached is answered queued with its request, and counted so
    out = client.post("/v1/alertmanager", headers=AUTH, json={"alerts": [alert()]}).json()
    assert out["queued"] == [{"alert": "DriftwatchInputDrift", "adapter": "support-v2", "request_id": 2}]
    assert daemon.metrics.registry.get_sample_value("driftwatch_webhook_alerts_total", {"outcome": "queued"}) == 1


def test_the_webhook_trusts_no_alert_field(rig):
    """Alerts are checked whole before anything is claimed: a malformed one is 400 and its corrected redelivery is
    handled; an adapter the registry does not know is never a decision (made-up names would use up the daily cap)."""
    client, daemon = rig()
    value = lambda o: daemon.metrics.registry.get_sample_value("driftwatch_webhook_alerts_total", {"outcome": o})  # noqa: E731
    for broken in ({"labels": "x"}, {"fingerprint": 7}, {"startsAt": None}, {"annotations": {"summary": 1}},
                   {"fingerprint": "f" * 300}):
        r = client.post("/v1/alertmanager", headers=AUTH, json={"alerts": [alert(fingerprint="ok"), {**alert(), **broken}]})
        assert r.status_code == 400, broken
    assert client.post("/v1/alertmanager", headers=AUTH, json={"alerts": ["x"]}).status_code == 400
    assert daemon.store.decisions() == [] and daemon.store.requests() == []
    made_up = [alert(adapter=f"made-up-{i}", fingerprint=f"m{i}") for i in range(50)]
    out = client.post("/v1/alertmanager", headers=AUTH, json={"alerts": made_up}).json()
    assert out["unknown_adapter"] == 50 and daemon.store.decisions() == [] and value("unknown_adapter") == 50
    out = client.post("/v1/alertmanager", headers=AUTH, json={"alerts": [alert(fingerprint="ok"), alert()]}).json()
    assert len(out["retrain"]) == 1 and len(out["held"]) == 1  # the corrected delivery, handled
    too_many = client.post("/v1/alertmanager", headers=AUTH, json={"alerts": [alert(fingerprint=str(i)) for i in range(1001)]})
    assert too_many.status_code == 413
    big = client.post("/v1/alertmanager", headers=AUTH, content=b'{"alerts": ["' + b"x" * 2_000_000 + b'"]}')
    assert big.status_code == 413


def test_a_flood_of_alerts_is_rate_limited_before_anything_is_recorded(rig):
    client, daemon = rig(control={"webhook_alerts_per_minute": 5})
    flood = [alert(fingerprint=f"f{i}") for i in range(8)]
    within = client.post("/v1/alertmanager", headers=AUTH, json={"alerts": flood[:3]}).json()
    assert len(within["retrain"]) + len(within["held"]) == 3 and len(daemon.store.decisions()) == 3
    r = client.post("/v1/alertmanager", headers=AUTH, json={"alerts": flood[3:]})  # 5 more: 2 tokens left
    assert r.status_code == 429 and len(daemon.store.decisions()) == 3 and len(daemon.store.requests()) == 3
    assert daemon.metrics.registry.get_sample_value("driftwatch_webhook_alerts_total", {"outcome": "rate_limited"}) == 5


def test_report_needs_the_token(rig):
    client, _ = rig()
    assert client.get("/report", params={"adapter": "x"}).status_code == 401
    assert client.get("/report", params={"adapter": "x"}, headers=AUTH).status_code == 400  # no reporter in this rig
    assert client.get("/metrics").status_code == 200 and client.get("/healthz").status_code == 200


def test_decisions_occurrences_and_requests_past_retention_are_pruned_at_the_cron_time(rig):
    from driftwatch.state.store import RunRecord

    client, daemon = rig(control={"retention_days": 2, "prune_cron": "17 3 * * *"})
    daemon.stop()  # its ticks run on the real clock: this test drives the pruning by hand
    store, day = daemon.store, 86400.0
    t0 = 1795514400.0  # 2026-11-24 10:00 UTC
    old = [store.record_decision(t0 - 10 * day, "support-v2", "hold", "r", ["old"]) for _ in range(3)]
    kept_by_run = store.record_decision(t0 - 10 * day, "support-v2", "retrain", "r", ["its run refers to it"])
    store.save_run(RunRecord("run-1", kept_by_run, "support-v2", "succeeded", None, None, None, t0 - 10 * day,
                             t0 - 9 * day, {}))
    recent = store.record_decision(t0 - day, "support-v2", "hold", "r", ["recent"])
    store.claim_occurrence("f-old", "s", t0 - 10 * day)
    store.claim_occurrence("f-new", "s", t0)
    done = store.add_request(t0 - 10 * day, "pause", "old", "ana")
    store.finish_request(done, "done", {}, t0 - 10 * day)
    pending = store.add_request(t0 - 10 * day, "resume", "old but not acted on", "ana")
    daemon._next_prune = None  # as a new daemon at t0
    daemon._prune(t0)  # a starting loop prunes at once, then at the cron time: 03:17 UTC the next day
    assert {d.id for d in store.decisions()} == {kept_by_run, recent} and not set(old) & {d.id for d in store.decisions()}
    assert not store.claim_occurrence("f-new", "s", t0) and store.claim_occurrence("f-old", "s", t0)
    assert store.request(done) is None and store.request(pending).status == "pending"
    later = store.record_decision(t0 - 3 * day, "support-v2", "hold", "r", ["old by tomorrow"])
    daemon._prune(t0 + 17 * 3600 + 16 * 60)  # 03:16 next day: not yet
    assert later in {d.id for d in store.decisions()}
    daemon._prune(t0 + 17 * 3600 + 17 * 60)
    assert later not in {d.id for d in store.decisions()}



def test_who_is_acting_is_stored_bounded(rig):
    """Finding 10: `x-driftwatch-user` was stored in full as `who` (60,000 characters tried)."""
    client, daemon = rig()
    r = client.post("/v1/pause", headers={**AUTH, "X-Driftwatch-User": "m" * 60_000}, json={"reason": "incident"})
    assert r.status_code == 200
    (event,) = daemon.store.events(kind="automatic-retraining")
    assert event.who == "m" * 256
    assert client.get("/v1/openapi.json", headers=AUTH).json()["openapi"].startswith("3.1")
