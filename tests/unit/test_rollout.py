"""The rollout controller against a scripted vLLM and evaluator: phases, the bake's checks, rollback, restarts."""

import itertools
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from driftwatch.config import Bake, Settings
from driftwatch.errors import AdapterExists, AdapterNotFound, AdapterRejected, RolloutError, VLLMUnavailable
from driftwatch.evaluate.gates import Gate
from driftwatch.metrics import Metrics
from driftwatch.monitor.monitor import AdapterSnapshot, MonitorSnapshot
from driftwatch.control.rollout import RolloutController, bake_checks, live_signals
from driftwatch.state.store import SqliteStore


class ScriptedVLLM:
    base_url = "http://scripted"

    def __init__(self):
        self.loaded: dict[str, str] = {}
        self.calls: list[tuple] = []
        self.down = False
        self.reject: set[str] = set()

    def adapters(self):
        if self.down:
            raise VLLMUnavailable("down")
        return dict(self.loaded)

    def load_adapter(self, name, path):
        self.calls.append(("load", name))
        if self.down:
            raise VLLMUnavailable("down")
        if name in self.reject:
            raise AdapterRejected("rank too high", 500)
        if name in self.loaded:
            raise AdapterExists("already", 400)
        self.loaded[name] = path

    def unload_adapter(self, name):
        self.calls.append(("unload", name))
        if self.loaded.pop(name, None) is None:
            raise AdapterNotFound("not loaded", 400)

    def complete(self, model, prompt, max_tokens=4):
        self.calls.append(("complete", model))
        if model not in self.loaded:
            raise AdapterNotFound(model, 404)

    def close(self):
        pass


class ScriptedEvaluator:
    def __init__(self, tmp):
        self.reports_dir, self.passing, self.runs, self.choose, self.siblings = tmp, True, [], None, []

    def run(self, candidate, incumbent, eval_id, context=None, cancel=None, siblings=()):
        self.runs.append((candidate, incumbent))
        self.siblings.append(siblings)
        gate = Gate("golden_delta", 0.2 if self.passing else -0.5, 0.0, ">=")
        return SimpleNamespace(id=eval_id, at=1.0, passed=self.passing, gates=[gate], error=None,
                               candidate=self.choose or candidate)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


TAKEN = itertools.count(1.0)  # every snapshot a new observation


def snap(**adapters) -> MonitorSnapshot:
    def one(name, events=200, errors=0.0, negative=0.1, feedback=50, distinct=0.6, latency=100.0):
        return AdapterSnapshot(name, events, True, errors, 0.0, 0.0, negative, feedback, 0.5, distinct,
                               latency_mean_ms=latency)
    return MonitorSnapshot(next(TAKEN), None, {name: one(name, **kw) for name, kw in adapters.items()})


@pytest.fixture()
def rig(tmp_path):
    def make(**rollout):
        settings = Settings.model_validate({"rollout": {"bake": {"duration_s": 60, "deadline_s": 300, "min_events": 50,
                                                                 "failed_checks": 2}, **rollout},
                                            "daemon": {"state_dir": str(tmp_path / "state")}})
        store = SqliteStore(tmp_path / "state.db")
        vllm, clock = ScriptedVLLM(), Clock()
        metrics = Metrics(CollectorRegistry())
        ctl = RolloutController(settings, store, metrics=metrics, clients=[vllm], evaluator=ScriptedEvaluator(tmp_path),
                                clock=clock, drain_s=10)
        for v in ("v1", "v2", "v3"):
            path = tmp_path / v
            path.mkdir(exist_ok=True)
            (path / "adapter_config.json").write_text("{}")
        ctl.register("v1", tmp_path / "v1")
        store.commit(clock(), "test", "seed", "v1", aliases={"production": {"v1": 1.0}}, states={"v1": "production"})
        vllm.loaded["v1"] = str(tmp_path / "v1")
        return SimpleNamespace(ctl=ctl, store=store, vllm=vllm, clock=clock, metrics=metrics, tmp=tmp_path)
    return make


def events(store):
    return [e.kind for e in reversed(store.events())]


