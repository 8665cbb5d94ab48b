"""Rollout: a candidate adapter reaches production only through the gate, and leaves it when live signals say it
hurts. Flagger's analysis loop, at the level of a LoRA adapter on vLLM.

One rollout at a time, as a row in the registry that moves through phases, one step per call of
:meth:`RolloutController.step` (the reconciler's tick), each phase's step named in :attr:`RolloutController.phases`::

    loading → evaluating → warming → canary (each step) → baking → rebaselining → done
       ↘ failed   ↘ rejected                  ↘ rolled_back ↙

* **loading** — the candidate is loaded on every vLLM server under its own name (a version name is never reused:
  vLLM keeps prefix-cache blocks by name, so reloading a name could serve stale blocks);
* **evaluating** — candidate against the incumbent on vLLM (evaluate/); a failed or errored evaluation rejects it;
* **warming** — a few requests to the candidate, so the first client request does not pay for cold paths;
* **canary** — optional: ``production`` sends a share of traffic to the candidate through alias weights, and the
  bake's checks compare the two adapters' live windows at each step;
* **baking** — ``production`` points to the candidate, ``previous`` to the adapter it replaced (still loaded). The
  candidate's live window is compared with the previous adapter's signals taken at the flip; failed checks are
  counted and roll back at ``rollout.bake.failed_checks``. No data holds, up to ``bake.deadline_s``;
* **rebaselining** — the bake passed (the previous adapter is retired): when the promotion answered input drift,
  the candidate's window becomes the new reference once it holds ``monitor.min_samples`` rows, or the step is
  skipped at ``rollout.rebaseline_deadline_s``; recorded either way (``rebaselined`` | ``rebaseline-skipped``);
* **done**; **rolled_back** — ``production`` points back to the previous adapter.

**Every phase is bounded** (:data:`DEADLINES`, the same table as docs/rollout.md): a phase that outlives its deadline
setting ends with the outcome the table names, at the next tick. A first version (no previous adapter) skips the
canary and bakes against absolute bounds (``bake.error_ratio_max``, ``refusal_max``, ``empty_max``); failing them
sends ``production`` to the base model (``gateway.base_model``), never to nothing. An evaluation that raises, or whose
job ends without a verdict, is a failed evaluation, recorded once.

**A rollback is never lost**: it flips the alias table in the same transaction that ends the bake, so the bake
stops judging at once; loading the version it points back to on a server that lacks it (one that was down) is
:meth:`RolloutController.reconcile`'s, retried on every tick until done.

The evaluation is a job (control/jobs.py): the step starts it and returns; a later step finds its record in the
store and moves on. A rollback by hand during the evaluation rejects the candidate at once and cancels the job.

Every transition is one transaction in the store (alias table, adapter states, the rollout row, the event log), and
every action is idempotent (loading what is loaded, flipping to where it points, unloading what is gone), so a
process killed at any point and restarted repeats the step it was in and goes on. Unloading is left to
:meth:`RolloutController.reconcile`, after ``drain_s``, so requests routed just before a flip still find their
adapter. A process acts on a rollout only while it holds its lease (a crashed holder's lease runs out).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from driftwatch.config import Bake, Settings
from driftwatch.errors import AdapterExists, AdapterNotFound, RolloutError, ServingError, VLLMUnavailable
from driftwatch.evaluate.gates import Gate
from driftwatch.control.jobs import InlineJobs, Jobs
from driftwatch.metrics import Metrics
from driftwatch.monitor.monitor import AdapterSnapshot, Monitor, MonitorSnapshot
from driftwatch.state.registry import ROLLOUT_ACTIVE, AdapterRecord, EvaluationRecord, RolloutRecord
from driftwatch.state.store import SqlStore

log = logging.getLogger(__name__)

ACTIVE = ROLLOUT_ACTIVE  # the phases of a rollout in progress, in order
FINISHED = ("done", "rolled_back", "rejected", "failed")
FLIPPED = ("canary", "baking", "rebaselining")  # production already sends traffic to the candidate
UNSERVED = ("rejected", "retired", "rolled_back")  # adapter states that should not stay loaded
WARM_PROMPT = "Hello"


# phase → (the setting that bounds it, the outcome when it passes); docs/rollout.md has the same table (tested)
DEADLINES = {
    "loading": ("rollout.load_deadline_s", "failed (a server still unreachable); production untouched"),
    "evaluating": ("rollout.evaluate_deadline_s", "rejected (no verdict); the evaluation is cancelled"),
    "warming": ("rollout.warm_deadline_s", "failed (a server still unreachable); production untouched"),
    "canary": ("rollout.bake.deadline_s", "no data: bake.on_no_data (keep, or roll back)"),
    "baking": ("rollout.bake.deadline_s", "no data: bake.on_no_data (keep, or roll back)"),
    "rebaselining": ("rollout.rebaseline_deadline_s", "done; the re-baseline is skipped (recorded)"),
}


def deadline_s(settings: Settings, phase: str) -> float:
    value: object = settings
    for part in DEADLINES[phase][0].split("."):
        value = getattr(value, part)
    return float(value)  # type: ignore[arg-type]


def version_name(run_id: str) -> str:
    return f"ft-{run_id}"


SIBLING = "--"  # a run's other candidate is registered as <version>--<name> (ft-<run>--a50: interpolated, α 0.5)
MAX_SIBLINGS = 7  # retrain.review.candidates is at most 8


def family(version: str) -> str:
    """The version a run registered first, for a candidate the review chose among its siblings."""
    return version.split(SIBLING)[0]


def offered_versions(store, version: str) -> list[str]:
    """The versions the run of ``version`` offered and the registry holds (registered by the loading step)."""
    adapter = store.adapter(version)
    if adapter is None or adapter.run_id is None:
        return []
    return [v for v in offered(adapter) if (a := store.adapter(v)) is not None and a.run_id == adapter.run_id]


def offered(adapter: AdapterRecord) -> dict[str, str]:
    """The other candidates the run of ``adapter`` offered (retrain.review: its manifest's ``candidates``, each in
    ``<run>/candidates/<name>``), by the version each is registered as."""
    run = Path(adapter.path).parent
    try:
        manifest = json.loads((run / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    listed = manifest.get("candidates") if isinstance(manifest, dict) else None
    names = [c.get("name") for c in listed if isinstance(c, dict)] if isinstance(listed, list) else []
    return {f"{adapter.version}{SIBLING}{n}": str(run / "candidates" / n) for n in names[:MAX_SIBLINGS]
            if isinstance(n, str) and re.fullmatch(r"[a-z0-9-]{1,32}", n)  # the trainer's names, nothing else
            and (run / "candidates" / n / "adapter_config.json").is_file()
            and (run / "candidates" / n).resolve().is_relative_to(run.resolve())}  # no link out of the run


# -- bake checks (pure) -------------------------------------------------------------------------------------------------
def live_signals(a: AdapterSnapshot | None) -> dict:
    if a is None:
        return {"events": 0, "feedback_count": 0}
    return {"events": a.window_events, "feedback_count": a.feedback_count, "error_ratio": a.error_ratio,
            "negative_feedback_ratio": a.negative_feedback_ratio, "refusal_rate": a.refusal_rate,
            "empty_rate": a.empty_rate,
            "distinct_2": a.distinct_2, "latency_mean_ms": a.latency_mean_ms}


def _signals(snapshot: MonitorSnapshot | None, version: str | None) -> dict:
    """A version's live signals in the snapshot; {} with no snapshot or no version."""
    return live_signals(snapshot.adapters.get(version)) if snapshot is not None and version else {}


