import pytest

from driftwatch.metrics import Metrics
from driftwatch.monitor.monitor import AdapterSnapshot, Monitor, MonitorSettings, MonitorSnapshot, build_profile
from driftwatch.monitor.stats import Verdict
from driftwatch.config import DEFAULT_RULES, Rule
from driftwatch.control.policy import Policy
from driftwatch.state.store import SqliteStore

from .test_monitor import Clock, inference, observe, stream

ERR = Rule(name="errors", signal="error_ratio", threshold=0.1, clear=0.05, for_s=60, min_samples=100)


def snap(adapter="v1", n=1000, error_ratio=0.0, drift=None, baselines=None, **kw):
    a = AdapterSnapshot(adapter=adapter, window_events=n, window_closed=True, error_ratio=error_ratio,
                        refusal_rate=kw.get("refusal_rate", 0.0), empty_rate=0.0,
                        negative_feedback_ratio=kw.get("neg"), feedback_count=kw.get("fb", 0),
                        distinct_1=0.5, distinct_2=kw.get("distinct_2", 0.8), drift=drift or {})
    return MonitorSnapshot(0.0, None, {adapter: a}, baselines or {})


class Recording(Policy):
    """The policy, keeping the retrain decisions it hands the reconciler (which would queue their runs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests = []

    def tick(self, snapshot, now, **kwargs):
        decisions = self.decide(snapshot, now, **kwargs)
        self.requests += [d for d in decisions if d.action == "retrain"]
        return decisions


def make(tmp_path, rules=(ERR,), **kw):
    policy = Recording(rules, SqliteStore(tmp_path / "state.db"), Metrics(), **kw)
    return policy, policy.requests


def test_fires_only_after_the_for_duration_and_clears_with_hysteresis(tmp_path):
    p, requests = make(tmp_path)
    assert p.tick(snap(error_ratio=0.2), now=1000) == []
    assert p.state("errors", "v1").state == "pending"
    assert p.tick(snap(error_ratio=0.2), now=1059) == []
    (d,) = p.tick(snap(error_ratio=0.2), now=1060)
    assert d.action == "retrain" and p.state("errors", "v1").state == "firing"
    assert "error_ratio = 0.2 >= 0.1 for 60s on adapter 'v1'" in d.reasons[0]
    (req,) = requests
    assert req.adapter == "v1" and req.id == d.id and req.slot == "v1"
    assert p.tick(snap(error_ratio=0.07), now=1100) == []  # below the threshold but above clear: still firing
    assert p.state("errors", "v1").state == "firing"
    (resolved,) = p.tick(snap(error_ratio=0.04), now=1200)
    assert resolved.action == "resolved" and p.state("errors", "v1").state == "inactive"
    assert p.metrics.registry.get_sample_value("driftwatch_retrain_requests_total", {"rule": "errors"}) == 1


def test_a_blip_shorter_than_for_does_not_fire(tmp_path):
    p, requests = make(tmp_path)
    p.tick(snap(error_ratio=0.2), now=0)
    p.tick(snap(error_ratio=0.01), now=30)
    p.tick(snap(error_ratio=0.2), now=40)
    assert p.tick(snap(error_ratio=0.2), now=90) == [] and requests == []  # pending again since 40


def test_no_data_holds_the_state(tmp_path):
    p, _ = make(tmp_path)
    p.tick(snap(error_ratio=0.2), now=0)
    p.tick(snap(error_ratio=0.2, n=50), now=100)  # too small a window: nothing changes
    assert p.state("errors", "v1").state == "pending"
    p.tick(snap(error_ratio=None), now=100)
    (d,) = p.tick(snap(error_ratio=0.2), now=101)
    assert d.action == "retrain"


def test_cooldown_and_daily_maximum_belong_to_the_serving_slot(tmp_path):
    quick = Rule(name="errors", signal="error_ratio", threshold=0.1, clear=0.05)
    p, requests = make(tmp_path, rules=(quick,), cooldown_s=3600, max_retrains_per_day=2)
    slots = {"v1": "production", "v1-next": "production"}

    def fire(adapter, t):
        return (p.tick(snap(adapter, error_ratio=0.2), t, slots=slots) +
                p.tick(snap(adapter, error_ratio=0.0), t + 1, slots=slots))[0]

    assert fire("v1", 0).action == "retrain"
    held = fire("v1", 100)
    assert held.action == "hold" and "serving slot 'production' cools down" in held.reasons[-1]
    # the version promoted to answer that drift serves the same slot: not retrained for it while the slot cools down
    promoted = fire("v1-next", 200)
    assert promoted.action == "hold" and promoted.slot == "production" and "decision #1 on v1" in promoted.reasons[-1]
    assert fire("v2", 300).action == "retrain"  # another slot: its own cooldown
    assert fire("v1-next", 4000).action == "retrain"  # the slot cooled down
    capped = fire("v1", 8000)
    assert capped.action == "hold" and "2 retrains of serving slot 'production' in the last 24 h" in capped.reasons[-1]
    assert [(r.adapter, r.slot) for r in requests] == [("v1", "production"), ("v2", "v2"), ("v1-next", "production")]
    assert fire("v1", 90_000).action == "retrain"  # a day later


def test_state_and_decisions_survive_a_restart(tmp_path):
    p, _ = make(tmp_path)
    p.tick(snap(error_ratio=0.2), now=0)
    p.store.close()
    p2, requests = make(tmp_path)  # a new process on the same store
    assert p2.state("errors", "v1").state == "pending"
    (d,) = p2.tick(snap(error_ratio=0.2), now=61)
    assert d.action == "retrain" and requests
    assert [x.action for x in p2.store.decisions()] == ["retrain"]


def test_alert_rules_decide_without_requesting_a_retrain(tmp_path):
    p, requests = make(tmp_path, rules=(Rule(name="errs", signal="error_ratio", threshold=0.1, action="alert"),))
    (d,) = p.tick(snap(error_ratio=0.3), now=0)
    assert d.action == "alert" and requests == []


def test_default_input_drift_rule_names_the_drifted_features(tmp_path):
    drifted = Verdict("chi2+cramers_v", 0.4, 1e-30, 5000, 1000, True, "Cramér's V 0.400 >= 0.1 and p 1e-30 < 0.01")
    calm = Verdict("ks+psi", 0.01, 0.5, 5000, 1000, False, "not significant")
    p, requests = make(tmp_path, rules=DEFAULT_RULES)
    s = snap(drift={"route": drifted, "prompt_chars": calm}, fb=0)
    (d,) = p.tick(s, now=0)  # a window of >= 1000 events is already a stable sample: no "for" on this rule
    assert d.rule == "input-drift" and "drifted: route (Cramér's V 0.400" in d.reasons[0]
    assert p.tick(snap(drift={"route": calm}), now=120)[0].action == "resolved"


def test_collapse_is_relative_to_the_reference_diversity(tmp_path):
    rule = Rule(name="collapse", signal="distinct_2_ratio", op="<=", threshold=0.7, clear=0.85)
    p, requests = make(tmp_path, rules=(rule,))
    assert p.tick(snap(distinct_2=0.6, baselines={"distinct_2": 0.8}), now=0) == []  # 0.75 of the reference
    (d,) = p.tick(snap(distinct_2=0.5, baselines={"distinct_2": 0.8}), now=1)  # 0.625
    assert d.action == "retrain" and "distinct_2_ratio = 0.625 <= 0.7" in d.reasons[0]


def test_status_shows_rule_states_and_decisions(tmp_path):
    from click.testing import CliRunner

    from driftwatch.cli import main

    store = SqliteStore(tmp_path / "state.db")
    p = Policy([Rule(name="input-drift", signal="error_ratio", threshold=0.1)], store)
    p.decide(snap("support-v7", error_ratio=0.5), now=1_795_514_400)
    store.close()
    env = {"DRIFTWATCH__DAEMON__STATE_DIR": str(tmp_path)}
    out = CliRunner().invoke(main, ["status", "--local"], env=env).output
    assert "support-v7" in out and "firing" in out and "retrain" in out and "error_ratio = 0.5" in out


def test_rule_config_errors_name_the_rule(tmp_path):
    import pytest

    from driftwatch.config import load_settings
    from driftwatch.errors import ConfigError

    path = tmp_path / "dw.yaml"
    path.write_text("""