def test_good_candidate_is_loaded_evaluated_warmed_flipped_baked_and_the_previous_retired(rig):
    r = rig()
    r.ctl.register("v2", r.tmp / "v2", run_id="run-1", parent="v1")
    r.ctl.start("v2", who="alice", why="drift")
    assert r.ctl.drive(lambda: snap(v1={})).phase == "baking"
    assert r.store.alias_table()[1] == {"production": {"v2": 1.0}, "previous": {"v1": 1.0}}
    assert {a.version: a.state for a in r.store.adapters()} == {"v1": "previous", "v2": "production"}
    assert ("complete", "v2") in r.vllm.calls and r.ctl.evaluator().runs == [("v2", "v1")]
    assert r.store.evaluations("v2")[0].passed
    # no traffic yet: holds
    r.clock.t += 100
    assert r.ctl.step(snap()).phase == "baking"
    r.clock.t += 1
    assert r.ctl.step(snap(v2={})).phase == "baking"  # measured, passing; the bake window restarts nothing
    r.clock.t += 60
    passed = r.ctl.step(snap(v2={}))
    assert passed.phase == "rebaselining" and r.store.alias_table()[1] == {"production": {"v2": 1.0}}
    done = r.ctl.step(snap(v2={}))  # this promotion answered no input drift: nothing to re-baseline
    assert done.phase == "done" and "did not answer input drift" in r.store.events()[0].why
    assert r.store.adapter("v1").state == "retired" and "v1" in r.vllm.loaded  # unloaded after drain_s only
    r.ctl.reconcile()
    assert "v1" in r.vllm.loaded
    r.clock.t += 11
    assert r.ctl.reconcile()["unloaded"] == ["v1"] and "v1" not in r.vllm.loaded
    assert events(r.store)[-7:] == ["rollout-started", "loaded", "gate-passed", "promoted", "bake-measured", "bake-passed",
                                    "rollout-done"]
    assert r.metrics.rollouts.labels(outcome="done")._value.get() == 1


def test_failed_gate_rejects_and_production_is_never_touched(rig):
    r = rig()
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.evaluator().passing = False
    before = r.store.alias_table()
    assert r.ctl.start("v2") and r.ctl.drive().phase == "rejected"
    assert r.store.alias_table() == before and r.store.adapter("v2").state == "rejected"
    assert "FAIL golden_delta" in r.store.events()[0].why
    with pytest.raises(RolloutError, match="only a candidate"):
        r.ctl.start("v2")


def test_rejected_by_vllm_fails_without_touching_production(rig):
    r = rig()
    r.ctl.register("v2", r.tmp / "v2")
    r.vllm.reject.add("v2")
    r.ctl.start("v2")
    assert r.ctl.drive().phase == "failed" and r.store.alias_table()[1] == {"production": {"v1": 1.0}}


def test_vllm_down_while_loading_holds_and_retries(rig):
    r = rig()
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.start("v2")
    r.vllm.down = True
    assert r.ctl.step().phase == "loading"
    r.vllm.down = False
    assert r.ctl.drive().phase == "baking"


def test_live_regression_rolls_back_at_the_failed_check_threshold(rig):
    r = rig()
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.start("v2")
    r.ctl.drive(lambda: snap(v1={"negative": 0.1}))
    assert r.store.rollouts(1)[0].detail["baseline"]["negative_feedback_ratio"] == 0.1
    bad = snap(v2={"negative": 0.6})
    assert r.ctl.step(bad).failed_checks == 1
    assert r.ctl.step(bad).failed_checks == 1  # the same observation counts once
    back = r.ctl.step(snap(v2={"negative": 0.6}))
    assert back.phase == "rolled_back"
    assert r.store.alias_table()[1] == {"production": {"v1": 1.0}}
    assert {a.version: a.state for a in r.store.adapters()} == {"v1": "production", "v2": "rolled_back"}
    assert r.metrics.rollbacks.labels(trigger="bake")._value.get() == 1
    assert "negative_feedback_ratio_delta" in r.store.events()[0].why


