"""What happens when drift trips: the one control loop, read top to bottom.

One thread calls :meth:`Reconciler.tick` every ``rollout.tick_s``, and at once when a control request arrives. A tick reads the state store, takes at most one step for each thing in flight, writes the
outcome and returns. It never waits for long work: training, evaluation and a decision's evidence are jobs
(control/jobs.py) whose results land in the store, where a later tick finds them. It is the only thread that acts,
so it holds no lock across I/O; readers (the status API, /metrics) see values it replaced whole.

    tick()
      names              every name the registry knows is reserved in the adapter label (never folded into 'other').
      leader?            elected (control/leader.py)? A follower publishes its windows for the leader and takes up a
                         re-baselined reference, then returns.
      requests           each pending control request, oldest first (rows the control API wrote): pause | resume |
                         rollback (an evaluation in progress is cancelled and its candidate rejected, this tick) |
                         retrain (a person's or an alert's, through the policy's holds).
      check, when due    fresh windows from the ingest thread, merged with the followers' → the check
                         (monitor.snapshot) → the window gauges → the policy's decisions. A retrain decision
                         queues a run (a row) and starts its evidence job.
      runs               a collecting run counts the harvest (every retrain.collect_check_s) until it is enough
                         (queued) or its deadline passes (insufficient-data); a queued run starts its training job
                         (one at a time); a run whose job is gone (the daemon that ran it stopped) is marked
                         interrupted; a succeeded run's adapter is registered as a candidate and, with
                         rollout.auto_promote, its rollout starts.
      rollout            one step of the rollout in progress, by its phase (control/rollout.py's phase table):
                         loading → evaluating (a job) → warming → canary → baking → rebaselining → done.
      serving state      vLLM serves what the registry says (control/rollout.py: reconcile).
      retention          at control.prune_cron, what is past control.retention_days leaves the store.

Each stage's failure is logged and left to the next tick; the store holds where everything is.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from driftwatch.config import Settings
from driftwatch.control.jobs import InlineJobs, Jobs
from driftwatch.control.leader import Always, Leadership
from driftwatch.control.policy import Decision, Policy, Waiting, paused_in
from driftwatch.control.rollout import ACTIVE as ROLLOUT_ACTIVE
from driftwatch.control.rollout import RolloutController, family, live_signals, version_name
from driftwatch.errors import ControlError, RolloutError
from driftwatch.metrics import Metrics
from driftwatch.monitor.monitor import Monitor, MonitorSnapshot, Windows, merge_views, window_samples
from driftwatch.monitor.report import write_evidence
from driftwatch.monitor.sketch import Profile
from driftwatch.retrain.service import ACTIVE as RUN_ACTIVE
from driftwatch.retrain.service import RetrainService
from driftwatch.state.store import RequestRecord, SqlStore

log = logging.getLogger(__name__)

LEADER_RECORD = "driftwatch"


class Reconciler:
    def __init__(self, settings: Settings, *, store: SqlStore, registry: SqlStore, metrics: Metrics, monitor: Monitor,
                 policy: Policy, rollouts: RolloutController, retrain: RetrainService | None = None,
                 jobs: Jobs | InlineJobs | None = None, leadership: Leadership | None = None,
                 identity: str = "driftwatch", clock: Callable[[], float] = time.time) -> None:
        self.settings, self.store, self.registry, self.metrics = settings, store, registry, metrics
        self.monitor, self.policy, self.rollouts, self.retrain = monitor, policy, rollouts, retrain
        self.jobs = jobs if jobs is not None else Jobs()
        self.leadership = leadership or Always()
        self.identity, self.clock = identity, clock
        self.advertise_url: str | None = None  # where followers forward control calls (set once HTTP listens)
        self.snapshot: MonitorSnapshot | None = None  # the last check's result: replaced whole, read by the status API
        self.leading = False
        self._checked = float("-inf")
        self._followed: str | None = None  # the re-baselined reference a follower took up last
        self._thread: threading.Thread | None = None
        self._stopping, self._woken = threading.Event(), threading.Event()
        self._webhook_bucket = TokenBucket(settings.control.webhook_alerts_per_minute)
        self._next_prune: float | None = None
        self._collect_checked: dict[str, float] = {}  # collecting run → when its harvest was last counted

    # -- the loop -------------------------------------------------------------------------------------------------------
    def tick(self) -> None:
        """One pass: see the module's docstring."""
        now = self.clock()
        # every name the registry knows keeps its own label value, on every replica (never folded into 'other')
        self._stage("names", lambda: self.metrics.adapter_cap.reserve(self.store.names()))
        if not self._lead():
            self._stage("follow", self._follow, now)
            return
        for request in self._stage("requests", self.store.requests, True) or ():
            self._stage(f"request {request.id}", self._handle, request)
        if now - self._checked >= self.settings.monitor.check_interval_s:
            self._checked = now
            self._stage("check", self._check, now)
        self._stage("runs", self._runs)
        self._stage("rollout", self.rollouts.step, self.snapshot)
        self._stage("serving state", self.rollouts.reconcile)
        self._stage("retention", self._prune, now)

    def _prune(self, now: float) -> None:
        """At control.prune_cron (APScheduler's cron trigger, UTC), and once when the loop starts (a daemon restarted
        more often than the cron fires still prunes): delete what is past control.retention_days."""
        if self._next_prune is None or now >= self._next_prune:
            c = self.settings.control
            counts = self.store.prune(now - c.retention_days * 86400)
            log.info("retention: deleted %s older than %g days", ", ".join(f"{n} {k}" for k, n in counts.items()),
                     c.retention_days)
        if self._next_prune is None or now >= self._next_prune:
            from datetime import datetime, timezone

            from apscheduler.triggers.cron import CronTrigger

            at = datetime.fromtimestamp(now, timezone.utc)
            fire = CronTrigger.from_crontab(self.settings.control.prune_cron, timezone="UTC").get_next_fire_time(None, at)
            self._next_prune = fire.timestamp()

    @staticmethod
    def _stage(name: str, fn, *args):
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - one stage's failure must not stop the others; the next tick tries again
            log.exception("control loop: %s failed", name)
            return None

    def start(self) -> None:
        """The tick thread: one, so ticks never overlap."""
        interval = self.settings.rollout.tick_s
        if not isinstance(self.leadership, Always):
            interval = min(interval, self.settings.leader.renew_s)  # a tick renews the leadership
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval,), name="driftwatch-control", daemon=True)
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stopping.is_set():
            self._woken.clear()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the loop goes on; the state is in the store
                log.exception("control loop tick failed")
            self._woken.wait(interval)

    def wake(self) -> None:
        """Tick now (a control request arrived); a tick in progress is followed by another at once."""
        self._woken.set()

    def stop(self) -> None:
        """The tick thread ends (a tick in progress finishes), then every job is cancelled and awaited: a training
        run in progress stops and is recorded as cancelled."""
        self._stopping.set()
        self._woken.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.jobs.shutdown(cancel=True)

    # -- leader? ----------------------------------------------------------------------------------------------------------
    def _lead(self) -> bool:
        try:
            held = self.leadership.try_acquire()
        except Exception:  # noqa: BLE001 - cannot tell: do not act
            log.exception("leader election failed")
            held = False
        if held and not self.leading:  # taking leadership, or starting as the leader
            log.info("%s is the leader now: deciding and acting", self.identity)
            self.policy.reload()  # go on from what the store says (runs a former leader left: see _runs)
        elif self.leading and not held:
            log.warning("%s is no longer the leader: ingesting and publishing its windows only", self.identity)
        self.leading = held
        self.metrics.leader.set(int(held))
        if held and not isinstance(self.leadership, Always):
            self.store.set_leader(LEADER_RECORD, self.identity, self.advertise_url, time.time())
        return held

    def _follow(self, now: float) -> None:
        """A follower takes up the reference the leader re-baselined on (so every replica's windows are cut at the
        same edges) and publishes its windows for the leader's check."""
        if now - self._checked < self.settings.monitor.check_interval_s:
            return
        self._checked = now
        latest = next(iter(self.registry.events(kind="rebaselined", limit=1)), None)
        if latest is not None and latest.detail["reference"] != self._followed:
            self._followed = latest.detail["reference"]
            if self.monitor.latest().reference is not None:
                self.monitor.use_reference(Profile.load(Path(latest.detail["reference"])))
                log.info("reference: %s, re-baselined by %s", latest.detail["reference"], latest.who)
        windows = self.monitor.fresh()
        self.store.publish_windows(self.identity, {a: w.to_bytes(closed) for a, (w, closed) in windows.views.items()},
                                   time.time())

    # -- requests -------------------------------------------------------------------------------------------------------
    def _handle(self, request: RequestRecord) -> None:
        now = self.clock()
        try:
            if request.kind in ("pause", "resume"):
                self.policy.pause(request.kind == "pause", request.who, request.reason, now)
                outcome = {"paused": request.kind == "pause"}
            elif request.kind == "rollback":
                outcome = {"production": self.rollouts.rollback(who=request.who, why=request.reason)}
            else:
                outcome = self._requested_retrain(request, now)
        except (ControlError, RolloutError) as exc:
            self.store.finish_request(request.id, "refused", {"error": str(exc)}, self.clock())
            log.info("request %d (%s by %s) refused: %s", request.id, request.kind, request.who, exc)
            return
        self.store.finish_request(request.id, "done", outcome, self.clock())

    def _requested_retrain(self, request: RequestRecord, now: float) -> dict:
        rule = request.detail.get("rule", "manual")
        manual = rule == "manual"
        if manual and self.retrain is None:  # an alert's request is decided and recorded, like a rule's
            raise ControlError("no retrain stage: set retrain.base_model and retrain.golden_set")
        busy = self._busy()
        if manual and busy:
            raise ControlError(f"{busy}; wait for it to finish")
        reasons = (f"manual, by {request.who}: {request.reason}",) if manual else (request.reason,)
        d = self.policy.request_retrain(request.adapter, rule, reasons, now, slot=self._slots().get(request.adapter),
                                        busy=busy, routes=tuple(request.detail.get("routes", ())), manual=manual)
        if d.action != "retrain":
            return {"action": "hold", "decision_id": d.id, "reason": d.reasons[-1]}
        return {"action": "retrain", "decision_id": d.id, "run_id": self._retrain(d)}

    # -- check ----------------------------------------------------------------------------------------------------------
    def _check(self, now: float) -> None:
        windows = self.monitor.fresh()
        views = windows.views
        if not isinstance(self.leadership, Always):  # the followers' windows: the verdict covers every partition
            others = self.store.published_windows(time.time() - self.settings.leader.window_stale_s,
                                                  exclude=self.identity)
            self.metrics.monitor_replicas.set(1 + len({replica for replica, _, _ in others}))
            views = merge_views(dict(views), [(a, d) for _, a, d in others])
        else:
            self.metrics.monitor_replicas.set(1)
        checked = Windows(windows.seq, windows.at, windows.reference, views)
        self.snapshot = self.monitor.snapshot(checked)
        self.metrics.set_windows(window_samples(self.snapshot))
        for d in self.policy.decide(self.snapshot, now, slots=self._slots(), busy=self._busy(), outcome=self._outcome):
            if d.action == "retrain":
                self._retrain(d, checked)

    def _retrain(self, d: Decision, windows: Windows | None = None) -> str | None:
        """A retrain decision: its run is queued (a row; `_runs` starts it) and its evidence is written by a job.
        Returns the run's id; None when no retrain stage is configured (the decision is recorded only)."""
        windows = windows or self.monitor.latest()
        view = self.snapshot.adapters.get(d.adapter) if self.snapshot is not None else None
        window = windows.views.get(d.adapter)
        rows = list(window[0].rows) if window else []
        if view is not None:
            self.jobs.submit(f"evidence-{d.id}", lambda cancel: self._evidence(d, view, rows, windows.reference))
        if self.retrain is None:
            log.warning("retrain decided for adapter '%s' by %s (decision %d); recorded only: set retrain.base_model "
                        "and retrain.golden_set to run it", d.adapter, d.rule, d.id)
            return None
        return self.retrain.queue(d.adapter, decision_id=d.id, focus_routes=d.routes, reason=" | ".join(d.reasons),
                                  collect=d.rule != "manual")  # a person's asks for now; a rule's waits for data

    def _evidence(self, d: Decision, view, rows: list, reference: Profile | None) -> None:
        """The evidence job: driftwatch's verdicts and Evidently's report on the decided window's rows."""
        path = write_evidence(self.settings.daemon.state_dir / "evidence", d.id, view, reference, rows, d.reasons)
        self.store.attach_evidence(d.id, str(path))

    # -- runs -----------------------------------------------------------------------------------------------------------
    def _runs(self) -> None:
        if self.retrain is None:
            return
        runs = self.store.runs(limit=20)
        collecting = {r.id for r in runs if r.status == "collecting"}
        self._collect_checked = {k: v for k, v in self._collect_checked.items() if k in collecting}
        for run in reversed(runs):  # oldest first
            if run.status == "collecting":
                self._collect(run)
                continue
            queued_at = run.detail.get("queued_at", run.started)
            if run.status in RUN_ACTIVE and self.clock() - queued_at >= self.settings.retrain.timeout_s:
                self.jobs.cancel(f"train-{run.id}")  # its job, if any, stops; the run's record stays timed_out
                self.retrain.timed_out(run)
                continue
            if run.status == "queued" and not any(r.status in ("building", "training") for r in runs):
                if self.jobs.submit(f"train-{run.id}", lambda cancel, r=run: self._train(r, cancel)):
                    log.info("retrain run %s for '%s' started", run.id, run.adapter)
                break  # one run at a time
            if run.status in ("building", "training") and not self.jobs.running(f"train-{run.id}"):
                # read again after the job was seen gone: one that finished in between has recorded its outcome
                if (fresh := self.store.run(run.id)) is not None and fresh.status in ("building", "training"):
                    self.retrain.interrupted(fresh)
        runs = self.store.runs(limit=20)
        self.metrics.retrain_collecting.set(sum(r.status == "collecting" for r in runs))
        self._candidates(runs)

    def _collect(self, run) -> None:
        """A collecting run, every retrain.collect_check_s: queued once the harvest is enough (started on a later
        pass), insufficient-data past retrain.collect_deadline_s; meanwhile what it lacks is on the run."""
        now, rt = self.clock(), self.settings.retrain
        if now - self._collect_checked.get(run.id, -math.inf) < rt.collect_check_s and \
                now - run.started < rt.collect_deadline_s:
            return
        self._collect_checked[run.id] = now
        why, counts = self.retrain.shortfall(run)
        if why is None:
            self.retrain.collected(run, counts)
        elif now - run.started >= rt.collect_deadline_s:
            self.retrain.insufficient(run, why, counts)
        elif run.detail.get("lacking") != why:
            self.store.save_run(replace(run, detail={**run.detail, "lacking": why, "collected": counts}))

    def _train(self, run, cancel: threading.Event) -> None:
        """The training job: the run, recorded step by step by the retrain service."""
        self.retrain.run(run.adapter, decision_id=run.decision_id, focus_routes=tuple(run.detail.get("focus_routes", ())),
                         reason=run.reason or "", run_id=run.id, cancel=cancel)

    def _candidates(self, runs) -> None:
        """A succeeded run's adapter is registered as a candidate, and rolled out with rollout.auto_promote (the
        rollout evaluates it, and promotes it only if every gate passes)."""
        started = {family(r.candidate) for r in self.registry.rollouts(limit=50)}  # a sibling chosen: its run's
        for run in reversed(runs):
            if run.status != "succeeded" or run.output is None:
                continue
            version = version_name(run.id)
            adapter = self.registry.adapter(version)
            if adapter is None:
                adapter = self.rollouts.register(version, Path(run.output) / "adapter", run_id=run.id, parent=run.adapter)
            if (adapter.state == "candidate" and version not in started and self.settings.rollout.auto_promote
                    and self.rollouts.active() is None):
                self.rollouts.start(version, why=f"retrain run {run.id}" + (
                    f" on decision #{run.decision_id}" if run.decision_id else " (manual)"))
                return

    def _outcome(self, decision_id: int) -> tuple[str, float | None]:
        """Where a retrain decision ended (the policy retries what ended without a promotion): open while its run
        or its candidate's rollout is in flight; promoted; unpromoted (with when it ended); answered when no retrain
        stage runs decisions."""
        if self.retrain is None:
            return "answered", None
        run = next((r for r in self.store.runs(limit=100) if r.decision_id == decision_id), None)
        if run is None:  # pruned, or never queued: nothing in flight
            return "unpromoted", None
        if run.status in RUN_ACTIVE:
            return "open", None
        if run.status != "succeeded":
            return "unpromoted", run.finished
        version = version_name(run.id)
        rollout = next((x for x in self.registry.rollouts(limit=100) if family(x.candidate) == version), None)
        if rollout is None:  # a candidate waiting for its rollout (or a person) is in flight; anything else ended
            adapter = self.registry.adapter(version)
            return ("open", None) if adapter is None or adapter.state == "candidate" else ("unpromoted", run.finished)
        if rollout.phase in ROLLOUT_ACTIVE:
            return "open", None
        return ("promoted", rollout.phase_since) if rollout.phase == "done" else ("unpromoted", rollout.phase_since)

    # -- what holds a decision ------------------------------------------------------------------------------------------
    def _busy(self) -> str | None:
        """Why acting now would collide: a rollout in progress, or a retrain run not finished."""
        if (r := self.rollouts.active()) is not None:
            return f"rollout {r.id} of {r.candidate} is in progress ({r.phase})"
        active = [r for r in self.store.runs(limit=20) if r.status in RUN_ACTIVE and r.status != "collecting"]
        if active:  # a collecting run holds nothing: it waits for data, and a person's retrain may go first
            return f"retrain run {active[0].id} is {active[0].status}"
        return None

    def _slots(self) -> dict[str, str]:
        """adapter version → the serving slot it fills: the alias that points to it (rollout.alias first)."""
        aliases = self.registry.alias_table()[1]
        out: dict[str, str] = {}
        for alias in sorted(aliases, key=lambda a: (a != self.settings.rollout.alias, a)):
            for version in aliases[alias]:
                out.setdefault(version, alias)
        return out

    # -- the control API (control/api.py): requests written to the store, acted on by the next tick --------------------
    def forward_to(self) -> str | None:
        """None on the leader (it acts); else the leader's control API, where a follower sends the call."""
        if self.leading:
            return None
        record = self.store.leader(LEADER_RECORD)
        if record is None or not record[1]:
            raise ControlError("no leader yet: the replicas are electing one; try again in a few seconds", status=503)
        return record[1]

    def submit(self, kind: str, reason: str, who: str, adapter: str | None = None, detail: dict | None = None,
               wait_s: float | None = None) -> RequestRecord:
        """Write a request, wake the loop, and wait for its outcome (up to ``control.request_wait_s``)."""
        request_id = self.store.add_request(time.time(), kind, reason, who, adapter, detail)
        self.wake()
        return self._await([request_id], wait_s)[0]

    def _await(self, ids: list[int], wait_s: float | None = None) -> list[RequestRecord]:
        deadline = time.monotonic() + (self.settings.control.request_wait_s if wait_s is None else wait_s)
        while True:
            records = [self.store.request(i) for i in ids]
            if all(r.status != "pending" for r in records) or time.monotonic() >= deadline:
                return records
            time.sleep(0.02)

    def status(self) -> dict:
        return status_document(self.settings, self.store, self.rollouts, self.snapshot, self.policy.waiting)

    def request_retrain(self, adapter: str, reason: str, who: str, routes: tuple[str, ...] = ()) -> dict:
        return _answer(self.submit("retrain", reason, who, adapter, {"rule": "manual", "routes": list(routes)}),
                       lambda o: {"decision_id": o["decision_id"], "run_id": o.get("run_id")}, refuse_hold=True)

    def rollback(self, reason: str, who: str) -> str:
        return _answer(self.submit("rollback", reason, who), lambda o: o["production"])

    def set_paused(self, paused: bool, reason: str, who: str) -> bool:
        return _answer(self.submit("pause" if paused else "resume", reason, who), lambda o: o["paused"])

    def alertmanager(self, payload: dict) -> dict:
        """Firing alerts named in control.retrain_alerts, with an ``adapter`` label the registry knows, become retrain
        requests through the policy (pause, cooldown and daily cap apply), once per occurrence: fingerprint +
        startsAt. A malformed payload is 400 and a call past ``control.webhook_alerts_per_minute`` is 429, both
        before anything is recorded, so Alertmanager's corrected or later delivery is handled."""
        alerts = _alerts(payload)
        wanted, now = set(self.settings.control.retrain_alerts), time.time()
        known = self.store.names()
        out: dict = {"retrain": [], "held": [], "queued": [], "duplicate": 0, "ignored": 0, "unknown_adapter": 0}
        firing = [a for a in alerts if a["status"] == "firing" and a["labels"].get("alertname") in wanted
                  and a["labels"].get("adapter")]
        asking = sum(a["labels"]["adapter"] in known for a in firing)
        # a group larger than the bucket takes the whole bucket (else it could never pass); the policy's cooldown and
        # daily cap still hold what it asks for
        if not self._webhook_bucket.take(min(asking, self._webhook_bucket.rate), now):
            self.metrics.webhook_alerts.labels(outcome="rate_limited").inc(len(alerts))
            raise ControlError(f"more than {self.settings.control.webhook_alerts_per_minute} alerts a minute: try "
                               "again later", status=429)
        asked: list[tuple[int, str, str]] = []
        firing_ids = {id(a) for a in firing}
        for alert in alerts:
            labels = alert["labels"]
            name, adapter = labels.get("alertname"), labels.get("adapter")
            if id(alert) not in firing_ids:
                outcome = "ignored"
            elif adapter not in known:  # never a made-up name: it would hold the daily cap of nothing
                outcome = "unknown_adapter"
            elif not self.store.claim_occurrence(fp := alert["fingerprint"], starts := alert["startsAt"], now):
                outcome = "duplicate"
            else:
                why = alert["annotations"].get("summary") or name
                try:
                    request_id = self.store.add_request(now, "retrain", f"Alertmanager: {why}", "alertmanager",
                                                        adapter, {"rule": f"alert:{name}"})
                except Exception:
                    self.store.release_occurrence(fp, starts)  # not recorded: Alertmanager's retry is handled
                    raise
                asked.append((request_id, name, adapter))
                continue
            out[outcome] += 1
            self.metrics.webhook_alerts.labels(outcome=outcome).inc()
        if asked:
            self.wake()
        for (_, name, adapter), r in zip(asked, self._await([a[0] for a in asked])):
            o = r.outcome
            if r.status == "pending":
                outcome, entry = "queued", {"request_id": r.id}
            elif r.status == "done" and o.get("action") == "retrain":
                outcome, entry = "retrain", {"decision_id": o["decision_id"], "run_id": o.get("run_id")}
            else:
                outcome, entry = "held", {"decision_id": o.get("decision_id"), "reason": o.get("reason") or o.get("error")}
            out[outcome].append({"alert": name, "adapter": adapter, **entry})
            self.metrics.webhook_alerts.labels(outcome=outcome).inc()
        return out


