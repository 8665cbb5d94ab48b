"""The daemon's monitor on a real broker: windows checked against a reference and exported to /metrics."""

from driftwatch.client import EventProducer
from driftwatch.events import decode
from driftwatch.monitor.monitor import build_profile
from driftwatch.simulate import SimConfig, Simulator

from .conftest import InProcessDaemon, make_settings, wait_for
from .test_ingest import send_stream


def test_shifted_adapter_drifts_stationary_adapter_does_not(tansu, tmp_path):
    sim = Simulator(SimConfig(seed=300, feedback_rate=0))
    reference = build_profile([decode("inference", o.value, 10**7) for o in sim.stream(6000, start_ms=1795514400000)])
    ref_path = tmp_path / "ref.json"
    version = reference.save(ref_path)
    rules = [{"name": "input-drift", "signal": "input_drift", "threshold": 1, "clear": 0.5, "min_samples": 500},
             {"name": "error-ratio", "signal": "error_ratio", "threshold": 0.05, "clear": 0.02, "action": "alert"}]
    settings = make_settings(tansu, tmp_path, monitor={"reference_path": str(ref_path), "window_events": 1000,
                                                       "check_interval_s": 0.5}, policy={"rules": rules})
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
    decisions = d.daemon.policy.store.decisions()
    assert {(x.adapter, x.action, x.rule) for x in decisions} == {("shifted", "retrain", "input-drift"),
                                                                  ("shifted", "alert", "error-ratio")}
    retrain = next(x for x in decisions if x.action == "retrain")
    assert "drifted: " in retrain.reasons[0] and "route (Cramér's V" in retrain.reasons[0]
    assert d.value("driftwatch_rule_state", rule="input-drift", adapter="shifted") == 2
    assert d.value("driftwatch_rule_state", rule="input-drift", adapter="stable") == 0
    assert d.stop() == 0