def test_no_data_holds_to_the_deadline_then_keeps_with_an_alert_or_rolls_back(rig):
    r = rig()
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.start("v2")
    r.ctl.drive()
    r.clock.t += 299
    assert r.ctl.step(snap(v2={"events": 10})).phase == "baking"
    r.clock.t += 2
    assert r.ctl.step(snap()).phase == "rebaselining" and r.metrics.rollout_inconclusive._value.get() == 1
    assert events(r.store)[-1] == "bake-inconclusive" and r.ctl.step().phase == "done"


def test_no_data_rollback_when_configured(rig):
    r = rig(bake={"deadline_s": 5, "on_no_data": "rollback"})
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.start("v2")
    r.ctl.drive()
    r.clock.t += 6
    assert r.ctl.step().phase == "rolled_back" and r.ctl.production() == "v1"


def test_canary_steps_shift_weights_and_compare_both_live_windows(rig):
    r = rig(canary_steps=[0.25, 0.5], step_s=30)
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.start("v2")
    assert r.ctl.drive().phase == "canary"
    assert r.store.alias_table()[1]["production"] == {"v2": 0.25, "v1": 0.75}
    def both():
        return snap(v1={}, v2={})
    r.ctl.step(both())
    r.clock.t += 31
    assert r.ctl.step(both()).step == 1 and r.store.alias_table()[1]["production"] == {"v2": 0.5, "v1": 0.5}
    r.clock.t += 1
    r.ctl.step(both())
    r.clock.t += 31
    assert r.ctl.step(both()).phase == "baking" and r.store.alias_table()[1]["production"] == {"v2": 1.0}
    r.ctl.step(snap(v1={}, v2={"distinct": 0.1}))
    assert r.ctl.step(snap(v1={}, v2={"distinct": 0.1})).phase == "rolled_back"


def test_manual_rollback_during_bake_and_after_done(rig):
    r = rig()
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.start("v2")
    r.ctl.drive()
    assert r.ctl.rollback(who="bob", why="users complain") == "v1"
    e = r.store.events()[0]
    assert (e.kind, e.who, e.why) == ("rolled-back", "bob", "users complain")
    r.ctl.register("v3", r.tmp / "v3")
    r.ctl.start("v3")
    r.ctl.drive(lambda: snap(v1={}))
    r.clock.t += 1
    r.ctl.step(snap(v3={}))
    r.clock.t += 61
    assert r.ctl.step(snap(v3={})).phase == "rebaselining" and r.ctl.step().phase == "done"
    r.clock.t += 11
    r.ctl.reconcile()
    assert "v1" not in r.vllm.loaded
    assert r.ctl.rollback(who="bob") == "v1" and "v1" in r.vllm.loaded  # reloaded before the flip
    assert r.ctl.production() == "v1" and r.store.adapter("v3").state == "rolled_back"
    with pytest.raises(RolloutError, match="nothing to roll back"):
        r.ctl.rollback(who="bob")


def test_restart_mid_rollout_resumes_from_the_persisted_phase(rig, tmp_path):
    r = rig()
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.start("v2")
    r.ctl.step()  # loaded; "crash" before evaluating
    # a new process: new controller on the same store; the old holder's lease must run out first
    other = RolloutController(r.ctl.settings, r.store, clients=[r.vllm], evaluator=ScriptedEvaluator(tmp_path),
                              clock=r.clock)
    assert other.step().phase == "evaluating"  # held by the first process
    r.clock.t += r.ctl.cfg.lease_s + 1
    assert other.drive().phase == "baking"
    assert r.vllm.calls.count(("load", "v2")) == 1


def test_a_rollout_moved_by_another_process_is_not_overwritten(rig):
    r = rig()
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.start("v2")
    r.ctl.drive()
    stale = r.store.rollouts(1)[0]
    r.ctl.rollback(who="bob")
    with pytest.raises(RolloutError, match="another process"):
        r.ctl._move(stale, "baking", "bake-measured", detail={"measured": True})
    assert r.store.rollouts(1)[0].phase == "rolled_back"


def test_reconcile_reloads_what_aliases_need_after_a_vllm_restart(rig):
    r = rig()
    r.vllm.loaded.clear()
    assert r.ctl.reconcile()["loaded"] == ["v1"] and "v1" in r.vllm.loaded


