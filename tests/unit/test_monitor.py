
import pytest

from driftwatch.events import FeedbackEvent, InferenceEvent, decode
from driftwatch.monitor.monitor import Monitor, MonitorSettings, build_profile
from driftwatch.dev.simulate import SimConfig, Simulator


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def stream(n, **cfg):
    """(kind, event) pairs from the simulator, feedback included."""
    sim = Simulator(SimConfig(**cfg))
    out = []
    for o in list(sim.stream(n, start_ms=1795514400000)) + list(sim.tail()):
        ev = decode(o.topic, o.value, 10_000_000)
        out.append((o.topic, ev))
    return out


def inference(pairs):
    return [e for k, e in pairs if k == "inference"]


@pytest.fixture(scope="module")
def reference():
    return build_profile(inference(stream(6000, seed=100, feedback_rate=0)), source="test")


def run(reference, pairs, **settings):
    m = Monitor(reference, MonitorSettings(window_events=2000, **settings), clock=Clock())
    m.observe(pairs)
    return m.snapshot()


def test_stationary_stream_shows_no_drift(reference):
    snap = run(reference, stream(4500, seed=101, feedback_rate=0))
    (a,) = snap.adapters.values()
    assert a.window_closed and a.window_events == 2000
    assert a.drifted_features == [], {k: v.reason for k, v in a.drift.items() if v.drifted}
    assert snap.reference_version == reference.content_hash


def test_route_mix_change_is_detected_with_a_readable_reason(reference):
    pairs = stream(4500, seed=102, feedback_rate=0, routes={"qa": 0.1, "summarize": 0.6, "code": 0.1, "chat": 0.1, "extract": 0.1})
    (a,) = run(reference, pairs).adapters.values()
    assert "route" in a.drifted_features
    assert "Cramér's V" in a.drift["route"].reason
    assert "prompt_chars" in a.drifted_features  # summaries carry long prompts


def test_error_burst_and_feedback_show_in_quality_signals(reference):
    pairs = stream(2500, seed=103, error_rate=0.3, feedback_rate=0.5, negative_rate=0.6)
    (a,) = run(reference, pairs).adapters.values()
    assert 0.25 < a.error_ratio < 0.35
    assert a.feedback_count > 100 and 0.45 < a.negative_feedback_ratio < 0.75
    assert "status" in a.drifted_features
    assert 0 < a.distinct_2 <= 1


def test_windows_close_by_count_and_by_time_and_are_kept_per_adapter(reference):
    clock = Clock()
    m = Monitor(reference, MonitorSettings(window_events=1000, window_seconds=60), clock=clock)
    pairs = stream(1500, seed=104, feedback_rate=0, adapters={"v1": 0.5, "v2": 0.5})
    m.observe(pairs)
    snap = m.snapshot()
    assert set(snap.adapters) == {"v1", "v2"}
    assert all(not a.window_closed for a in snap.adapters.values())  # ~750 each: still filling
    clock.t += 61
    snap = m.snapshot()
    assert all(a.window_closed and 600 < a.window_events < 900 for a in snap.adapters.values())


def test_no_reference_means_quality_signals_only():
    (a,) = run(None, stream(500, seed=105)).adapters.values()
    assert a.drift == {} and a.error_ratio is not None and a.window_events == 500


def test_feedback_without_a_known_request_is_not_attributed(reference):
    fb = FeedbackEvent.model_validate({"schema_version": 1, "feedback_id": "f", "request_id": "nobody",
                                       "timestamp": 1795514400000, "thumbs": "down"})
    m = Monitor(reference, clock=Clock())
    m.observe([("feedback", fb)])
    assert m.snapshot().adapters == {}


def test_adapters_are_capped():
    base = {"schema_version": 1, "timestamp": 1795514400000, "model": "m", "prompt": "p", "latency_ms": 1.0, "status": "ok"}
    m = Monitor(None, max_adapters=3, clock=Clock())
    m.observe([("inference", InferenceEvent.model_validate({**base, "request_id": f"r{i}", "adapter": f"a{i}"}))
               for i in range(50)])
    assert set(m.snapshot().adapters) == {"a0", "a1", "a2", "other"}


def test_profile_from_events_is_deterministic(reference, tmp_path):
    again = build_profile(inference(stream(6000, seed=100, feedback_rate=0)), source="test")
    assert again.content_hash == reference.content_hash
    assert 0 < reference.baselines["distinct_2"] <= 1 and reference.baselines["events"] == 6000