policy:
  rules:
    - {name: a, signal: eror_ratio, threshold: 0.1}
    - {name: a, signal: drift:route, threshold: 1, clear: 2}
""")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    got = {p.path: f"{p.message} {p.fix}" for p in info.value.problems}
    assert "unknown signal 'eror_ratio'" in got["policy.rules.0.signal"]
    assert "used twice" in got["policy.rules.1.name"]
    assert "firing side" in got["policy.rules.1.clear"]


@pytest.fixture(scope="module")
def reference():
    return build_profile(inference(stream(6000, seed=500, feedback_rate=0)))


@pytest.mark.parametrize("shift, rule, action, words", [
    ({}, None, None, None),
    ({"routes": {"qa": 0.2, "summarize": 0.45, "code": 0.15, "chat": 0.1, "extract": 0.1}}, "input-drift", "retrain",
     "route (Cramér's V"),
    ({"length_scale": 1.4}, "input-drift", "retrain", "prompt_chars (PSI"),
    ({"spanish_rate": 0.3}, "input-drift", "retrain", "language (Cramér's V"),
    ({"refusal_rate": 0.2}, "refusals", "retrain", "refusals: refusal_rate = 0.1"),
    ({"collapse_rate": 0.5}, "output-collapse", "retrain", "distinct_2_ratio = 0."),
    ({"negative_rate": 0.6, "feedback_rate": 0.3}, "negative-feedback", "retrain", "negative_feedback_ratio = 0."),
    ({"error_rate": 0.15}, "error-ratio", "alert", "error_ratio = 0.1"),
], ids=["stationary", "route-mix", "lengths", "language", "refusal-burst", "collapse", "negative-feedback", "errors"])
def test_each_injected_shift_fires_its_default_rule(reference, tmp_path, shift, rule, action, words):
    """The simulator's shifts through the monitor and the default rules: the right rule, a readable reason."""
    clock = Clock()
    monitor = Monitor(reference, MonitorSettings(window_events=2000), clock=clock)
    policy, requests = make(tmp_path, DEFAULT_RULES)
    observe(monitor, stream(2600, seed=501, **{"feedback_rate": 0.2, **shift}))
    decisions = []
    for _ in range(3):  # checks 100 s apart: past every default rule's `for`
        decisions += policy.tick(monitor.snapshot(), clock.t)
        clock.t += 100
    fired = [(d.rule, d.action) for d in decisions if d.action in ("retrain", "alert")]
    if rule is None:
        assert fired == [] and requests == []
        return
    assert fired == [(rule, action)], [d.reasons for d in decisions]
    assert words in decisions[0].reasons[0]
    assert len(requests) == (action == "retrain")


def test_a_rollout_in_progress_holds_retrains_with_its_reason(tmp_path):
    p, requests = make(tmp_path, rules=(Rule(name="errors", signal="error_ratio", threshold=0.1, clear=0.05, min_samples=100),))
    (d,) = p.tick(snap(error_ratio=0.2), now=0, busy="rollout 3 of ft-x is in progress (baking)")
    assert d.action == "hold" and requests == [] and "held: rollout 3 of ft-x is in progress" in d.reasons[-1]


def test_a_daily_maximum_of_zero_holds_every_automatic_retrain(tmp_path):
    """max_retrains_per_day = 0 turns automatic retraining off: a hold, never an error (review: it raised
    IndexError on every check)."""
    p, requests = make(tmp_path, rules=(Rule(name="errors", signal="error_ratio", threshold=0.1, clear=0.05,
                                             min_samples=100),), max_retrains_per_day=0)
    (d,) = p.tick(snap(error_ratio=0.2), now=0)
    assert d.action == "hold" and "policy.max_retrains_per_day = 0" in d.reasons[-1] and requests == []