def _noise(new: dict, prev: dict, key: str, count: str, z: float = 1.645) -> float:
    """How far two shares of small samples differ by chance: z (one-sided 95 %) standard errors of their difference.
    Added to a share check's bound, so that a handful of events cannot roll an adapter back."""
    n1, n2 = new.get(count) or 0, prev.get(count) or 0
    if not n1 or not n2:
        return 0.0
    p = (new[key] * n1 + prev[key] * n2) / (n1 + n2)
    return z * math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))


def first_checks(new: dict, cfg: Bake) -> list[Gate] | None:
    """A first version's live signals against absolute bounds (nothing to compare with). None: no data yet."""
    if new.get("events", 0) < cfg.min_events:
        return None
    return [Gate(key, new[key], bound, "<=", f"{new[key]:.3g} of {new['events']} requests (absolute bound: a first "
                 "version)")
            for key, bound in (("error_ratio", cfg.error_ratio_max), ("refusal_rate", cfg.refusal_max),
                               ("empty_rate", cfg.empty_max)) if new.get(key) is not None]


def bake_checks(new: dict, prev: dict, cfg: Bake) -> list[Gate] | None:
    """The new adapter's live signals against the previous adapter's. None: no data yet (the new adapter has served
    fewer than ``min_events`` requests). Otherwise every check both sides can be measured on. A share's bound is its
    configured delta plus the chance difference at the two sample sizes."""
    if new.get("events", 0) < cfg.min_events:
        return None
    gates = []

    def both(key: str) -> bool:
        return new.get(key) is not None and prev.get(key) is not None

    for key, bound in (("error_ratio", cfg.error_ratio_max_delta), ("refusal_rate", cfg.refusal_max_delta),
                       ("empty_rate", cfg.empty_max_delta),
                       ("negative_feedback_ratio", cfg.negative_feedback_max_delta)):
        if key == "negative_feedback_ratio" and min(new["feedback_count"], prev.get("feedback_count", 0)) < cfg.min_feedback:
            continue
        if both(key):
            count = "feedback_count" if key == "negative_feedback_ratio" else "events"
            noise = _noise(new, prev, key, count)
            gates.append(Gate(f"{key}_delta", new[key] - prev[key], round(bound + noise, 4), "<=",
                              f"new {new[key]:.3g} of {new[count]} vs previous {prev[key]:.3g} of {prev[count]} "
                              f"(bound {bound:g} + {noise:.3g} for sample size)"))
    if both("distinct_2") and prev["distinct_2"] > 0:
        gates.append(Gate("distinct2_ratio", new["distinct_2"] / prev["distinct_2"], cfg.distinct2_min_ratio, ">=",
                          f"new {new['distinct_2']:.3g} vs previous {prev['distinct_2']:.3g}"))
    if both("latency_mean_ms"):
        gates.append(Gate("latency_ratio", new["latency_mean_ms"] / (prev["latency_mean_ms"] + cfg.latency_slack_ms),
                          cfg.latency_max_ratio, "<=", f"new {new['latency_mean_ms']:.0f} ms vs previous "
                          f"{prev['latency_mean_ms']:.0f} ms (+{cfg.latency_slack_ms:g} ms slack)"))
    return gates