@pytest.mark.parametrize("shift, feature", [
    ({"length_scale": 2.0}, "prompt_chars"),
    ({"spanish_rate": 0.5}, "language"),
    ({"refusal_rate": 0.3}, "refusal"),
    ({"collapse_rate": 0.6}, "response_chars"),
])
def test_each_injected_shift_moves_its_feature(reference, shift, feature):
    (a,) = run(reference, stream(2100, seed=106, feedback_rate=0, **shift)).adapters.values()
    assert feature in a.drifted_features, {k: v.reason for k, v in a.drift.items()}
    if "collapse_rate" in shift:
        assert a.distinct_2 < 0.85 * reference.baselines["distinct_2"]
    if "refusal_rate" in shift:
        assert 0.25 < a.refusal_rate < 0.35


def test_two_replicas_windows_merge_into_the_global_one(reference):
    """Each replica sees part of the partitions; merged windows give the verdicts one monitor of everything gives."""
    pairs = stream(2000, seed=120, feedback_rate=0.3,
                   routes={"qa": 0.2, "summarize": 0.5, "code": 0.1, "chat": 0.1, "extract": 0.1})
    settings = MonitorSettings(window_events=5000, report_sample=300)
    whole = Monitor(reference, settings, clock=Clock())
    whole.observe(pairs)
    replicas = [Monitor(reference, settings, clock=Clock()) for _ in range(2)]
    for i, (kind, event) in enumerate(pairs):
        replicas[hash(event.request_id) % 2].observe([(kind, event)])  # feedback follows its request's partition
    (a, _), (b, _) = (next(iter(r.windows().values())) for r in replicas)
    assert 0 < a.events < 2000 and a.events + b.events == 2000
    merged = a.merged(b)
    (g,) = replicas[0].snapshot({"support-v1": (merged, False)}).adapters.values()
    (w,) = whole.snapshot().adapters.values()
    assert merged.numeric == next(iter(whole.windows().values()))[0].numeric
    assert {k: (v.value, v.p_value, v.drifted) for k, v in g.drift.items()} == \
        {k: (v.value, v.p_value, v.drifted) for k, v in w.drift.items()}
    assert "route" in g.drifted_features
    assert (g.window_events, g.error_ratio, g.negative_feedback_ratio) == (w.window_events, w.error_ratio,
                                                                          w.negative_feedback_ratio)
    assert len(merged.rows) == 300 and len(merged.responses) <= settings.diversity_sample
    assert abs(sum(r in a.rows for r in merged.rows) / 300 - a.events / 2000) < 0.02  # in proportion to events


def test_chat_events_without_a_prompt_field_are_observed(reference):
    """An application may log only `messages`; the monitor and its samples use the user's text."""
    chat = InferenceEvent.model_validate({
        "schema_version": 1, "request_id": "c1", "timestamp": 1795514400000, "model": "base", "adapter": "chat-v1",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of Peru?"}],
        "response": "Lima.", "latency_ms": 80, "status": "ok"})
    m = Monitor(reference, MonitorSettings(semantic_sample=10), clock=Clock())
    m.observe([("inference", chat)])
    (win, _), = m.windows().values()
    assert win.events == 1 and win.rows[0].prompt_chars == len("Be brief.\nWhat is the capital of Peru?")


def test_rebaseline_makes_the_answered_drift_the_reference(reference):
    shifted = dict(seed=7, routes={"qa": 0.05, "summarize": 0.8, "code": 0.05, "chat": 0.05, "extract": 0.05})
    m = Monitor(reference, MonitorSettings(window_events=2000), clock=Clock())
    m.observe(stream(2000, **shifted))
    assert m.snapshot().adapters["support-v1"].drift["route"].drifted
    before = m.reference.content_hash
    profile = m.rebaseline("support-v1", source="test")
    assert m.reference is profile and profile.content_hash != before and m.snapshot().adapters == {}
    m.observe(stream(2000, **{**shifted, "seed": 8}))  # the same shift, more of it: no longer drift
    after = m.snapshot().adapters["support-v1"]
    assert not after.drift["route"].drifted and after.window_events == 2000
    with pytest.raises(ValueError, match="min_samples"):
        Monitor(reference, clock=Clock()).rebaseline("support-v1", source="test")
