from collections import Counter

import pytest

from driftwatch.events import FeedbackEvent, InferenceEvent, Rejected, decode
from driftwatch.dev.simulate import BAD_KINDS, SimConfig, Simulator


def collect(cfg, count=300):
    sim = Simulator(cfg)
    return list(sim.stream(count, start_ms=1795514400000)) + list(sim.tail())


def test_same_seed_same_stream_and_another_seed_differs():
    a = [o.value for o in collect(SimConfig(seed=3))]
    b = [o.value for o in collect(SimConfig(seed=3))]
    c = [o.value for o in collect(SimConfig(seed=4))]
    assert a == b and a != c


def test_every_bad_kind_is_rejected_for_its_own_reason():
    cfg = SimConfig(seed=1, bad={k: 2 for k in BAD_KINDS}, oversize_bytes=25_000)
    out = collect(cfg)
    seen_ids: set[str] = set()
    reasons: Counter = Counter()
    for o in out:
        result = decode(o.topic, o.value, 20_000)
        if o.label in ("inference", "feedback"):
            assert isinstance(result, (InferenceEvent, FeedbackEvent)), (o.label, result)
            if isinstance(result, InferenceEvent):
                seen_ids.add(result.request_id)
        elif o.label == "duplicate":
            assert isinstance(result, InferenceEvent) and result.request_id in seen_ids
        else:
            assert isinstance(result, Rejected) and result.reason.value == o.label, (o.label, result)
            reasons[o.label] += 1
    assert reasons == Counter({k: 2 for k in BAD_KINDS if k != "duplicate"})


def test_feedback_refers_to_real_requests_and_is_delayed():
    out = collect(SimConfig(seed=2, feedback_rate=0.5, feedback_delay_s=1.0), count=500)
    position = {}
    for i, o in enumerate(out):
        ev = decode(o.topic, o.value, 1_000_000)
        if isinstance(ev, InferenceEvent):
            position[ev.request_id] = i
        else:
            assert ev.request_id in position and position[ev.request_id] < i
    n_feedback = sum(o.label == "feedback" for o in out)
    assert 150 < n_feedback < 350


def test_route_mix_errors_and_lengths_follow_the_config():
    cfg = SimConfig(seed=5, routes={"qa": 0.7, "summarize": 0.3}, error_rate=0.1, timeout_rate=0.0)
    events = [decode(o.topic, o.value, 1_000_000) for o in collect(cfg, 2000) if o.label == "inference"]
    routes = Counter(e.route for e in events)
    assert 0.65 < routes["qa"] / 2000 < 0.75
    assert 0.07 < sum(e.status == "error" for e in events) / 2000 < 0.13
    mean = lambda r: sum(len(e.prompt) for e in events if e.route == r) / routes[r]  # noqa: E731
    assert mean("summarize") > 3 * mean("qa")  # summaries carry long documents


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown route"):
        SimConfig(routes={"poetry": 1.0})
    with pytest.raises(ValueError, match="unknown bad record kind"):
        SimConfig(bad={"garbage": 1})


def test_a_duplicate_with_nothing_before_it_is_counted_as_the_first_record_it_is():
    """At a low rate the first injected record can be a duplicate: with no record to repeat yet, the record sent is
    new, and is labelled so (the demo compares what was sent with what the daemon counted, exactly)."""
    from driftwatch.dev.simulate import SimConfig, Simulator

    sim = Simulator(SimConfig(seed=1, feedback_rate=0, bad={"duplicate": 1}))
    first = sim.bad("duplicate", 1_700_000_000_000)
    assert first.label == "inference"
    again = sim.bad("duplicate", 1_700_000_000_001)
    assert again.label == "duplicate" and again.value == first.value


def test_a_run_stopped_on_its_deadline_labels_every_record_as_what_it_is():
    """The record the runner stops on was made but not sent: a duplicate injected in the tail must repeat a record
    that was sent (else it reaches the ingestor as a first and the demo's exact counts miss by one), and no
    feedback may come for it."""
    from driftwatch.dev.simulate import run

    class Producer:
        def __init__(self):
            self.records = []

        def send_raw(self, topic, value, key=None):
            self.records.append((topic, value, key))

        def flush(self):
            pass

    producer = Producer()
    sim = Simulator(SimConfig(seed=7, feedback_rate=1.0, feedback_delay_s=60, bad={"duplicate": 3}))
    sent = run(producer, {"inference": "inf", "feedback": "fb"}, sim, rate=200, duration_s=0.05, count=1000)
    assert 0 < sent["inference"] < 1000 and sent["duplicate"] == 3  # stopped by the deadline, duplicates in the tail
    first, repeats = set(), 0
    for topic, value, key in producer.records:
        if topic == "inf":
            repeats += key in first
            first.add(key)
    assert repeats == sent["duplicate"] and len(first) == sent["inference"]
    assert {key for topic, _, key in producer.records if topic == "fb"} <= first
    assert sent["feedback"] == sent["inference"]  # every request sent, and only those, gets its feedback