# -- the controller -----------------------------------------------------------------------------------------------------
class RolloutController:
    def __init__(self, settings: Settings, store: SqlStore, *, metrics: Metrics | None = None, clients=None,
                 evaluator=None, jobs: Jobs | InlineJobs | None = None, monitor: Monitor | None = None,
                 state: SqlStore | None = None, clock: Callable[[], float] = time.time,
                 drain_s: float | None = None) -> None:
        self.settings, self.cfg, self.store, self.metrics, self.clock = settings, settings.rollout, store, metrics, clock
        self.state = state or store  # the state store: runs and decisions, a candidate's lineage (the registry's own
        # database unless gateway.store_path gives the registry one of its own)
        self.jobs = jobs if jobs is not None else InlineJobs()
        self.monitor = monitor  # for the re-baseline: fresh windows, a profile from one, the new reference
        self._clients = clients
        self._evaluator = evaluator
        self.drain_s = drain_s if drain_s is not None else 2 * settings.gateway.alias_poll_s + 5.0
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._exported: set[str] = set()  # versions production_info has a series for
        self._judged: dict[int, float] = {}  # rollout id -> the taken_at of the last snapshot its bake judged
        self._evaluations: set[int] = set()  # rollouts whose evaluation job this process started
        self.phases = {  # what one step does in each phase
            "loading": self._loading,
            "evaluating": self._evaluating,
            "warming": self._warming,
            "canary": self._canary,
            "baking": self._baking,
            "rebaselining": self._rebaselining,
        }
        assert tuple(self.phases) == ACTIVE
        if metrics is not None:  # every phase's series exists from the start, at 0
            for phase in ACTIVE:
                metrics.rollout_phase.labels(phase=phase)

    @property
    def clients(self) -> list:
        """One vLLM client per server (made on first use: httpx stays out of the daemon's start)."""
        if self._clients is None:
            from driftwatch.serving.vllm import VLLMClient

            self._clients = [VLLMClient(url, timeout_s=self.settings.evaluate.timeout_s,
                                        api_key=self.settings.gateway.upstream_key())
                             for url in self.settings.vllm_urls]
        return self._clients

    def close(self) -> None:
        for client in self._clients or []:
            client.close()

    # -- registry -------------------------------------------------------------------------------------------------------
    def register(self, version: str, path: str | Path, *, run_id: str | None = None,
                 parent: str | None = None) -> AdapterRecord:
        if self.store.adapter(version) is not None:
            raise RolloutError(f"adapter version '{version}' is already registered: a version name is never reused")
        if not (Path(path) / "adapter_config.json").exists():
            raise RolloutError(f"{path} is not a LoRA adapter directory (no adapter_config.json)")
        now = self.clock()
        record = AdapterRecord(version, str(Path(path).resolve()), run_id, parent, "candidate", now, now)
        self.store.save_adapter(record)
        return record

    def production(self) -> str | None:
        """The version production points to (the heaviest weight during a canary)."""
        weights = self.store.alias_table()[1].get(self.cfg.alias)
        return max(weights, key=weights.get) if weights else None

    def active(self) -> RolloutRecord | None:
        return next((r for r in self.store.rollouts(limit=5) if r.phase in ACTIVE), None)

    # -- starting -------------------------------------------------------------------------------------------------------
    def start(self, version: str, *, who: str = "driftwatch", why: str = "", force: bool = False) -> RolloutRecord:
        """Begin a rollout of a registered version. ``force`` skips the evaluation (recorded as such)."""
        adapter = self.store.adapter(version)
        if adapter is None:
            raise RolloutError(f"unknown adapter version '{version}': register it first (driftwatch promote "
                               f"{version} --path DIR)")
        if adapter.state != "candidate":
            raise RolloutError(f"adapter version '{version}' is {adapter.state}; only a candidate can be rolled out")
        if (active := self.active()) is not None:
            raise RolloutError(f"rollout {active.id} of '{active.candidate}' is in progress ({active.phase}); "
                               "wait for it or roll it back")
        now = self.clock()
        record = RolloutRecord(0, version, self.production(), "loading", now, now, forced=force, who=who, why=why)
        rid = self.store.commit(now, who, "rollout-started", version, why, rollout=record,  # one at a time: checked
                                detail={"previous": record.previous, "forced": force})  # in this transaction
        log.info("rollout %d: %s -> %s started by %s%s", rid, record.previous, version, who,
                 " (forced: no evaluation)" if force else "")
        self._export(replace(record, id=rid))
        return replace(record, id=rid)

    # -- advancing ------------------------------------------------------------------------------------------------------
    def step(self, snapshot: MonitorSnapshot | None = None) -> RolloutRecord | None:
        """One step of the rollout in progress (while this process holds its lease). Returns it, or None when idle."""
        r = self.active()
        if r is None:
            self._export_production()  # after a restart too, not only when a rollout moves
            return None
        if not self.store.claim_rollout(r.id, self.holder, self.clock(), self.cfg.lease_s):
            return r
        try:
            r = self.phases[r.phase](r, snapshot)
        except RolloutError as exc:  # moved by another process (a rollback by hand from the CLI): read it again
            log.info("%s", exc)
            r = next(x for x in self.store.rollouts(limit=5) if x.id == r.id)
        self._export(r)
        return r

    def drive(self, snapshot_fn: Callable[[], MonitorSnapshot | None] = lambda: None,
              until: tuple[str, ...] = ("canary", "baking"), timeout_s: float = 600.0,
              interval_s: float = 0.2) -> RolloutRecord | None:
        """Step until the rollout reaches a phase in ``until`` or finishes (the CLI's `promote --wait`)."""
        deadline = time.monotonic() + timeout_s
        r = self.step(snapshot_fn())
        while r is not None and r.phase not in until and r.phase not in FINISHED and time.monotonic() < deadline:
            time.sleep(interval_s)
            r = self.step(snapshot_fn()) or self.store.rollouts(1)[0]
        return r

    def _move(self, r: RolloutRecord, phase: str, kind: str, why: str = "", *, aliases=None, states=None,
              detail_event: dict | None = None, who: str = "driftwatch", **fields) -> RolloutRecord:
        """Persist a step (one transaction, only if the row is still where this process saw it) and return it.
        The phase clock restarts when the phase or the canary step changes."""
        now = self.clock()
        restart = phase != r.phase or fields.get("step", r.step) != r.step
        new = replace(r, phase=phase, phase_since=now if restart else r.phase_since, **fields)
        self.store.commit(now, who, kind, r.candidate, why, rollout=new, expect_phase=r.phase, aliases=aliases,
                          states=states, detail=detail_event)
        log.info("rollout %d (%s): %s -> %s%s", r.id, r.candidate, r.phase, phase, f": {why}" if why else "")
        if phase in FINISHED and self.metrics is not None:
            self.metrics.rollouts.labels(outcome=phase).inc()
        return new

    def _loading(self, r: RolloutRecord, snapshot) -> RolloutRecord:
        try:
            self._load_everywhere(r.candidate)
            siblings, dropped = ([], {}) if r.forced else self._load_siblings(r)
        except VLLMUnavailable as exc:
            if not self._past_deadline(r):
                log.warning("rollout %d: cannot load %s yet: %s", r.id, r.candidate, exc)
                return r
            return self._move(r, "failed", "load-failed", f"{exc}; past rollout.load_deadline_s",
                              states=self._rejected(r))
        except ServingError as exc:  # rejected by vLLM, or the path is gone: production untouched
            return self._move(r, "failed", "load-failed", str(exc), states=self._rejected(r))
        return self._move(r, "warming" if r.forced else "evaluating", "loaded", f"on {len(self.clients)} server(s)"
                          + (f" with {len(siblings)} sibling candidate(s) to review" if siblings else ""),
                          states=dropped or None, detail={**r.detail, "siblings": siblings})

    def _load_siblings(self, r: RolloutRecord) -> tuple[list[str], dict[str, str]]:
        """Register and load the other candidates the candidate's run offered (each once: a version is never
        reused); one vLLM refuses (a rank above --max-lora-rank, say) is left out of the review, rejected.
        Returns the ones loaded, and the states of the ones left out."""
        adapter = self.store.adapter(r.candidate)
        if adapter is None:
            return [], {}
        loaded, dropped = [], {}
        for version, path in offered(adapter).items():
            if self.store.adapter(version) is None:
                self.register(version, path, run_id=adapter.run_id, parent=adapter.parent)
            if self.store.adapter(version).state != "candidate":
                dropped[version] = "rejected"
                continue
            try:
                self._load_everywhere(version)
                loaded.append(version)
            except VLLMUnavailable:
                raise
            except ServingError as exc:
                log.warning("rollout %d: sibling %s left out of the review: %s", r.id, version, exc)
                dropped[version] = "rejected"
        return loaded, dropped

    def _siblings(self, r: RolloutRecord) -> list[AdapterRecord]:
        """The other candidates the loading step recorded for this rollout (its run's, none by name alone), while
        they are candidates."""
        found = (self.store.adapter(v) for v in r.detail.get("siblings") or ())
        return [a for a in found if a is not None and a.state == "candidate"]

    def _rejected(self, r: RolloutRecord) -> dict[str, str]:
        """The candidate and its siblings (the ones registered, also before the loading step recorded them),
        rejected."""
        siblings = {a.version for a in self._siblings(r)} | {
            v for v in offered_versions(self.store, r.candidate) if self.store.adapter(v).state == "candidate"}
        return {r.candidate: "rejected", **{v: "rejected" for v in sorted(siblings)}}

    def _evaluating(self, r: RolloutRecord, snapshot) -> RolloutRecord:
        """Start the evaluation job, or take its result once it is in the store."""
        eval_id = evaluation_id(r)
        record = self.store.evaluation(eval_id)
        if record is None:
            key = f"evaluate-{r.id}"
            if self._past_deadline(r):
                self.jobs.cancel(key)
                return self._move(r, "rejected", "gate-failed", "no verdict within rollout.evaluate_deadline_s "
                                  f"({self.cfg.evaluate_deadline_s:g}s): the evaluation was cancelled",
                                  states=self._rejected(r))
            if r.id in self._evaluations and not self.jobs.running(key):
                if self.store.evaluation(eval_id) is not None:  # it recorded its verdict as it ended: take it
                    return self._evaluating(r, snapshot)
                return self._move(r, "rejected", "gate-failed", "the evaluation ended without a verdict (its error "
                                  "is in the log)", states=self._rejected(r))
            try:
                evaluator = self.evaluator()
            except Exception as exc:  # noqa: BLE001 - a bad golden set, say: a failed evaluation, recorded once
                return self._move(r, "rejected", "gate-failed", f"evaluation error: {type(exc).__name__}: {exc}",
                                  states=self._rejected(r))
            incumbent = r.previous or self.settings.gateway.base_model
            self._evaluations.add(r.id)
            self.jobs.submit(key, lambda cancel: self._evaluate(evaluator, r, incumbent, cancel))
            return r if self.store.evaluation(eval_id) is None else self._evaluating(r, snapshot)
        if self.metrics is not None:
            self.metrics.evaluations.labels(result="passed" if record.passed else "failed").inc()
        detail = {"evaluation": record.id, "failed": record.failed, "chosen": record.candidate}
        if not record.passed:
            return self._move(r, "rejected", "gate-failed", "; ".join(record.failed) or "evaluation failed",
                              states=self._rejected(r), detail_event=detail)
        if record.candidate != r.candidate:  # the review chose a sibling: it goes on, the others are rejected
            states = {v: s for v, s in self._rejected(r).items() if v != record.candidate}
            return self._move(replace(r, candidate=record.candidate), "warming", "gate-passed",
                              f"evaluation {record.id}: the review chose {record.candidate} over {r.candidate}; every "
                              "check passed on the held-out part", states=states, detail_event=detail)
        return self._move(r, "warming", "gate-passed", f"evaluation {record.id}: every check passed",
                          states={v: "rejected" for v in self._rejected(r) if v != r.candidate} or None,
                          detail_event=detail)

    def _evaluate(self, evaluator, r: RolloutRecord, incumbent: str, cancel) -> None:
        """The evaluation job: candidate against the incumbent on vLLM; its record lands in the store (unless the
        rollout was cancelled meanwhile: then nothing is recorded, and nothing waits for it)."""
        try:
            report = evaluator.run(r.candidate, incumbent, eval_id=evaluation_id(r), context={"rollout": r.id},
                                   cancel=cancel, siblings=tuple(a.version for a in self._siblings(r)))
        except Exception as exc:  # noqa: BLE001 - outside the evaluator's own handling: a failed evaluation
            log.exception("evaluation %s failed", evaluation_id(r))
            if not cancel.is_set():
                self.store.save_evaluation(EvaluationRecord(evaluation_id(r), self.clock(), r.candidate, incumbent,
                                                            False, "", [f"evaluation error: {type(exc).__name__}: {exc}"]))
            return
        if cancel.is_set():
            log.info("evaluation %s cancelled: not recorded", report.id)
            return
        failed = [g.line() for g in report.gates if not g.passed] or ([report.error] if report.error else [])
        judged = report.candidate if report.passed else r.candidate  # a failed review promotes nothing: the run's
        self.store.save_evaluation(EvaluationRecord(report.id, report.at, judged, incumbent, report.passed,
                                                    str(evaluator.reports_dir / f"{report.id}.json"), failed))

    def _warming(self, r: RolloutRecord, snapshot) -> RolloutRecord:
        try:
            self._load_everywhere(r.candidate, missing_only=True)  # a server restarted since loading lost it
            for client in self.clients:
                for _ in range(self.cfg.warm_requests):
                    client.complete(r.candidate, WARM_PROMPT, max_tokens=4)
        except VLLMUnavailable as exc:
            if not self._past_deadline(r):
                log.warning("rollout %d: warming %s: %s", r.id, r.candidate, exc)
                return r
            return self._move(r, "failed", "warm-failed", f"{exc}; past rollout.warm_deadline_s",
                              states={r.candidate: "rejected"})
        except ServingError as exc:
            return self._move(r, "failed", "warm-failed", str(exc), states={r.candidate: "rejected"})
        if self.cfg.canary_steps and r.previous:  # a first version has nothing to compare a canary with
            return self._canary_step(r, 0, snapshot)
        return self._flip(r, snapshot)

    def _canary_step(self, r: RolloutRecord, step: int, snapshot) -> RolloutRecord:
        share = self.cfg.canary_steps[step]
        weights = {r.candidate: share, r.previous: 1 - share} if r.previous else {r.candidate: 1.0}
        return self._move(r, "canary", "canary-step", f"{share:.0%} of {self.cfg.alias} traffic to {r.candidate}",
                          step=step, aliases={self.cfg.alias: weights}, detail={**r.detail, "measured": None})

    def _flip(self, r: RolloutRecord, snapshot) -> RolloutRecord:
        previous = snapshot.adapters.get(r.previous) if snapshot is not None and r.previous else None
        baseline = r.detail.get("baseline") if previous is None else live_signals(previous)
        if r.previous is None:  # the first production version: baked against absolute bounds
            return self._move(r, "baking", "promoted", f"{self.cfg.alias} -> {r.candidate} (first version: baked "
                              "against absolute bounds)", aliases={self.cfg.alias: {r.candidate: 1.0}},
                              states={r.candidate: "production"}, detail={**r.detail, "baseline": None,
                                                                          "measured": None})
        return self._move(r, "baking", "promoted", f"{self.cfg.alias} -> {r.candidate}",
                          aliases={self.cfg.alias: {r.candidate: 1.0}, "previous": {r.previous: 1.0}},
                          states={r.candidate: "production", r.previous: "previous"},
                          detail={**r.detail, "baseline": baseline, "measured": None})

    def _canary(self, r: RolloutRecord, snapshot) -> RolloutRecord:
        prev = _signals(snapshot, r.previous)
        r = self._judge(r, snapshot, prev)
        if r.phase != "canary" or not self._measured_for(r, self.cfg.step_s):
            return r
        r = replace(r, detail={**r.detail, "baseline": prev})
        if r.step + 1 < len(self.cfg.canary_steps):
            return self._canary_step(r, r.step + 1, snapshot)
        return self._flip(r, None)

    def _baking(self, r: RolloutRecord, snapshot) -> RolloutRecord:
        # taken at the flip; else the previous adapter's last window
        baseline = r.detail.get("baseline") or _signals(snapshot, r.previous)
        r = self._judge(r, snapshot, baseline)
        if r.phase != "baking":
            return r
        return self._bake_passed(r, "bake passed") if self._measured_for(r, self.cfg.bake.duration_s) else r

    def _measured_for(self, r: RolloutRecord, seconds: float) -> bool:
        """Checks have run on data, with no rollback, for ``seconds`` (the bake window counts from the first data)."""
        since = r.detail.get("measured")
        return since is not None and self.clock() - since >= seconds

    def _judge(self, r: RolloutRecord, snapshot, prev: dict) -> RolloutRecord:
        """One round of the bake's checks: count failures, roll back at the threshold; no data holds to the deadline."""
        bake = self.cfg.bake
        if r.failed_checks >= bake.failed_checks:  # counted, and the rollback not committed (a store error, a kill)
            return self._roll_back(r, "bake", f"{r.failed_checks} failed checks (rolled back on a later tick)")
        if snapshot is not None:
            if self._judged.get(r.id) == snapshot.taken_at:
                return r  # this snapshot was judged already: a failed check counts once per observation
            self._judged[r.id] = snapshot.taken_at
        new = live_signals(snapshot.adapters.get(r.candidate) if snapshot is not None else None)
        gates = bake_checks(new, prev, bake) if r.previous else first_checks(new, bake)
        if not gates:  # too few requests yet, or nothing the previous adapter can be compared on
            if self.clock() - r.phase_since < bake.deadline_s:
                return r
            if bake.on_no_data == "rollback":
                return self._roll_back(r, "no_data", f"no data for {bake.deadline_s:g}s (bake.on_no_data=rollback)")
            if self.metrics is not None:
                self.metrics.rollout_inconclusive.set(1)
            return self._bake_passed(r, f"bake inconclusive: no data for {bake.deadline_s:g}s; kept "
                                        "(bake.on_no_data=keep)", kind="bake-inconclusive")
        failed = [g for g in gates if not g.passed]
        if not failed:
            if r.detail.get("measured") is not None:
                return r
            return self._move(r, r.phase, "bake-measured", "; ".join(g.line() for g in gates),
                              detail={**r.detail, "measured": self.clock()})
        r = self._move(r, r.phase, "check-failed", "; ".join(g.line() for g in failed),
                       failed_checks=r.failed_checks + 1,
                       detail_event={"gates": [g.to_dict() for g in gates], "new": new, "previous": prev})
        if r.failed_checks >= bake.failed_checks:
            return self._roll_back(r, "bake", f"{r.failed_checks} failed checks; last: " +
                                   "; ".join(g.line() for g in failed))
        return r

    def _bake_passed(self, r: RolloutRecord, why: str, kind: str = "bake-passed") -> RolloutRecord:
        return self._move(r, "rebaselining", kind, why, aliases={"previous": None},
                          states={r.previous: "retired"} if r.previous else {})

    def _rebaselining(self, r: RolloutRecord, snapshot) -> RolloutRecord:
        """After a promotion that answered input drift, the candidate's window becomes the reference (a new version,
        saved and recorded), so the drift that was answered does not trigger again. Waits for enough rows up to
        ``rollout.rebaseline_deadline_s``; recorded either way."""
        why = self._input_drift_decision(r)
        reference = self.monitor.latest().reference if self.monitor is not None else None
        if why is None or reference is None:
            return self._move(r, "done", "rollout-done", "no re-baseline: " + (
                "no reference profile" if why is not None else "the promotion did not answer input drift"))
        try:
            profile = self.monitor.profile_from(r.candidate, f"driftwatch: {r.candidate}'s window after rollout {r.id}",
                                                self.monitor.fresh())
        except ValueError as exc:
            if self.clock() - r.phase_since < self.cfg.rebaseline_deadline_s:
                return r
            return self._move(r, "done", "rebaseline-skipped", f"{exc}, within rollout.rebaseline_deadline_s "
                              f"({self.cfg.rebaseline_deadline_s:g}s); the reference stays {reference.content_hash[:12]}")
        path = self.settings.daemon.state_dir / "references" / f"{profile.content_hash[:12]}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        profile.save(path)
        r = self._move(r, "done", "rebaselined", f"{why}; new reference {profile.content_hash[:12]}",
                       detail_event={"reference": str(path)})
        self.monitor.use_reference(profile)
        log.info("re-baselined the reference on %s: %s", r.candidate, path)
        return r

    def _input_drift_decision(self, r: RolloutRecord) -> str | None:
        """Why the candidate answers input drift (its run's decision, by an input_drift rule), else None."""
        adapter = self.store.adapter(r.candidate)
        run = self.state.run(adapter.run_id) if adapter is not None and adapter.run_id else None
        decision = self.state.decision(run.decision_id) if run is not None and run.decision_id else None
        rule = next((x for x in self.settings.policy.rules if decision is not None and x.name == decision.rule), None)
        if rule is None or rule.signal != "input_drift":
            return None
        return f"input drift triggered this promotion (decision #{decision.id})"

    def _roll_back(self, r: RolloutRecord, trigger: str, why: str, who: str = "driftwatch") -> RolloutRecord:
        """The alias flips back in the transaction that ends the rollout; never waits for a server (the previous
        adapter stayed loaded while the candidate baked; a server that lacks it is reconcile's, each tick). A first
        version goes back to the base model, never to nothing."""
        to = r.previous or self.settings.gateway.base_model
        aliases = {self.cfg.alias: {to: 1.0}, "previous": None}
        states = {r.candidate: "rolled_back", **({r.previous: "production"} if r.previous else {})}
        new = self._move(r, "rolled_back", "rolled-back", why, aliases=aliases, states=states, who=who,
                         detail_event={"trigger": trigger, "to": to})
        log.warning("rollout %d: rolled back %s -> %s (%s): %s", r.id, r.candidate, to, trigger, why)
        if self.metrics is not None:
            self.metrics.rollbacks.labels(trigger=trigger).inc()
        return new

    # -- by hand ------------------------------------------------------------------------------------------------------
    def rollback(self, *, who: str, why: str = "") -> str:
        """Production back to the adapter before it: the rollout in progress is cancelled (nothing flipped yet: the
        candidate is rejected, an evaluation under way is cancelled) or rolled back, else the last finished one is
        undone (its previous adapter is loaded again). Returns the version production points to now."""
        r = self.active()
        if r is not None:
            if r.phase not in FLIPPED:  # nothing was flipped yet
                self.jobs.cancel(f"evaluate-{r.id}")
                self._move(r, "rejected", "cancelled", why or f"cancelled by {who}", who=who,
                           states=self._rejected(r))
                return self.production() or ""
            self._roll_back(r, "manual", why or f"by {who}", who=who)
            return self.production() or ""
        done = next((x for x in self.store.rollouts(limit=50) if x.phase == "done" and x.previous), None)
        current = self.production()
        if done is None or done.candidate != current:
            raise RolloutError(f"nothing to roll back to: production is {current or 'unset'} and no finished "
                               "rollout put it there; set the alias by hand (driftwatch alias set)")
        self._load_somewhere(done.previous)
        now = self.clock()
        self.store.commit(now, who, "rolled-back", current, why or f"by {who}",
                          aliases={self.cfg.alias: {done.previous: 1.0}},
                          states={current: "rolled_back", done.previous: "production"}, detail={"trigger": "manual"})
        if self.metrics is not None:
            self.metrics.rollbacks.labels(trigger="manual").inc()
        log.warning("rollback by %s: %s -> %s", who, current, done.previous)
        return done.previous

    # -- serving state --------------------------------------------------------------------------------------------------
    def _load_somewhere(self, version: str) -> None:
        """Load on every server that answers; at least one must have it (reconcile loads the rest later)."""
        adapter = self.store.adapter(version)
        if adapter is None:
            return
        errors = []
        for client in self.clients:
            try:
                _load_once(client, version, adapter.path)
            except VLLMUnavailable as exc:
                errors.append(str(exc))
        if len(errors) == len(self.clients):
            raise RolloutError(f"no vLLM server could load {version}: {'; '.join(errors)}")

    def _past_deadline(self, r: RolloutRecord) -> bool:
        return self.clock() - r.phase_since >= deadline_s(self.settings, r.phase)

    def _load_everywhere(self, version: str, missing_only: bool = False) -> None:
        adapter = self.store.adapter(version)
        if adapter is None:
            return  # not ours (e.g. the base model, or an adapter loaded by vLLM's own flags)
        for client in self.clients:
            if not (missing_only and version in client.adapters()):
                _load_once(client, version, adapter.path)

    def reconcile(self) -> dict[str, list[str]]:
        """Make every server serve what the registry says: load what an alias or the rollout needs (after a vLLM
        restart, say), unload retired, rolled-back and rejected versions once ``drain_s`` has passed since."""
        now, out = self.clock(), {"loaded": [], "unloaded": []}
        adapters = {a.version: a for a in self.store.adapters()}
        if not adapters:
            return out  # nothing registered: nothing of ours to serve
        needed = {v for weights in self.store.alias_table()[1].values() for v in weights}
        r = self.active()
        if r is not None and r.phase != "loading":
            needed |= {r.candidate} | ({r.previous} if r.previous else set())
        if r is not None and r.phase == "evaluating":  # the review asks them too
            needed |= {a.version for a in self._siblings(r)}
        for client in self.clients:
            try:
                loaded = client.adapters()
                for v in sorted(needed - set(loaded)):
                    if v in adapters:
                        _load_once(client, v, adapters[v].path)
                        out["loaded"].append(v)
                for v in sorted(set(loaded) - needed):
                    a = adapters.get(v)
                    if a is not None and a.state in UNSERVED and now - a.updated >= self.drain_s:
                        try:
                            client.unload_adapter(v)
                        except AdapterNotFound:
                            pass
                        out["unloaded"].append(v)
            except ServingError as exc:
                log.warning("reconcile with %s: %s", client.base_url, exc)
        if out["loaded"] or out["unloaded"]:
            log.info("reconciled serving state: %s", out)
        return out

    def evaluator(self):
        if self._evaluator is None:
            from driftwatch.evaluate.evaluator import Evaluator, reports_dir

            if self.settings.retrain.golden_set is None:
                raise RolloutError("retrain.golden_set is not set: a candidate cannot be evaluated without the "
                                   "golden set (or promote with --force, recorded as such)")
            self._evaluator = Evaluator(self.settings.evaluate, self.clients[0], self.settings.retrain.golden_set,
                                        reports_dir(self.settings.evaluate, self.settings.daemon.state_dir),
                                        base=self.settings.gateway.base_model)
        return self._evaluator

    def _export(self, r: RolloutRecord) -> None:
        if self.metrics is None:
            return
        for phase in ACTIVE:
            self.metrics.rollout_phase.labels(phase=phase).set(1 if r.phase == phase else 0)
        self.metrics.rollout_failed_checks.set(r.failed_checks if r.phase in ACTIVE else 0)
        self._export_production()

    def _export_production(self) -> None:
        if self.metrics is None:
            return
        weights = self.store.alias_table()[1].get(self.cfg.alias) or {}
        for gone in self._exported - weights.keys():  # removed one by one: a scrape never sees none in between
            self.metrics.production_info.remove(gone)
        self._exported = set(weights)
        for v, w in weights.items():
            self.metrics.production_info.labels(version=v).set(w / sum(weights.values()))


def _load_once(client, version: str, path: str) -> None:
    """Load, where loaded already is fine: every version has one path, so a name that is there is this adapter."""
    try:
        client.load_adapter(version, path)
    except AdapterExists:
        pass


def evaluation_id(r: RolloutRecord) -> str:
    return f"rollout-{r.id}-{r.candidate}"