MAX_ALERTS = 1000  # per webhook call (Alertmanager groups alerts; a call of more is not from it)


def _alerts(payload: dict) -> list[dict]:
    """The payload's alerts, checked whole before any is acted on: 400 (ControlError) when one is malformed."""
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise ControlError("not an Alertmanager webhook payload: no 'alerts' list", status=400)
    if len(alerts) > MAX_ALERTS:
        raise ControlError(f"{len(alerts)} alerts in one call; at most {MAX_ALERTS}", status=413)
    for i, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise ControlError(f"alerts[{i}] is not an object", status=400)
        for key in ("status", "fingerprint", "startsAt"):
            if not isinstance(alert.get(key), str) or not 0 < len(alert[key]) <= 256:
                raise ControlError(f"alerts[{i}].{key} is not a string of 1-256 characters", status=400)
        for key in ("labels", "annotations"):
            value = alert.setdefault(key, {})
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise ControlError(f"alerts[{i}].{key} is not an object of strings", status=400)
    return alerts


class TokenBucket:
    """``rate`` tokens a minute, at most ``rate`` held: take(n) all or nothing."""

    def __init__(self, rate: int) -> None:
        self.rate, self.tokens, self.at = rate, float(rate), None
        self._lock = threading.Lock()

    def take(self, n: int, now: float) -> bool:
        with self._lock:
            if self.at is not None:
                self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate / 60)
            self.at = now
            if n > self.tokens:
                return False
            self.tokens -= n
            return True