def test_bake_checks_measure_only_what_both_sides_have():
    cfg = Bake(min_events=10, min_feedback=5)
    assert bake_checks({"events": 5}, {}, cfg) is None
    new = live_signals(snap(a={"feedback": 3}).adapters["a"])
    prev = live_signals(snap(b={}).adapters["b"])
    names = {g.name for g in bake_checks(new, prev, cfg)}
    assert names == {"error_ratio_delta", "refusal_rate_delta", "empty_rate_delta", "distinct2_ratio", "latency_ratio"}
    slow = live_signals(snap(a={"latency": 400.0}).adapters["a"])
    assert [g.name for g in bake_checks(slow, prev, cfg) if not g.passed] == ["latency_ratio"]


def test_register_refuses_reuse_and_non_adapters(rig, tmp_path):
    r = rig()
    with pytest.raises(RolloutError, match="never reused"):
        r.ctl.register("v1", r.tmp / "v1")
    with pytest.raises(RolloutError, match="adapter_config.json"):
        r.ctl.register("v9", Path(tmp_path))


def test_share_checks_allow_for_sample_size():
    cfg = Bake(min_events=10, min_feedback=5)
    prev = {"events": 300, "feedback_count": 30, "negative_feedback_ratio": 0.0}
    few = {"events": 50, "feedback_count": 5, "negative_feedback_ratio": 0.2}  # one unhappy user of five
    (gate,) = [g for g in bake_checks(few, prev, cfg) if g.name == "negative_feedback_ratio_delta"]
    assert gate.passed and gate.bound > cfg.negative_feedback_max_delta
    many = {"events": 500, "feedback_count": 100, "negative_feedback_ratio": 0.3}
    (gate,) = [g for g in bake_checks(many, prev, cfg) if g.name == "negative_feedback_ratio_delta"]
    assert not gate.passed and "for sample size" in gate.detail


def test_one_rollout_at_a_time_even_between_processes(rig, tmp_path):
    r = rig()
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.register("v3", r.tmp / "v3")
    other = RolloutController(r.ctl.settings, r.store, clients=[r.vllm], evaluator=ScriptedEvaluator(tmp_path),
                              clock=r.clock)
    other.active = lambda: None  # as if it read the table just before the first process started its rollout
    r.ctl.start("v2")
    with pytest.raises(RolloutError, match="in progress"):
        other.start("v3")
    assert [x.candidate for x in r.store.rollouts()] == ["v2"]


# -- a rollback is never lost; every phase is bounded; a first version is baked ------------------------------------------
class TwoServers:
    """A second scripted server beside the rig's, which the test can take down."""

    def __init__(self, r):
        self.a, self.b = r.vllm, ScriptedVLLM()
        self.b.loaded = dict(self.a.loaded)
        r.ctl._clients = [self.a, self.b]


def test_a_failed_bake_flips_production_back_at_once_with_a_server_down_and_reloads_it_when_back(rig):
    r = rig()
    servers = TwoServers(r)
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.start("v2")
    r.ctl.drive(lambda: snap(v1={}))
    servers.b.down = True
    servers.b.loaded.pop("v1")  # restarted while down: it lost every adapter
    r.ctl.step(snap(v2={"errors": 0.5}))
    back = r.ctl.step(snap(v2={"errors": 0.5}))
    assert back.phase == "rolled_back" and r.ctl.production() == "v1"  # not held by the unreachable server
    assert r.ctl.step(snap(v2={})) is None  # the bake stops judging: nothing in progress
    r.ctl.reconcile()  # still down: reconcile says so and goes on
    servers.b.down = False
    assert "v1" in r.ctl.reconcile()["loaded"] and "v1" in servers.b.loaded


