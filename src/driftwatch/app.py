"""Composition root: the only place that wires concrete classes together.

``build(settings)`` returns a :class:`Daemon`; ``Daemon.run(stop)`` is the loop. Close order on the way out:
finish the batch in hand (dead letters acknowledged, offsets committed), leave the consumer group, close the
dead-letter producer, stop the HTTP server.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from datetime import datetime
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from driftwatch import __version__
from driftwatch.control import leader
from driftwatch.config import Settings
from driftwatch.errors import ConfigError, ConfigProblem, ControlError, DeadLetterError, ReportError, RolloutError
from driftwatch.control.api import control_routes
from driftwatch.http import HttpServer, build_app
from driftwatch.control.leader import Always, Leadership
from driftwatch.ingest.pipeline import Batch, DeadLetterSink, Ingestor, OffsetJournal, Source
from driftwatch.metrics import Metrics
from driftwatch.monitor.features import FeatureExtractor
from driftwatch.monitor.monitor import Monitor, MonitorSettings, MonitorSnapshot, export, merge_views
from driftwatch.monitor.signals import AdapterSignals
from driftwatch.monitor.sketch import Profile
from driftwatch.control.policy import Decision, Policy, RetrainRequest, RuleSpec, paused_in
from driftwatch.monitor.report import evidently_report, write_evidence
from driftwatch.retrain.harvest import Harvester
from driftwatch.retrain.service import RetrainService, build_runner
from driftwatch.control.rollout import RolloutController, live_signals, version_name
from driftwatch.state.store import RolloutRecord, RunRecord, StateStore, open_stores
from driftwatch.ingest.recent import DedupWindow

log = logging.getLogger("driftwatch")

DEAD_LETTER_HEADROOM = 64 * 1024  # room for headers and batch overhead under the producer's max_request_size


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass
class Daemon:
    settings: Settings
    metrics: Metrics
    source: Source
    dead_letters: DeadLetterSink
    ingestor: Ingestor
    monitor: Monitor | None = None
    policy: Policy | None = None
    http: HttpServer | None = None
    state: State = State.STARTING
    blocked_since: float | None = None
    last_tick: float = field(default_factory=time.monotonic)
    last_snapshot: MonitorSnapshot | None = None
    retrain: RetrainService | None = None
    rollout: RolloutController | None = None
    worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="driftwatch-work"))
    leadership: Leadership = field(default_factory=Always)
    identity: str = "driftwatch"
    is_leader: bool = True  # build() asks the election before the first check
    _acting: bool = field(default=False, repr=False)
    _rollout_busy: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- probes -------------------------------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict]:
        age = time.monotonic() - self.last_tick
        return age < max(60.0, 3 * self.settings.kafka.consumer.poll_timeout_ms / 1000), {
            "state": self.state.value, "loop_age_s": round(age, 3)}

    def readiness(self) -> tuple[bool, dict]:
        joined = self.source.joined
        ok = self.state is State.RUNNING and joined and self.blocked_since is None
        return ok, {"state": self.state.value, "joined": joined, "dead_letter_blocked": self.blocked_since is not None}

    # -- loop ---------------------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> int:
        """Ingest until ``stop`` is set; return the exit code (0 clean, 1 stopped with work that will be redelivered)."""
        self.state = State.RUNNING
        code = 0
        joined = False
        scheduler = self._start_checks()
        try:
            while not stop.is_set():
                self.last_tick = time.monotonic()
                batch = self.ingestor.poll()
                if not joined and self.source.joined:
                    joined = True
                    self.metrics.consumer_joined.set(1)
                if batch is not None and not self._finish(batch, stop):
                    code = 1
                    break
        finally:
            self.state = State.DRAINING
            if scheduler is not None:
                scheduler.shutdown(wait=True)
            if self.retrain is not None:
                self.retrain.cancel.set()  # a training run in progress stops and is recorded as cancelled
            self.worker.shutdown(wait=True)  # evidence being written is finished, not cut off
            self._close()
            self.state = State.STOPPED
        return code

    def check(self) -> list[Decision]:
        """One monitor check, on the scheduler. A follower publishes its windows for the leader; the leader merges
        the followers' fresh windows into its own, snapshots, exports the gauges and runs the policy."""
        if self.monitor is None:
            return []
        if not self.is_leader:
            self._follow_reference()
            views = self.monitor.windows()
            self.registry.publish_windows(self.identity, {a: w.to_bytes(closed) for a, (w, closed) in views.items()},
                                          time.time())
            return []
        views = self.monitor.windows()
        others = [] if isinstance(self.leadership, Always) else self.registry.published_windows(
            time.time() - self.settings.leader.window_stale_s, exclude=self.identity)
        self.metrics.monitor_replicas.set(1 + len({replica for replica, _, _ in others}))
        snapshot = self.last_snapshot = self.monitor.snapshot(merge_views(views, [(a, d) for _, a, d in others]))
        export(snapshot, self.metrics)
        return self.policy.tick(snapshot, time.time()) if self.policy is not None else []

    @property
    def registry(self):
        return self.rollout.store if self.rollout is not None else self.policy.store

    def _follow_reference(self) -> None:
        """A follower takes up the reference the leader re-baselined on (after a promotion), so that every
        replica's windows are cut at the same edges."""
        if self.monitor.reference is None:
            return
        latest = next(iter(self.registry.events(kind="rebaselined", limit=1)), None)
        if latest is None or Path(latest.detail["reference"]).stem == self.monitor.reference.content_hash[:12]:
            return
        profile = Profile.load(latest.detail["reference"])
        self.monitor.use_reference(profile)
        self._checked_against(profile)
        log.info("reference: %s, re-baselined by %s", latest.detail["reference"], latest.who)

    def _checked_against(self, profile: Profile) -> None:
        """The policy's baselines and reference_info follow the monitor's new reference."""
        if self.policy is not None:
            self.policy.baselines = profile.baselines
        self.metrics.reference_info.clear()
        self.metrics.reference_info.labels(version=profile.content_hash[:12]).set(1)

    def leader_tick(self) -> bool:
        """Take or keep leadership (every leader.renew_s); on taking it, go on from what the store says."""
        try:
            held = self.leadership.try_acquire()
        except Exception:  # noqa: BLE001 - cannot tell: do not act
            log.exception("leader election failed")
            held = False
        if held and not self._acting:  # taking leadership, or starting as the leader
            log.info("%s is the leader now: deciding and acting", self.identity)
            if self.policy is not None:
                self.policy.reload()
            if self.retrain is not None:
                self.retrain.recover()  # runs the previous leader left queued or training will not finish
        elif self._acting and not held:
            log.warning("%s is no longer the leader: ingesting and publishing its windows only", self.identity)
        self.is_leader = self._acting = held
        self.metrics.leader.set(int(held))
        if held and not isinstance(self.leadership, Always):
            self.registry.set_leader("driftwatch", self.identity, self.advertise_url, time.time())
        return held

    @property
    def advertise_url(self) -> str | None:
        cfg, http = self.settings.leader, self.http
        if cfg.advertise_url:
            return cfg.advertise_url
        if http is None:
            return None
        return f"http://{os.environ['POD_IP']}:{http.port}" if os.environ.get("POD_IP") else http.url

    def forward_to(self) -> str | None:
        """None on the leader (it acts); else the leader's control API, where a follower sends the call."""
        if self.is_leader:
            return None
        record = self.registry.leader("driftwatch")
        if record is None or not record[1]:
            raise ControlError("no leader yet: the replicas are electing one; try again in a few seconds", status=503)
        return record[1]

    def report(self, adapter: str, out_dir: Path) -> tuple[Path, Path]:
        """Evidently's report for an adapter's window (the one checks look at) against the reference."""
        if self.monitor is None or self.monitor.reference is None:
            raise ReportError("no reference profile configured: set monitor.reference_path (see driftwatch baseline)")
        rows = self.monitor.rows(adapter)
        if rows is None:
            known = ", ".join(sorted(self.last_snapshot.adapters)) if self.last_snapshot else ""
            raise LookupError(f"no window for adapter '{adapter}'" + (f"; adapters seen: {known}" if known else ""))
        files = evidently_report(self.monitor.reference.sample, rows, out_dir, f"report-{adapter}",
                                 title=f"driftwatch: adapter {adapter} vs reference {self.monitor.reference.content_hash[:12]}")
        return files.html, files.json

    def on_retrain(self, request: RetrainRequest) -> str | None:
        """A retrain was decided (a rule on the policy's tick, an alert, a person). The window's rows are taken now;
        the evidence (driftwatch's verdicts and Evidently's report on them) and the run follow on the worker. Returns
        the id the run will have (recorded as queued), None when no retrain stage is configured."""
        view = self.last_snapshot.adapters.get(request.adapter) if self.last_snapshot else None
        rows = (self.monitor.rows(request.adapter) if self.monitor else None) or []
        run_id = None if self.retrain is None else self.retrain.queue(
            request.adapter, decision_id=request.decision_id, focus_routes=request.routes,
            reason=" | ".join(request.reasons))
        self.worker.submit(self._after_retrain_decision, request, view, rows, run_id)
        return run_id

    # -- control API (control.py): what a person or Alertmanager may ask ----------------------------------------------
    def status(self) -> dict:
        return status_document(self.settings, self.policy.store, self.rollout, self.last_snapshot)

    def request_retrain(self, adapter: str, reason: str, who: str, routes: tuple[str, ...] = ()) -> dict:
        if self.retrain is None:
            raise ControlError("no retrain stage: set retrain.base_model and retrain.golden_set")
        if running := self.retrain.active():
            raise ControlError(f"retrain run {running[0].id} is {running[0].status}; wait for it to finish")
        d = self.policy.request_retrain(adapter, "manual", (f"manual, by {who}: {reason}",), time.time(), routes=routes,
                                        manual=True)
        if d.action != "retrain":
            raise ControlError(d.reasons[-1])
        return {"decision_id": d.id, "run_id": d.run_id}

    def rollback(self, reason: str, who: str) -> str:
        if self.rollout is None:
            raise ControlError("no rollout stage configured")
        return self.rollout.rollback(who=who, why=reason)

    def set_paused(self, paused: bool, reason: str, who: str) -> bool:
        self.policy.pause(paused, who, reason, time.time())
        return paused

    def alertmanager(self, payload: dict) -> dict:
        """Firing alerts named in control.retrain_alerts, with an ``adapter`` label, become retrain requests through
        the policy (pause, cooldown and daily cap apply), once per occurrence: fingerprint + startsAt."""
        wanted, now = set(self.settings.control.retrain_alerts), time.time()
        out: dict = {"retrain": [], "held": [], "duplicate": 0, "ignored": 0}
        for alert in payload["alerts"]:
            labels = alert.get("labels") or {}
            name, adapter = labels.get("alertname"), labels.get("adapter")
            if alert.get("status") != "firing" or name not in wanted or not adapter:
                outcome = "ignored"
            elif not self.policy.store.claim_occurrence(fp := str(alert.get("fingerprint")),
                                                         starts := str(alert.get("startsAt")), now):
                outcome = "duplicate"
            else:
                why = (alert.get("annotations") or {}).get("summary") or name
                try:
                    d = self.policy.request_retrain(adapter, f"alert:{name}", (f"Alertmanager: {why}",), now)
                except Exception:
                    # nothing decided: give the occurrence back, so Alertmanager's retry of this call is not a duplicate
                    self.policy.store.release_occurrence(fp, starts)
                    raise
                outcome = "retrain" if d.action == "retrain" else "held"
                out[outcome].append({"alert": name, "adapter": adapter, "decision_id": d.id, "run_id": d.run_id,
                                     **({"reason": d.reasons[-1]} if outcome == "held" else {})})
            if outcome in ("duplicate", "ignored"):
                out[outcome] += 1
            self.metrics.webhook_alerts.labels(outcome=outcome).inc()
        return out

    def _after_retrain_decision(self, request: RetrainRequest, view, rows, run_id: str | None = None) -> None:
        evidence = None
        if view is not None and self.monitor is not None:
            try:
                evidence = write_evidence(self.settings.daemon.state_dir / "evidence", request.decision_id, view,
                                          self.monitor.reference, rows, request.reasons)
                if self.policy is not None:
                    self.policy.store.attach_evidence(request.decision_id, str(evidence))
            except Exception:  # noqa: BLE001 - losing the evidence must not lose the decision
                log.exception("could not write the evidence for decision %d", request.decision_id)
        if self.retrain is None:
            log.warning("retrain requested for adapter '%s' by rule %s (decision %d, evidence %s); recorded only: "
                        "set retrain.base_model and retrain.golden_set to run it", request.adapter, request.rule,
                        request.decision_id, evidence)
            return
        run = self.retrain.run(request.adapter, decision_id=request.decision_id, focus_routes=request.routes,
                               reason=" | ".join(request.reasons), run_id=run_id)
        self.after_run(run)

    def after_run(self, run: RunRecord) -> None:
        """A succeeded run's adapter is registered as a candidate and, with rollout.auto_promote, rolled out (the
        rollout tick evaluates it, and promotes it only if every gate passes)."""
        if run.status != "succeeded" or self.rollout is None or run.output is None:
            return
        version = version_name(run.id)
        try:
            self.rollout.register(version, Path(run.output) / "adapter", run_id=run.id, parent=run.adapter)
            if self.settings.rollout.auto_promote:
                self.rollout.start(version, why=f"retrain run {run.id}" + (
                    f" on decision #{run.decision_id}" if run.decision_id else " (manual)"))
        except RolloutError as exc:
            log.error("candidate %s from run %s not rolled out: %s", version, run.id, exc)

    def after_promotion(self, r: RolloutRecord) -> None:
        """A promotion that followed input drift: the promoted adapter's window becomes the reference (a new
        version, saved and recorded), so the drift that was answered does not trigger again."""
        store = self.policy.store if self.policy is not None else None
        adapter = self.rollout.store.adapter(r.candidate)
        run = store.run(adapter.run_id) if store is not None and adapter and adapter.run_id else None
        decision = store.decision(run.decision_id) if run is not None and run.decision_id else None
        rule = next((x for x in self.settings.policy.rules if decision is not None and x.name == decision.rule), None)
        if rule is None or rule.signal != "input_drift" or self.monitor is None:
            return
        profile = self.monitor.rebaseline(r.candidate, source=f"driftwatch: {r.candidate}'s window after rollout {r.id}")
        path = self.settings.daemon.state_dir / "references" / f"{profile.content_hash[:12]}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        profile.save(path)
        self._checked_against(profile)
        self.rollout.store.commit(time.time(), "driftwatch", "rebaselined", r.candidate,
                                  f"input drift triggered this promotion (decision #{decision.id}); new reference "
                                  f"{profile.content_hash[:12]}", detail={"reference": str(path)})
        log.info("re-baselined the reference on %s: %s", r.candidate, path)

    def _rollout_tick(self) -> None:
        # a step (an evaluation) can outlast many ticks: the scheduler may start a second instance, which returns
        # at once instead of the scheduler logging a skipped run every tick
        if not self.is_leader or not self._rollout_busy.acquire(blocking=False):
            return
        try:
            self.rollout.tick(self.last_snapshot)
            self.rollout.reconcile()
        except Exception:  # noqa: BLE001 - the next tick tries again; the rollout's state is in the store
            log.exception("rollout tick failed")
        finally:
            self._rollout_busy.release()

    def _start_checks(self):
        if self.monitor is None:
            return None
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(daemon=True)
        if not isinstance(self.leadership, Always):
            scheduler.add_job(self.leader_tick, "interval", seconds=self.settings.leader.renew_s, id="leader",
                              max_instances=1, coalesce=True)
        scheduler.add_job(self._check_logged, "interval", seconds=self.settings.monitor.check_interval_s,
                          id="monitor-check", max_instances=1, coalesce=True)
        if self.rollout is not None:
            scheduler.add_job(self._rollout_tick, "interval", seconds=self.settings.rollout.tick_s, id="rollout-tick",
                              max_instances=2, coalesce=True, next_run_time=datetime.now())
        scheduler.start()
        return scheduler

    def _check_logged(self) -> None:
        try:
            self.check()
        except Exception:  # noqa: BLE001 - a failed check must not stop the next one; it is logged with its trace
            log.exception("monitor check failed")

    def _finish(self, batch: Batch, stop: threading.Event) -> bool:
        """Deliver dead letters and commit; while the dead-letter topic is down, retry and commit nothing."""
        while True:
            try:
                self.ingestor.finish(batch)
            except DeadLetterError as exc:
                batch.dead_letters = exc.pending  # type: ignore[assignment]
                if self.blocked_since is None:
                    self.blocked_since = time.monotonic()
                    self.metrics.dead_letter_blocked.set(1)
                log.error("dead-letter topic cannot be written; not committing offsets until it can: %s", exc)
                if stop.wait(self.settings.ingest.dead_letter_retry_s):
                    log.error("stopping with %d dead letter(s) unwritten; their offsets were not committed and the "
                              "records will be redelivered", len(batch.dead_letters))
                    return False
                self.last_tick = time.monotonic()
                continue
            if self.blocked_since is not None:
                log.info("dead-letter topic writable again after %.1fs", time.monotonic() - self.blocked_since)
                self.blocked_since = None
                self.metrics.dead_letter_blocked.set(0)
            return True

    def _close(self) -> None:
        for name, close in (("consumer", self.source.close), ("dead-letter producer", self.dead_letters.close)):
            try:
                close()
            except Exception:  # noqa: BLE001 - shutting down: log and go on closing the rest
                log.exception("error closing the %s", name)
        if self.rollout is not None:
            self.rollout.close()
            if self.rollout.store is not getattr(self.policy, "store", None):
                self.rollout.store.close()
        if self.policy is not None:
            self.policy.store.close()
        self.leadership.release()
        if self.http is not None:
            self.http.stop()


