"""The daemon's monitor on a real broker: windows checked against a reference and exported to /metrics."""

import json
import time
from pathlib import Path
import httpx

from click.testing import CliRunner

from driftwatch.cli import main
from driftwatch.client import EventProducer
from driftwatch.events import decode
from driftwatch.monitor.monitor import build_profile
from driftwatch.monitor.sketch import Profile
from driftwatch.dev.simulate import SimConfig, Simulator

from .conftest import InProcessDaemon, make_settings, wait_for
from .test_ingest import send_stream


def test_shifted_adapter_drifts_stationary_adapter_does_not(tansu, tmp_path, monkeypatch):
    sim = Simulator(SimConfig(seed=300, feedback_rate=0))
    reference = build_profile([decode("inference", o.value, 10**7) for o in sim.stream(6000, start_ms=1795514400000)])
    ref_path = tmp_path / "ref.json"
    version = reference.save(ref_path)
    rules = [{"name": "input-drift", "signal": "input_drift", "threshold": 1, "clear": 0.5, "min_samples": 500},
             {"name": "error-ratio", "signal": "error_ratio", "threshold": 0.05, "clear": 0.02, "action": "alert"}]
    settings = make_settings(tansu, tmp_path, monitor={"reference_path": str(ref_path), "window_events": 1000,
                                                       "check_interval_s": 0.5}, policy={"rules": rules},
                             control={"token": "monitoring-test-token-0123456789"})
    d = InProcessDaemon(settings).wait_ready()
    with EventProducer(kafka=settings.kafka) as producer:
        send_stream(producer, settings, Simulator(SimConfig(seed=301, feedback_rate=0.3, adapters={"stable": 1.0})), 1200)
        shifted = SimConfig(seed=302, feedback_rate=0.3, adapters={"shifted": 1.0}, error_rate=0.2,
                            routes={"qa": 0.05, "summarize": 0.8, "code": 0.05, "chat": 0.05, "extract": 0.05})
        send_stream(producer, settings, Simulator(shifted), 1200)

    def checked():
        return d.value("driftwatch_window_events", adapter="stable") == 1000 and \
            d.value("driftwatch_window_events", adapter="shifted") == 1000
    wait_for(checked, 30, "both adapters' first window to close and be checked")
    detected = lambda adapter, feature: d.value("driftwatch_drift_detected", adapter=adapter, feature=feature)  # noqa: E731
    assert detected("shifted", "route") == 1 and detected("shifted", "prompt_chars") == 1
    assert detected("shifted", "status") == 1
    assert sum(detected("stable", f) for f in ("route", "prompt_chars", "status", "response_chars", "latency_ms")) == 0
    assert d.value("driftwatch_drift_score", adapter="shifted", feature="route") >= 0.1
    assert 0.15 < d.value("driftwatch_error_ratio", adapter="shifted") < 0.25
    assert d.value("driftwatch_reference_info", version=version[:12]) == 1
    assert 0 < d.value("driftwatch_output_quality", adapter="stable", signal="distinct_2") <= 1
    assert d.value("driftwatch_last_check_timestamp_seconds") > 0

    # the policy, on the scheduler: one retrain request and one alert for the shifted adapter, nothing for the other
    wait_for(lambda: d.value("driftwatch_decisions_total", action="retrain") >= 1, 10, "the retrain decision")
    decisions = d.daemon.control.store.decisions()
    assert {(x.adapter, x.action, x.rule) for x in decisions} == {("shifted", "retrain", "input-drift"),
                                                                  ("shifted", "alert", "error-ratio")}
    retrain = next(x for x in decisions if x.action == "retrain")
    assert "drifted: " in retrain.reasons[0] and "route (Cramér's V" in retrain.reasons[0]
    assert d.value("driftwatch_rule_state", rule="input-drift", adapter="shifted") == 2
    assert d.value("driftwatch_rule_state", rule="input-drift", adapter="stable") == 0

    # the decision keeps its evidence: driftwatch's verdicts and Evidently's report on the same window
    wait_for(lambda: d.daemon.control.store.decisions(action="retrain")[0].evidence, 60, "the decision's evidence")
    retrain = d.daemon.control.store.decisions(action="retrain")[0]
    evidence = json.loads(Path(retrain.evidence).read_text())
    assert evidence["decision_id"] == retrain.id and evidence["drift"]["route"]["drifted"] is True
    assert evidence["evidently"]["drifted_columns"] >= 1, evidence["evidently"]
    assert (Path(retrain.evidence).parent / evidence["evidently"]["html"]).stat().st_size > 10_000

    # `driftwatch report` asks the running daemon for the current window's report, with the control token
    assert httpx.get(d.daemon.http.url + "/report", params={"adapter": "shifted"}, timeout=10).status_code == 401
    monkeypatch.setenv("DRIFTWATCH__CONTROL__TOKEN", "monitoring-test-token-0123456789")
    out = tmp_path / "reports"
    result = CliRunner().invoke(main, ["report", "--url", d.daemon.http.url, "--adapter", "shifted", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "<html" in (out / "driftwatch-report-shifted.html").read_text().lower()
    metrics = json.loads((out / "driftwatch-report-shifted.json").read_text())["metrics"]
    assert next(m for m in metrics if m["metric_name"].startswith("ValueDrift(column=route"))["value"] >= 0.1
    missing = CliRunner().invoke(main, ["report", "--url", d.daemon.http.url, "--adapter", "nope"])
    assert missing.exit_code == 1 and "no window for adapter 'nope'" in missing.output and "shifted" in missing.output
    assert d.stop() == 0


def test_baseline_from_a_topic_range(tansu, tmp_path):
    settings = make_settings(tansu, tmp_path)
    from driftwatch.ingest.kafka import ensure_topics

    ensure_topics(settings.kafka)
    with EventProducer(kafka=settings.kafka) as producer:
        first, _ = send_stream(producer, settings, Simulator(SimConfig(seed=310, feedback_rate=0)), 700)
        time.sleep(0.05)
        boundary = int(time.time() * 1000)
        time.sleep(0.05)
        second, records = send_stream(producer, settings, Simulator(SimConfig(seed=311, feedback_rate=0)), 500)
    topic = settings.kafka.topics.inference
    args = ["baseline", "--topic", topic, "--bootstrap", tansu.bootstrap]
    whole = CliRunner().invoke(main, args + ["--out", str(tmp_path / "all.json")])
    assert whole.exit_code == 0, whole.output
    assert Profile.load(tmp_path / "all.json").baselines["events"] == 1200
    late = CliRunner().invoke(main, args + ["--since", str(boundary), "--out", str(tmp_path / "late.json")])
    assert late.exit_code == 0, late.output
    profile = Profile.load(tmp_path / "late.json")
    assert profile.baselines["events"] == 500 and profile.source.startswith(f"kafka:{topic}[{boundary}")
    # the same events from a file give the same sketches (the topic's order across partitions does not matter)
    events = [decode("inference", out.value, 10**7) for out, _ in records if out.topic == "inference"]
    from_file = build_profile(events)
    assert profile.numeric == from_file.numeric and profile.categorical == from_file.categorical
    early = CliRunner().invoke(main, args + ["--until", str(boundary), "--max-events", "300", "--out", str(tmp_path / "e.json")])
    assert early.exit_code == 0 and Profile.load(tmp_path / "e.json").baselines["events"] == 300
    nothing = CliRunner().invoke(main, ["baseline", "--topic", "no-such-topic", "--bootstrap", tansu.bootstrap,
                                        "--out", str(tmp_path / "x.json")])
    assert nothing.exit_code == 1 and "no-such-topic" in nothing.output