def _answer(r: RequestRecord, result, refuse_hold: bool = False):
    """A request's outcome as the API answers it: refused → 409; still pending → 202 with its id."""
    if r.status == "pending":
        raise ControlError(f"request {r.id} is queued: the control loop has not reached it yet; `driftwatch status` "
                           "shows its outcome", status=202, body={"request_id": r.id, "status": "pending"})
    if r.status == "refused" or (refuse_hold and r.outcome.get("action") == "hold"):
        raise ControlError(r.outcome.get("error") or r.outcome.get("reason") or "refused")
    return result(r.outcome)


def _rules(settings: Settings, store: SqlStore, snapshot: MonitorSnapshot | None,
           waiting: dict[tuple[str, str], Waiting] | None) -> list[dict]:
    """Every configured rule on every adapter seen (a rule without data yet says so), and for a firing retrain rule
    why it is not retraining now: the policy's own view on the leader, else the last hold it recorded."""
    states = store.rule_states()
    adapters = sorted({a for _, a in states} | set(snapshot.adapters if snapshot is not None else ()))
    if waiting is None:  # `status --local`: no policy in this process; the timeline's last hold since it fired
        holds = store.decisions(action="hold", limit=200)
        waiting = {}
        for (name, adapter), st in states.items():
            d = next((d for d in holds if d.rule == name and d.adapter == adapter and d.at >= st.since), None)
            if st.state == "firing" and d is not None and not any(
                    x.rule == name and x.adapter == adapter and x.id > d.id
                    for x in store.decisions(since=d.at, action="retrain")):
                waiting[(name, adapter)] = Waiting("held", d.reasons[-1].removeprefix("held: "), None, 0, d.slot or "")
    out = []
    for spec in settings.policy.rules:
        for adapter in adapters or [None]:
            st = states.get((spec.name, adapter))
            entry = {"rule": spec.name, "adapter": adapter, "state": st.state if st else "no data",
                     "since": st.since if st else None, "value": st.value if st else None, "signal": spec.signal,
                     "op": spec.op, "threshold": spec.threshold, "for_s": spec.for_s, "action": spec.action,
                     "min_samples": spec.min_samples}
            w = (waiting or {}).get((spec.name, adapter)) if st is not None and st.state == "firing" else None
            if w is not None:
                entry["waiting"] = {"kind": w.kind, "reason": w.reason, "next_try": w.next_try,
                                    "attempts": w.attempts}
            out.append(entry)
    return out