def test_a_first_version_skips_the_canary_and_is_baked_against_absolute_bounds(rig, tmp_path):
    settings = Settings.model_validate({"rollout": {"canary_steps": [0.1, 0.5], "bake": {"duration_s": 60,
                                        "min_events": 50, "failed_checks": 2}},
                                        "daemon": {"state_dir": str(tmp_path / "fresh")}})
    store, vllm = SqliteStore(tmp_path / "fresh.db"), ScriptedVLLM()
    ctl = RolloutController(settings, store, clients=[vllm], evaluator=ScriptedEvaluator(tmp_path), clock=Clock())
    (tmp_path / "first").mkdir()
    (tmp_path / "first" / "adapter_config.json").write_text("{}")
    ctl.register("first", tmp_path / "first")
    ctl.start("first")
    r = ctl.drive()
    assert r.phase == "baking" and store.alias_table()[1] == {"production": {"first": 1.0}}  # no canary: no previous
    assert ctl.step(snap(first={"errors": 0.3})).failed_checks == 1
    back = ctl.step(snap(first={"errors": 0.3}))
    assert back.phase == "rolled_back" and "error_ratio" in store.events()[0].why
    assert store.alias_table()[1] == {"production": {"base": 1.0}}  # the base model, never nothing


def test_an_evaluation_that_raises_anywhere_is_a_failed_evaluation_recorded_once(rig, tmp_path):
    r = rig()

    class Broken(ScriptedEvaluator):
        def run(self, *args, **kwargs):
            raise OSError("the report directory is read-only")

    r.ctl._evaluator = Broken(tmp_path)
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.start("v2")
    done = r.ctl.drive()
    assert done.phase == "rejected" and r.store.adapter("v2").state == "rejected"
    assert events(r.store).count("gate-failed") == 1 and "OSError" in r.store.events()[0].why
    r.ctl._evaluator = None  # a golden set that cannot be read raises while the evaluator is made
    (tmp_path / "golden.jsonl").write_text("{not json\n")
    r.ctl.settings = Settings.model_validate({**r.ctl.settings.model_dump(mode="json"),
                                              "retrain": {"golden_set": str(tmp_path / "golden.jsonl")}})
    r.ctl.register("v3", r.tmp / "v3")
    r.ctl.start("v3")
    assert r.ctl.drive().phase == "rejected" and events(r.store).count("gate-failed") == 2


def test_every_phase_has_a_deadline(rig):
    from driftwatch.control.rollout import ACTIVE, DEADLINES, deadline_s

    assert tuple(DEADLINES) == ACTIVE
    r = rig(evaluate_deadline_s=100, warm_deadline_s=50, load_deadline_s=20)
    jobs = Never()
    r.ctl.jobs = jobs
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.start("v2")
    r.vllm.down = True
    assert r.ctl.step().phase == "loading"
    r.clock.t += deadline_s(r.ctl.settings, "loading")
    assert r.ctl.step().phase == "failed"
    r.vllm.down = False
    r.ctl.register("v3", r.tmp / "v3")
    r.ctl.start("v3")
    assert r.ctl.step().phase == "evaluating"
    assert r.ctl.step().phase == "evaluating"  # the evaluation hangs
    r.clock.t += 100
    rejected = r.ctl.step()
    assert rejected.phase == "rejected" and "evaluate_deadline_s" in r.store.events()[0].why
    assert jobs.cancelled == [f"evaluate-{rejected.id}"]


class Never:
    """Jobs that start and never finish (a hung evaluation)."""

    def __init__(self):
        self.cancelled = []

    def submit(self, key, job):
        return True

    def running(self, key):
        return True

    def cancel(self, key):
        self.cancelled.append(key)


def test_a_bake_at_its_failed_check_threshold_is_rolled_back_even_if_the_rollback_was_not_committed(rig):
    """Finding 2: the failed check was committed, the rollback was not (a store error, a kill); the next snapshot
    passed, and the bake went on with failed_checks at its threshold."""
    r = rig()
    r.ctl.register("v2", r.tmp / "v2")
    r.ctl.start("v2")
    r.ctl.drive(lambda: snap(v1={}))
    baking = r.store.rollouts(1)[0]
    from dataclasses import replace as _replace

    r.store.commit(r.clock(), "test", "check-failed", "v2", rollout=_replace(baking, failed_checks=2),
                   expect_phase="baking")
    assert r.ctl.step(snap(v2={})).phase == "rolled_back" and r.ctl.production() == "v1"


