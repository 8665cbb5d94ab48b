"""The control loop, tick by tick: a fake clock, jobs that run when the test says (ManualJobs), a scripted vLLM and
evaluator, a stand-in for training; the real monitor fed by its own ingest thread, the real policy, store and
rollout controller. What happens when drift trips, step by step, is what these tests read like."""

import queue
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from driftwatch.config import Settings
from driftwatch.control.policy import Policy
from driftwatch.control.reconciler import Reconciler
from driftwatch.control.rollout import RolloutController
from driftwatch.metrics import Metrics
from driftwatch.monitor.monitor import Monitor, MonitorSettings, build_profile
from driftwatch.retrain.service import RetrainService
from driftwatch.state.store import SqliteStore

from .fakes import ManualJobs
from .test_monitor import Clock, inference, stream
from .test_rollout import ScriptedEvaluator, ScriptedVLLM

SHIFT = {"routes": {"qa": 0.05, "summarize": 0.8, "code": 0.05, "chat": 0.05, "extract": 0.05}}


class IngestThread:
    """The daemon's ingest loop as the monitor sees it: the only thread that writes windows. ``feed`` returns once
    the items are in their windows; between feeds the thread takes its step (publishing when a reader asked)."""

    def __init__(self, monitor):
        self.monitor, self.items, self.stop = monitor, queue.Queue(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                items = self.items.get(timeout=0.005)
            except queue.Empty:
                items = None
            if items is not None:
                self.monitor.observe(items)
                self.items.task_done()
            self.monitor.maintain()

    def feed(self, items):
        self.items.put(items)
        self.items.join()

    def close(self):
        self.stop.set()
        self.thread.join()


class Trains(RetrainService):
    """The retrain service with training replaced by a stand-in that writes an adapter directory at once."""

    def _run(self, record, focus_routes, cancel):
        out = self.runs_dir / record.id
        (out / "adapter").mkdir(parents=True)
        (out / "adapter" / "adapter_config.json").write_text("{}")
        return replace(record, status="succeeded", output=str(out), detail={**record.detail, "stand_in": True})


@pytest.fixture(scope="module")
def reference():
    return build_profile(inference(stream(3000, seed=300, feedback_rate=0)))


@pytest.fixture
def loop(tmp_path, reference):
    made = []

    def make(service=None, **overrides):
        doc = {"daemon": {"state_dir": str(tmp_path / "state")},
               "monitor": {"check_interval_s": 10, "min_samples": 100},
               "policy": {"rules": [{"name": "input-drift", "signal": "input_drift", "threshold": 1, "clear": 0.5,
                                     "min_samples": 200}], "cooldown_s": 3600},
               "retrain": {"base_model": str(tmp_path), "golden_set": str(tmp_path / "golden.jsonl")},
               "rollout": {"bake": {"duration_s": 60, "deadline_s": 300, "min_events": 50}, "lease_s": 30,
                           "rebaseline_deadline_s": 120}}
        for section, values in overrides.items():
            doc[section] = {**doc.get(section, {}), **values}
        settings = Settings.model_validate(doc)
        clock, jobs, store, metrics = Clock(), ManualJobs(), SqliteStore(tmp_path / "state.db"), Metrics()
        registry = SqliteStore(tmp_path / "registry.db")  # its own database, as with gateway.store_path
        monitor = Monitor(reference, MonitorSettings(window_events=400, min_samples=100, report_sample=400),
                          clock=clock)
        vllm = ScriptedVLLM()
        rollouts = RolloutController(settings, registry, metrics=metrics, clients=[vllm], state=store,
                                     evaluator=ScriptedEvaluator(tmp_path), jobs=jobs, monitor=monitor, clock=clock)
        control = Reconciler(settings, store=store, registry=registry, metrics=metrics, monitor=monitor,
                             policy=Policy(settings.policy.rules, store, metrics, cooldown_s=3600,
                                           max_attempts=settings.policy.max_attempts,
                                           min_new_examples=settings.retrain.min_new_examples), rollouts=rollouts,
                             retrain=(service or Trains)(settings.retrain, settings.daemon.state_dir, store, runner=None,
                                                         clock=clock),
                             jobs=jobs, clock=clock)
        registry.set_aliases({"production": {"support-v1": 1.0}}, clock(), who="test", why="the incumbent")
        ingest = IngestThread(monitor)
        made.append(ingest)
        from types import SimpleNamespace

        return SimpleNamespace(control=control, store=store, registry=registry, jobs=jobs, clock=clock, vllm=vllm, ingest=ingest,
                               monitor=monitor, rollouts=rollouts, settings=settings, metrics=metrics)

    yield make
    for ingest in made:
        ingest.close()


def traffic(n, seed, adapter="support-v1", **shift):
    return stream(n, seed=seed, feedback_rate=0, adapters={adapter: 1.0}, **shift)


def tick(r, seconds=0.0):
    r.clock.t += seconds
    r.control.tick()
    return r.registry.rollouts(1)[0] if r.registry.rollouts(1) else None


def kinds(store, version):
    return [e.kind for e in reversed(store.events(version))]


def drift_to_a_candidate_in_evaluation(r):
    """Drift trips: the decision queues a run, the run trains, its candidate is registered and loaded, and its
    evaluation job starts. Each step is one tick."""
    r.ingest.feed(traffic(400, 301))
    assert tick(r) is None and r.store.decisions() == []  # stationary: nothing decided
    r.ingest.feed(traffic(400, 302, **SHIFT))
    assert tick(r, 10) is None  # the check is due: the shift trips the rule
    (d,) = r.store.decisions()
    (run,) = r.store.runs()
    assert (d.action, d.adapter, d.slot) == ("retrain", "support-v1", "production")
    assert (run.status, run.decision_id) == ("queued", d.id) and f"evidence-{d.id}" in r.jobs.pending
    tick(r)  # the queued run's training job starts
    assert f"train-{run.id}" in r.jobs.pending and r.store.runs()[0].status == "queued"
    r.jobs.run(f"train-{run.id}")  # the job records its result in the store
    run = r.store.runs()[0]
    assert run.status == "succeeded"
    rollout = tick(r)  # registered as a candidate, its rollout started, and loaded on vLLM
    assert rollout.candidate == f"ft-{run.id}" and rollout.phase == "evaluating" and rollout.previous == "support-v1"
    assert r.vllm.loaded == {rollout.candidate: str(Path(run.output) / "adapter")}
    assert tick(r).phase == "evaluating" and f"evaluate-{rollout.id}" in r.jobs.pending  # the job runs meanwhile
    assert tick(r).phase == "evaluating" and r.registry.evaluation(f"rollout-{rollout.id}-{rollout.candidate}") is None
    return rollout


def test_a_rollback_asked_for_during_an_evaluation_rejects_the_candidate_within_one_tick(loop):
    r = loop()
    rollout = drift_to_a_candidate_in_evaluation(r)
    r.store.add_request(r.clock(), "rollback", "users complain", "ana")
    after = tick(r)  # one tick
    assert after.phase == "rejected" and r.registry.adapter(rollout.candidate).state == "rejected"
    assert f"evaluate-{rollout.id}" in r.jobs.cancelled and r.store.requests()[0].status == "done"
    assert r.registry.alias_table()[1] == {"production": {"support-v1": 1.0}}  # production as it was
    assert kinds(r.registry, rollout.candidate)[-1] == "cancelled"
    r.jobs.run(f"evaluate-{rollout.id}")  # the evaluation ends later: cancelled, it records nothing
    assert r.registry.evaluation(f"rollout-{rollout.id}-{rollout.candidate}") is None
    assert tick(r).phase == "rejected"


def test_drift_to_a_baked_promotion_that_is_re_baselined_and_not_retrained_for_that_drift(loop, reference):
    r = loop()
    rollout = drift_to_a_candidate_in_evaluation(r)
    r.jobs.run(f"evaluate-{rollout.id}")
    assert tick(r).phase == "warming"  # the gate passed
    baking = tick(r)  # warmed, and production flipped to the candidate
    assert baking.phase == "baking" and r.registry.alias_table()[1]["production"] == {rollout.candidate: 1.0}
    r.ingest.feed(traffic(400, 303, adapter=rollout.candidate, **SHIFT))  # the drifted traffic, now on the candidate
    assert tick(r, 10).phase == "baking"  # a check: the bake's first measurement
    assert tick(r, 61).phase == "rebaselining"  # measured for the bake's duration: passed
    done = tick(r)  # the candidate's window holds 400 rows >= monitor.min_samples: the new reference
    assert done.phase == "done" and kinds(r.registry, rollout.candidate)[-2:] == ["bake-passed", "rebaselined"]
    event = r.registry.events(rollout.candidate, limit=1)[0]
    assert Path(event.detail["reference"]).exists() and "decision #1" in event.why
    r.ingest.feed([])  # the ingest thread takes up the new reference at its next step
    taken = r.monitor.latest().reference.content_hash
    assert taken.startswith(Path(event.detail["reference"]).stem) and taken != reference.content_hash
    r.ingest.feed(traffic(400, 304, adapter=rollout.candidate, **SHIFT))  # more of the answered drift
    tick(r, 10)
    assert not r.control.snapshot.adapters[rollout.candidate].drifted_features  # answered: no drift now
    decided = [(d.action, d.adapter) for d in reversed(r.store.decisions())]
    assert decided == [("retrain", "support-v1"),  # the drift
                       ("hold", rollout.candidate),  # its window against the old reference, while it baked
                       ("resolved", rollout.candidate)]  # against the new one: no second retrain for one drift
    assert "rollout 1 of" in r.store.decisions()[1].reasons[-1]


def test_a_re_baseline_without_enough_rows_waits_then_is_skipped_and_recorded(loop):
    r = loop(monitor={"check_interval_s": 10})
    rollout = drift_to_a_candidate_in_evaluation(r)
    r.jobs.run(f"evaluate-{rollout.id}")
    tick(r)
    tick(r)
    r.ingest.feed(traffic(60, 305, adapter=rollout.candidate, **SHIFT))  # enough to bake, too few to be a reference
    tick(r, 10)
    assert tick(r, 61).phase == "rebaselining"
    assert tick(r, 60).phase == "rebaselining"  # waits for rows, up to rollout.rebaseline_deadline_s
    skipped = tick(r, 61)
    assert skipped.phase == "done" and kinds(r.registry, rollout.candidate)[-1] == "rebaseline-skipped"
    assert "60 sampled rows, fewer than monitor.min_samples (100)" in r.registry.events(rollout.candidate, limit=1)[0].why
    # the promoted version is still judged against the old reference, so it drifts; its slot cools down: held
    r.ingest.feed(traffic(400, 306, adapter=rollout.candidate, **SHIFT))
    tick(r, 10)
    held = r.store.decisions()[0]
    assert (held.action, held.adapter, held.slot) == ("hold", rollout.candidate, "production")
    assert "serving slot 'production' cools down" in held.reasons[-1]


def test_a_manual_retrain_is_a_request_and_one_run_at_a_time(loop):
    r = loop()
    r.store.add_request(r.clock(), "retrain", "new product line", "ana", "support-v1", {"rule": "manual"})
    tick(r)
    (request,) = r.store.requests()
    (run,) = r.store.runs()
    assert request.status == "done" and request.outcome == {"action": "retrain", "decision_id": 1, "run_id": run.id}
    r.store.add_request(r.clock(), "retrain", "again", "ana", "support-v1", {"rule": "manual"})
    tick(r)
    again = r.store.requests()[0]
    assert again.status == "refused" and f"retrain run {run.id} is queued" in again.outcome["error"]


def test_a_new_leader_starts_what_was_queued_and_fails_what_was_running(loop):
    r = loop()
    from driftwatch.state.store import RunRecord

    r.store.save_run(RunRecord("old-training", 1, "support-v1", "training", None, None, None, 1.0, None, {}))
    r.store.save_run(RunRecord("old-queued", 2, "support-v1", "queued", None, None, None, 2.0, None, {}))
    tick(r)  # this process runs no job for either: the training one was its former leader's
    runs = {x.id: x for x in r.store.runs()}
    assert runs["old-training"].status == "failed" and "interrupted" in runs["old-training"].reason
    tick(r)
    assert "train-old-queued" in r.jobs.pending


def test_pause_and_resume_are_requests(loop):
    r = loop()
    r.store.add_request(r.clock(), "pause", "incident 42", "ana")
    tick(r)
    assert r.control.policy.paused and r.store.requests()[0].outcome == {"paused": True}
    r.ingest.feed(traffic(400, 307, **SHIFT))
    tick(r, 10)
    assert [(d.action, "paused" in d.reasons[-1]) for d in r.store.decisions()] == [("hold", True)]


def test_a_rollback_through_the_api_during_an_evaluation_is_acted_on_at_once(loop):
    """The same, through the control API's path (a request row, the loop woken) with the tick thread running: the
    call returns once the loop has rejected the candidate; production never moved."""
    import time

    r = loop(rollout={"tick_s": 30})  # without the wake-up, the next tick would come in 30 s
    rollout = drift_to_a_candidate_in_evaluation(r)
    r.control.start()
    try:
        t0 = time.monotonic()
        production = r.control.rollback("users complain", "ana")
        elapsed = time.monotonic() - t0
    finally:
        r.control.stop()
    assert production == "support-v1" and r.registry.rollouts(1)[0].phase == "rejected"
    assert elapsed < 15, elapsed  # woken at once: not the next of the ticks 30 s apart
    assert r.registry.alias_table()[1] == {"production": {"support-v1": 1.0}}


# -- level-triggered retrains: a firing rule is pursued on every check ---------------------------------------------------
class Fails(RetrainService):
    """Training that always fails (a broken base model, say)."""

    def _run(self, record, focus_routes, cancel):
        return replace(record, status="failed", reason="stand-in: training failed")


def harvest(r, n, seed):
    from driftwatch.state.store import HarvestedExample

    r.store.add_examples([HarvestedExample(f"req-{seed}-{i}", "correction", r.clock(), "support-v1", "qa",
                                           f"question {seed} {i}", "an answer") for i in range(n)])


def check(r, seconds, seed):
    """Drifted traffic goes on, and the check is due: returns the decisions it recorded, oldest first."""
    before = {d.id for d in r.store.decisions()}
    r.clock.t += seconds
    r.ingest.feed(traffic(400, seed, **SHIFT))
    tick(r)
    return [(d.action, d.reasons[-1]) for d in reversed(r.store.decisions()) if d.id not in before]


def test_a_retrain_held_by_the_pause_is_decided_once_the_pause_is_lifted(loop):
    r = loop()
    r.store.add_request(r.clock(), "pause", "incident 42", "ana")
    tick(r)
    assert [a for a, _ in check(r, 10, 310)] == ["hold"]
    assert check(r, 10, 311) == []  # still paused: the same hold is not recorded again
    (rule,) = [x for x in r.control.status()["rules"] if x["state"] == "firing"]
    assert rule["waiting"]["kind"] == "paused" and "driftwatch resume" in rule["waiting"]["reason"]
    r.store.add_request(r.clock(), "resume", "incident over", "ana")
    (decided,) = check(r, 10, 312)  # the drift persists: the rule asks again, not only when it starts firing
    assert decided[0] == "retrain" and r.store.runs()[0].status == "queued"


def test_a_failed_run_is_retried_after_its_cooldown_with_new_data_then_the_slot_is_stuck(loop):
    r = loop(service=Fails, policy={"max_attempts": 2}, retrain={"min_new_examples": 5})
    first = check(r, 10, 320)
    assert [a for a, _ in first] == ["retrain"]
    tick(r)
    r.jobs.run(f"train-{r.store.runs()[0].id}")
    assert r.store.runs()[0].status == "failed"
    (held,) = check(r, 10, 321)  # the attempt ended without a promotion: the slot cools down from its end
    assert held[0] == "hold" and "cools down until" in held[1] and "(in 1 h 0 min)" in held[1]
    (held,) = check(r, 3600, 322)  # cooled down, but nothing new was harvested: the same data, the same candidate
    assert held[0] == "hold" and "0 examples harvested since attempt" in held[1]
    (rule,) = [x for x in r.control.status()["rules"] if x["state"] == "firing"]
    assert rule["waiting"]["kind"] == "new-data" and rule["waiting"]["attempts"] == 1
    harvest(r, 5, 1)
    (retried,) = check(r, 10, 323)
    assert retried[0] == "retrain" and "attempt 2 of 2" in retried[1]
    tick(r)
    r.jobs.run(f"train-{r.store.runs()[0].id}")
    harvest(r, 5, 2)
    (stuck,) = check(r, 10, 324)  # the second attempt ended without a promotion: no third
    assert stuck[0] == "hold" and "stuck: 2 consecutive attempts ended without a promotion" in stuck[1]
    assert r.metrics.registry.get_sample_value("driftwatch_retrain_stuck", {"slot": "production"}) == 1
    assert check(r, 3600, 326) == []  # stuck says so once, and stays
    r.store.add_request(r.clock(), "resume", "fixed the base model", "ana")  # a person resets it
    (again,) = check(r, 10, 327)
    assert again[0] == "retrain"
    assert r.metrics.registry.get_sample_value("driftwatch_retrain_stuck", {"slot": "production"}) == 0


def test_a_promotion_answers_a_firing_rule(loop):
    r = loop()
    rollout = drift_to_a_candidate_in_evaluation(r)
    r.jobs.run(f"evaluate-{rollout.id}")
    tick(r)
    tick(r)
    r.ingest.feed(traffic(400, 330, adapter=rollout.candidate, **SHIFT))
    tick(r, 10)
    tick(r, 61)
    assert tick(r).phase == "done"
    harvest(r, 50, 3)
    # the old version's rule is still firing (the unshifted mix drifts from the new reference): its decision was
    # answered by the promotion, so past every cooldown and with new data it is not retrained again
    r.clock.t += 7200
    r.ingest.feed(traffic(400, 331))
    tick(r)
    assert r.control.policy.state("input-drift", "support-v1").state == "firing"
    assert [d.action for d in r.store.decisions() if d.adapter == "support-v1"] == ["retrain"]


def test_a_run_that_finishes_while_the_loop_looks_is_not_marked_interrupted(loop):
    """Finding 5: the loop read the runs, then asked whether the job runs; a job that finished in between was
    marked failed ('interrupted') over its real success."""
    r = loop()
    r.store.add_request(r.clock(), "retrain", "new product line", "ana", "support-v1", {"rule": "manual"})
    tick(r)
    tick(r)  # its training job starts
    (run,) = r.store.runs()
    r.store.save_run(replace(run, status="training"))  # the job is under way
    jobs = r.jobs

    class FinishesWhenAsked:
        def __getattr__(self, name):
            return getattr(jobs, name)

        def running(self, key):
            if key in jobs.pending:
                jobs.run(key)  # it finishes right now, between the loop's read and this question
            return False

    r.control.jobs = FinishesWhenAsked()
    tick(r)
    assert r.store.run(run.id).status == "succeeded"


def test_a_run_past_retrain_timeout_is_timed_out_and_its_job_cancelled(loop):
    r = loop(retrain={"timeout_s": 600})
    r.store.add_request(r.clock(), "retrain", "new product line", "ana", "support-v1", {"rule": "manual"})
    tick(r)
    tick(r)
    (run,) = r.store.runs()
    tick(r, 599)
    assert r.store.run(run.id).status == "queued"
    tick(r, 1)
    assert r.store.run(run.id).status == "timed_out" and r.jobs.cancelled == [f"train-{run.id}"]
    r.jobs.run(f"train-{run.id}")  # the job stops later and would record its own outcome: the time-out stays
    assert r.store.run(run.id).status == "timed_out"


def collected(r, prompts, route):
    from driftwatch.state.store import HarvestedExample

    r.store.add_examples([HarvestedExample(f"req-c-{r.clock()}-{i}", "correction", r.clock(), "support-v1", route, p,
                                           "an answer") for i, p in enumerate(prompts)])


DISTINCT = ["Summarize the outage report for the billing team.", "Give me the gist of this refund thread.",
            "Condense the meeting notes about the printer fleet.", "Shorten this complaint about late deliveries.",
            "What are the key points of the warehouse audit?"]


def test_an_automatic_retrain_collects_until_the_harvest_is_enough_then_trains(loop):
    """Issue 26: the decision came on the first window, and the run trained at once on 32 examples (~4 epochs of a
    tiny set). Now it collects until the harvest meets the gates' minimums, counted on harvested prompt clusters."""
    r = loop(retrain={"collect_deadline_s": 600, "collect_check_s": 30,
                      "gates": {"min_unique_prompts": 4, "min_route_examples": 2}})
    assert [a for a, _ in check(r, 10, 340)] == ["retrain"]
    (run,) = r.store.runs()
    routes = run.detail["focus_routes"]
    assert run.status == "collecting" and routes and f"train-{run.id}" not in r.jobs.pending
    lacking = r.store.run(run.id).detail["lacking"]  # counted on the tick that decided
    assert "0 of 4 unique harvested prompts" in lacking and f"route '{routes[0]}' 0 of 2 examples" in lacking
    assert r.control.status()["runs"][0]["collecting"]["lacking"] == lacking
    assert r.metrics.registry.get_sample_value("driftwatch_retrain_collecting") == 1
    collected(r, DISTINCT[:1] * 3 + ["Summarize the outage report for the billing team!"], routes[0])  # one cluster
    tick(r, 30)
    assert r.store.run(run.id).status == "collecting" and "1 of 4 unique" in r.store.run(run.id).detail["lacking"]
    r.clock.t += 1
    collected(r, DISTINCT[1:], routes[0])
    tick(r, 10)  # counted every collect_check_s only
    assert r.store.run(run.id).status == "collecting"
    tick(r, 19)
    queued = r.store.run(run.id)
    assert queued.status == "queued" and queued.detail["collected"]["unique_prompts"] == 5, queued.detail
    tick(r)
    assert f"train-{run.id}" in r.jobs.pending  # its job starts; retrain.timeout_s counts from the queueing
    assert r.metrics.registry.get_sample_value("driftwatch_retrain_collecting") == 0


def test_a_run_that_never_collects_enough_ends_insufficient_data_and_is_an_attempt(loop):
    r = loop(retrain={"collect_deadline_s": 600, "collect_check_s": 30, "gates": {"min_unique_prompts": 4}})
    assert [a for a, _ in check(r, 10, 350)] == ["retrain"]
    (run,) = r.store.runs()
    collected(r, DISTINCT[:2], "summarize")
    tick(r, 599)
    assert r.store.run(run.id).status == "collecting"
    tick(r, 1)
    done = r.store.run(run.id)
    assert done.status == "insufficient-data" and "2 of 4 unique harvested prompts" in done.reason and done.finished
    assert f"train-{run.id}" not in r.jobs.pending and not (r.settings.daemon.state_dir / "datasets").exists()
    assert r.control._outcome(run.decision_id)[0] == "unpromoted"  # an attempt: the policy's cooldown and retries


def test_a_persons_retrain_does_not_collect_nor_wait_for_a_collecting_run(loop):
    r = loop(retrain={"collect_deadline_s": 600})
    assert [a for a, _ in check(r, 10, 360)] == ["retrain"]
    (collecting,) = r.store.runs()
    r.store.add_request(r.clock(), "retrain", "new product line", "ana", "support-v2", {"rule": "manual"})
    tick(r)
    (manual,) = [x for x in r.store.runs() if x.id != collecting.id]
    assert manual.status == "queued" and r.store.run(collecting.id).status == "collecting"
    tick(r)
    assert f"train-{manual.id}" in r.jobs.pending
    r.jobs.run(f"train-{manual.id}")
    assert r.store.run(manual.id).status == "succeeded"
    assert r.store.run(manual.id).detail["queued_at"] == manual.started  # its queueing, kept through its run
