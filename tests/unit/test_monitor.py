
import pytest

from driftwatch.events import FeedbackEvent, InferenceEvent, decode
from driftwatch.monitor.monitor import Monitor, MonitorSettings, build_profile
from driftwatch.dev.simulate import SimConfig, Simulator

from .fakes import accepted


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def stream(n, **cfg):
    """Accepted events from the simulator, feedback included and joined, as the ingestor hands them on."""
    sim = Simulator(SimConfig(**cfg))
    out = []
    for o in list(sim.stream(n, start_ms=1795514400000)) + list(sim.tail()):
        ev = decode(o.topic, o.value, 10_000_000)
        out.append((o.topic, ev))
    return accepted(out)


def inference(items):
    return [it.event for it in items if it.kind == "inference"]


def observe(m, items):
    """What the ingest thread does: observe, then its step between polls (publish when a window closed or asked)."""
    m.observe(items)
    m.ask()  # as a reader does (Monitor.fresh): the next step publishes
    m.maintain()
    return m


@pytest.fixture(scope="module")
def reference():
    return build_profile(inference(stream(6000, seed=100, feedback_rate=0)), source="test")


def run(reference, pairs, **settings):
    m = Monitor(reference, MonitorSettings(window_events=2000, **settings), clock=Clock())
    return observe(m, pairs).snapshot()


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
    snap = observe(m, pairs).snapshot()
    assert set(snap.adapters) == {"v1", "v2"}
    assert all(not a.window_closed for a in snap.adapters.values())  # ~750 each: still filling
    clock.t += 61
    assert m.maintain() is not None  # the time is up: both windows close, and that is published
    snap = m.snapshot()
    assert all(a.window_closed and 600 < a.window_events < 900 for a in snap.adapters.values())


def test_no_reference_means_quality_signals_only():
    (a,) = run(None, stream(500, seed=105)).adapters.values()
    assert a.drift == {} and a.error_ratio is not None and a.window_events == 500


def test_feedback_without_a_known_request_is_not_attributed(reference):
    fb = FeedbackEvent.model_validate({"schema_version": 1, "feedback_id": "f", "request_id": "nobody",
                                       "timestamp": 1795514400000, "thumbs": "down"})
    m = Monitor(reference, clock=Clock())
    assert observe(m, accepted([("feedback", fb)])).snapshot().adapters == {}


def test_windows_are_per_adapter_label_as_the_ingestor_chose_it():
    """The ingestor's join picks each event's label once (capped: past metrics.max_adapters, "other"); the monitor
    keeps one window per label and never a second cap that could disagree. 'other' and 'unknown' (a name the gateway
    refused) have no window: a mix of adapters, or none, is nothing to retrain."""
    from driftwatch.metrics import LabelCap

    base = {"schema_version": 1, "timestamp": 1795514400000, "model": "m", "prompt": "p", "latency_ms": 1.0, "status": "ok"}
    m = Monitor(None, clock=Clock())
    events = [("inference", InferenceEvent.model_validate({**base, "request_id": f"r{i}", "adapter": f"a{i}"}))
              for i in range(50)]
    assert set(observe(m, accepted(events, label=LabelCap(3))).snapshot().adapters) == {"a0", "a1", "a2"}
    refused = InferenceEvent.model_validate({**base, "request_id": "x", "adapter": "unknown"})
    assert set(observe(m, accepted([("inference", refused)], label=LabelCap(3))).snapshot().adapters) == {"a0", "a1", "a2"}


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
    whole = observe(Monitor(reference, settings, clock=Clock()), pairs)
    replicas = [Monitor(reference, settings, clock=Clock()) for _ in range(2)]
    for item in pairs:
        replicas[hash(item.event.request_id) % 2].observe([item])  # feedback follows its request's partition
    (a, _), (b, _) = (next(iter(observe(r, []).latest().views.values())) for r in replicas)
    assert 0 < a.events < 2000 and a.events + b.events == 2000
    merged = a.merged(b)
    (g,) = replicas[0].snapshot({"support-v1": (merged, False)}).adapters.values()
    (w,) = whole.snapshot().adapters.values()
    assert merged.numeric == next(iter(whole.latest().views.values()))[0].numeric
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
    m = observe(Monitor(reference, MonitorSettings(semantic_sample=10), clock=Clock()), accepted([("inference", chat)]))
    (win, _), = m.latest().views.values()
    assert win.events == 1 and win.rows[0].prompt_chars == len("Be brief.\nWhat is the capital of Peru?")