def offering(tmp, names, listed_only=()):
    """A run's directory as the trainer leaves it: its best adapter, the other candidates and the manifest."""
    import json

    run = tmp / "run-7"
    for name in ("adapter", *(f"candidates/{n}" for n in names)):
        (run / name).mkdir(parents=True, exist_ok=True)
        (run / name / "adapter_config.json").write_text("{}")
    (run / "manifest.json").write_text(json.dumps({"status": "succeeded", "candidates": [
        {"name": n} for n in (*names, *listed_only)]}))
    return run / "adapter"


def test_a_review_loads_the_runs_other_candidates_and_the_chosen_one_goes_on(rig):
    """Issue 26: the run's siblings (registered <version>--<name>, loaded beside it) are judged in the same
    evaluation; the one it chooses becomes the rollout's candidate, the others are rejected (and unloaded)."""
    r = rig()
    r.ctl.register("v2", offering(r.tmp, ["a50", "step-3"], listed_only=["a25"]), run_id="run-7", parent="v1")
    r.vllm.reject.add("v2--step-3")  # vLLM refuses one (a rank above --max-lora-rank): left out of the review
    r.ctl.evaluator().choose = "v2--a50"
    r.ctl.start("v2")
    assert r.ctl.step().phase == "evaluating" and set(r.vllm.loaded) == {"v1", "v2", "v2--a50"}
    moved = r.ctl.step()
    assert moved.phase == "warming" and moved.candidate == "v2--a50"
    assert r.ctl.evaluator().siblings == [("v2--a50",)]  # "a25" was listed, never written: not a candidate
    states = {a.version: a.state for a in r.store.adapters()}
    assert states == {"v1": "production", "v2": "rejected", "v2--a50": "candidate", "v2--step-3": "rejected"}
    assert r.store.adapter("v2--a50").run_id == "run-7" and r.store.adapter("v2--a50").parent == "v1"
    assert "the review chose v2--a50 over v2" in r.store.events()[0].why and r.store.events()[0].version == "v2--a50"
    assert r.store.evaluations("v2--a50")[0].passed  # a passed review: under the one it chose
    assert r.ctl.drive(lambda: snap(v1={})).phase == "baking"
    assert r.store.alias_table()[1]["production"] == {"v2--a50": 1.0}
    r.clock.t += 11
    assert "v2" in r.ctl.reconcile()["unloaded"] and "v2" not in r.vllm.loaded


def test_a_failed_review_rejects_every_candidate_of_the_run(rig):
    r = rig()
    r.ctl.register("v2", offering(r.tmp, ["a50", "a25"]), run_id="run-7", parent="v1")
    r.ctl.register("v2--canary", r.tmp / "v3")  # named like a sibling by a person: not the run's, never reviewed
    r.ctl.evaluator().passing = False
    r.ctl.start("v2")
    assert r.ctl.drive().phase == "rejected"
    assert [set(x) for x in r.ctl.evaluator().siblings] == [{"v2--a25", "v2--a50"}]
    assert {a.version: a.state for a in r.store.adapters()} == {"v1": "production", "v2": "rejected",
                                                                  "v2--a50": "rejected", "v2--a25": "rejected",
                                                                  "v2--canary": "candidate"}
    assert r.store.evaluations("v2")[0].passed is False  # a failed review is recorded under the run's candidate
    assert r.store.alias_table()[1] == {"production": {"v1": 1.0}}


def test_a_run_manifest_offers_only_the_trainers_candidate_names(tmp_path):
    import json

    from driftwatch.control.rollout import offered
    from driftwatch.state.registry import AdapterRecord

    adapter = offering(tmp_path, ["a50"])
    record = AdapterRecord("v2", str(adapter), "run-7", None, "candidate", 0.0, 0.0)
    assert offered(record) == {"v2--a50": str(tmp_path / "run-7" / "candidates" / "a50")}
    for manifest in ([1, 2], {"candidates": "a50"}, {"candidates": [{"name": "../../v1"}, {"name": 5}, "a50"]}):
        (tmp_path / "run-7" / "manifest.json").write_text(json.dumps(manifest))
        assert offered(record) == {}
    (tmp_path / "run-7" / "manifest.json").write_text("{not json")
    assert offered(record) == {}