def build(settings: Settings, registry: CollectorRegistry | None = None, *, serve_http: bool = True) -> Daemon:
    """Wire the daemon from settings: metrics, HTTP, topic check, consumer, dead-letter producer, pipeline."""
    from driftwatch.ingest.kafka import KafkaDeadLetterSink, KafkaSource, ensure_topics

    if registry is None:
        registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=registry)
    m = settings.metrics
    metrics = Metrics(registry, max_adapters=m.max_adapters, max_routes=m.max_routes, latency_buckets_s=m.latency_buckets_s)
    metrics.build_info.labels(version=__version__).set(1)

    k, ing = settings.kafka, settings.ingest
    daemon: Daemon | None = None
    http = None
    if serve_http:
        http = HttpServer(build_app(registry, lambda: daemon.health() if daemon else (True, {"state": "starting"}),
                                    lambda: daemon.readiness() if daemon else (False, {"state": "starting"}),
                                    lambda adapter, scratch: daemon.report(adapter, scratch),
                                    control_routes(lambda: daemon, settings.control.secret())),
                          settings.http.host, settings.http.port).start()
    try:
        ensure_topics(k)
        source = KafkaSource(k)
        sink = KafkaDeadLetterSink(k)
    except Exception:
        if http is not None:
            http.stop()
        raise
    settings.daemon.state_dir.mkdir(parents=True, exist_ok=True)
    join = DedupWindow(ing.dedup_max_entries, ing.dedup_max_age_s)  # request_id -> adapter, for feedback
    signals = AdapterSignals(metrics, join)
    pol, rt = settings.policy, settings.retrain
    store, adapters = open_stores(settings.state_store_path, settings.registry_path)
    rebaselined = next(iter(adapters.events(kind="rebaselined", limit=1)), None)
    if rebaselined is not None and settings.monitor.reference_path is not None:
        log.info("reference: %s (re-baselined after a promotion; monitor.reference_path %s is older)",
                 rebaselined.detail["reference"], settings.monitor.reference_path)
        settings = settings.model_copy(update={"monitor": settings.monitor.model_copy(
            update={"reference_path": Path(rebaselined.detail["reference"])})})
    monitor = build_monitor(settings, join)
    harvest = Harvester(store, rt.harvest_max_pending, ing.dedup_max_age_s, metrics) if rt.harvest_max_pending else None
    ingestor = Ingestor(
        source, sink, metrics,
        kinds={k.topics.inference: "inference", k.topics.feedback: "feedback"},
        max_record_bytes=ing.max_record_bytes,
        dedup=DedupWindow(ing.dedup_max_entries, ing.dedup_max_age_s),
        # one journal per pod: replicas may share daemon.state_dir (one volume), never this file
        journal=OffsetJournal(settings.daemon.state_dir / "".join(
            ("offsets-", k.consumer.group_id, f"-{os.environ['POD_NAME']}" if os.environ.get("POD_NAME") else "", ".json"))),
        downstream=lambda events: (signals(events), monitor.observe(events), harvest and harvest(events)),
        group_id=k.consumer.group_id,
        dead_letter_head_bytes=ing.dead_letter_head_bytes,
        dead_letter_max_bytes=max(1024, k.producer.max_request_size - DEAD_LETTER_HEADROOM),
        feedback_hold_s=ing.feedback_hold_s, max_held=max(1, ing.dedup_max_entries // 4),
    )
    policy = Policy(
        [RuleSpec(**rule.model_dump()) for rule in pol.rules],
        store,
        metrics, cooldown_s=pol.cooldown_s, max_retrains_per_day=pol.max_retrains_per_day,
        baselines=monitor.reference.baselines if monitor.reference else None,
        on_retrain=lambda request: daemon.on_retrain(request),
    )
    retrain = None
    if rt.base_model is not None:
        retrain = RetrainService(rt, settings.daemon.state_dir, store, build_runner(rt, settings.daemon.state_dir), metrics)
    for name in settings.control.retrain_alerts:
        metrics.retrain_requests.labels(rule=f"alert:{name}")
    rollout = RolloutController(settings, adapters, metrics=metrics, on_done=lambda r: daemon.after_promotion(r))
    policy.busy = lambda: (f"rollout {r.id} of {r.candidate} is in progress ({r.phase})"
                           if (r := rollout.active()) is not None else None)
    holder = leader.identity()
    daemon = Daemon(settings, metrics, source, sink, ingestor, monitor, policy, http, retrain=retrain, rollout=rollout,
                    leadership=leader.build(settings.leader, settings.daemon.state_dir, holder), identity=holder)
    daemon.leader_tick()  # before the first check: a replica that can lead at once does
    if monitor.reference is not None:
        metrics.reference_info.labels(version=monitor.reference.content_hash[:12]).set(1)
    return daemon


def status_document(settings: Settings, store: StateStore, rollout: RolloutController,
                    snapshot: MonitorSnapshot | None = None) -> dict:
    """What `GET /v1/status` answers (and `driftwatch status --local` prints): from the state store and the
    registry (the rollout controller's), plus the daemon's last snapshot of the windows when there is one."""
    table_version, aliases = rollout.store.alias_table()
    active = rollout.active()
    specs = {r.name: r for r in settings.policy.rules}
    return {
        "paused": paused_in(store),
        "leader": None if (lead := rollout.store.leader("driftwatch")) is None else {
            "holder": lead[0], "url": lead[1], "since": lead[2], "renewed": lead[3]},
        "production": rollout.production(),
        "aliases": aliases, "alias_table_version": table_version,
        "rollout": None if active is None else {"id": active.id, "candidate": active.candidate,
                                                "previous": active.previous, "phase": active.phase,
                                                "since": active.phase_since, "failed_checks": active.failed_checks},
        "rules": [{"rule": name, "adapter": adapter, "state": st.state, "since": st.since, "value": st.value,
                   "signal": specs[name].signal, "op": specs[name].op, "threshold": specs[name].threshold,
                   "for_s": specs[name].for_s, "action": specs[name].action}
                  for (name, adapter), st in sorted(store.rule_states().items()) if name in specs],
        "windows": {} if snapshot is None else {
            a: {**live_signals(view), "drifted": view.drifted_features, "closed": view.window_closed}
            for a, view in sorted(snapshot.adapters.items())},
        "runs": [{"id": r.id, "adapter": r.adapter, "status": r.status, "decision_id": r.decision_id,
                  "started": r.started, "finished": r.finished, "reason": r.reason} for r in store.runs(limit=10)],
        "decisions": [{"id": d.id, "at": d.at, "adapter": d.adapter, "action": d.action, "rule": d.rule,
                       "reasons": d.reasons, "evidence": d.evidence} for d in store.decisions(limit=10)],
    }


def build_monitor(settings: Settings, join: DedupWindow | None = None) -> Monitor:
    mon = settings.monitor
    reference = Profile.load(mon.reference_path) if mon.reference_path else None
    if reference is None:
        log.warning("no monitor.reference_path: drift checks are off, quality signals only")
    fx = FeatureExtractor(mon.refusal_patterns) if mon.refusal_patterns else FeatureExtractor()
    embed = None
    if mon.semantic_sample:
        from driftwatch.monitor.semantic import INSTALL, Embedder, model_dir

        if model_dir() is None:
            raise ConfigError([ConfigProblem("monitor.semantic_sample", "the semantic check needs the embedding model",
                                             f"{INSTALL}, or set it to 0")])
        if reference is None or not reference.semantic:
            raise ConfigError([ConfigProblem("monitor.semantic_sample", "the reference profile has no prompt embeddings",
                                             "rebuild it with `driftwatch baseline --semantic`, or set it to 0")])
        embed = Embedder()
    return Monitor(
        reference,
        MonitorSettings(window_events=mon.window_events, window_seconds=mon.window_seconds,
                        max_categories=mon.max_categories, alpha=mon.alpha, min_samples=mon.min_samples,
                        psi_floor=mon.psi_floor, cramers_v_floor=mon.cramers_v_floor,
                        diversity_sample=mon.diversity_sample, report_sample=mon.report_sample,
                        semantic_sample=mon.semantic_sample, semantic_floor=mon.semantic_floor,
                        semantic_permutations=mon.semantic_permutations),
        join=join, extractor=fx, max_adapters=settings.metrics.max_adapters, embed=embed,
    )