def test_rebaseline_makes_the_answered_drift_the_reference(reference):
    shifted = dict(seed=7, routes={"qa": 0.05, "summarize": 0.8, "code": 0.05, "chat": 0.05, "extract": 0.05})
    m = Monitor(reference, MonitorSettings(window_events=2000), clock=Clock())
    assert observe(m, stream(2000, **shifted)).snapshot().adapters["support-v1"].drift["route"].drifted
    profile = m.profile_from("support-v1", source="test")
    assert profile.content_hash != reference.content_hash
    m.use_reference(profile)  # handed to the ingest thread: taken up at its next step
    assert m.latest().reference is reference and m.reference is reference
    assert m.maintain().reference is profile and m.snapshot().adapters == {}  # every window starts afresh
    after = observe(m, stream(2000, **{**shifted, "seed": 8})).snapshot().adapters["support-v1"]
    assert not after.drift["route"].drifted and after.window_events == 2000  # the same shift, more of it: no drift
    with pytest.raises(ValueError, match="min_samples"):
        Monitor(reference, clock=Clock()).profile_from("support-v1", source="test")


def test_a_publication_is_not_written_by_the_ingest_thread_after_it(reference):
    """A reader holds a publication while the ingest thread goes on: what it holds does not change."""
    m = Monitor(reference, MonitorSettings(window_events=5000), clock=Clock())
    items = stream(3000, seed=9)
    held = observe(m, items[:1000]).latest()
    (win, closed), = held.views.values()
    before = (win.events, list(win.numeric["prompt_chars"].counts), dict(win.feedback), len(win.rows))
    observe(m, items[1000:])
    assert (win.events, list(win.numeric["prompt_chars"].counts), dict(win.feedback), len(win.rows)) == before
    assert not closed and m.latest().seq == held.seq + 1 and next(iter(m.latest().views.values()))[0].events > win.events


def test_what_a_client_causes_by_itself_never_moves_a_window():
    from driftwatch.events import FeedbackEvent
    from driftwatch.monitor.monitor import vouched

    base = {"schema_version": 1, "request_id": "r", "timestamp": 1795514400000, "model": "m", "adapter": "a",
            "prompt": "p", "latency_ms": 1.0}
    served = InferenceEvent.model_validate({**base, "status": "ok", "metadata": {"http_status": 200}})
    refused = InferenceEvent.model_validate({**base, "status": "error", "metadata": {"http_status": 400}})
    gone = InferenceEvent.model_validate({**base, "status": "error", "metadata": {"http_status": 499}})
    direct = InferenceEvent.model_validate({**base, "status": "error"})  # another producer's: no gateway status
    assert [vouched("inference", e, None) for e in (served, refused, gone, direct)] == [True, False, False, True]
    tenant = served.model_copy(update={"tenant": "acme"})
    fb = lambda **kw: FeedbackEvent.model_validate({"schema_version": 1, "feedback_id": "f", "request_id": "r",  # noqa: E731
                                                     "timestamp": 1795514400000, "thumbs": "down", **kw})
    assert not vouched("feedback", fb(origin="receipt"), served)  # anyone can collect receipts
    assert vouched("feedback", fb(origin="receipt"), tenant)  # an authenticated tenant's user
    assert vouched("feedback", fb(origin="caller", caller="crm"), served) and vouched("feedback", fb(), None)