def status_document(settings: Settings, store: SqlStore, rollouts: RolloutController,
                    snapshot: MonitorSnapshot | None = None,
                    waiting: dict[tuple[str, str], Waiting] | None = None) -> dict:
    """What `GET /v1/status` answers (and `driftwatch status --local` prints): from the state store and the registry,
    plus the last check's snapshot of the windows and the policy's holds when there are."""
    table_version, aliases = rollouts.store.alias_table()
    active = rollouts.active()
    return {
        "paused": paused_in(store),
        "leader": None if (lead := rollouts.store.leader(LEADER_RECORD)) is None else {
            "holder": lead[0], "url": lead[1], "since": lead[2], "renewed": lead[3]},
        "production": rollouts.production(),
        "aliases": aliases, "alias_table_version": table_version,
        "rollout": None if active is None else {"id": active.id, "candidate": active.candidate,
                                                "previous": active.previous, "phase": active.phase,
                                                "since": active.phase_since, "failed_checks": active.failed_checks},
        "rules": _rules(settings, store, snapshot, waiting),
        "windows": {} if snapshot is None else {
            a: {**live_signals(view), "drifted": view.drifted_features, "closed": view.window_closed}
            for a, view in sorted(snapshot.adapters.items())},
        "runs": [{"id": r.id, "adapter": r.adapter, "status": r.status, "decision_id": r.decision_id,
                  "started": r.started, "finished": r.finished, "reason": r.reason,
                  "collecting": {"until": r.started + settings.retrain.collect_deadline_s,
                                 "lacking": r.detail.get("lacking"), "counts": r.detail.get("collected")}
                  if r.status == "collecting" else None} for r in store.runs(limit=10)],
        "decisions": [{"id": d.id, "at": d.at, "adapter": d.adapter, "slot": d.slot, "action": d.action,
                       "rule": d.rule, "reasons": d.reasons, "evidence": d.evidence} for d in store.decisions(limit=10)],
        "requests": [{"id": q.id, "at": q.at, "kind": q.kind, "adapter": q.adapter, "who": q.who, "status": q.status,
                      "outcome": q.outcome} for q in store.requests(limit=10)],
    }

