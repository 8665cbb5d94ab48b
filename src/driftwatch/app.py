"""Composition root: the only place that wires concrete classes together, and the daemon's lifecycle.

``build(settings)`` returns a :class:`Daemon`. The daemon keeps lifecycle only: the ingest loop (on the calling
thread), the HTTP server, and the control loop's tick thread (control/reconciler.py, where what happens after a
decision lives). ``Daemon.run(stop)`` ingests until ``stop`` is set, then closes in this order:

1. the batch in hand is finished (dead letters acknowledged, examples saved, offsets committed), in the loop;
2. the control loop stops: a tick in progress finishes, then its jobs are cancelled and awaited (a training run in
   progress is recorded as cancelled);
3. the consumer closes (it leaves the group), then the dead-letter producer;
4. leadership is released, vLLM clients and the stores close;
5. the HTTP server stops.

The other factories here (:func:`retrain_service`, :func:`rollout_controller`, :func:`evaluator`) are what the CLI
uses for the same parts, so it never builds them again.
"""

from __future__ import annotations

import functools
import enum
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector

from driftwatch import __version__
from driftwatch.config import Settings
from driftwatch.control import leader
from driftwatch.control.api import control_routes, daemon_app
from driftwatch.control.jobs import InlineJobs, Jobs
from driftwatch.control.policy import Policy
from driftwatch.control.reconciler import Reconciler
from driftwatch.control.rollout import RolloutController
from driftwatch.errors import ConfigError, ConfigProblem, DeadLetterError, IngestError, ReportError, StoreError
from driftwatch.http import HttpServer
from driftwatch.ingest.pipeline import Batch, DeadLetterSink, Ingestor, OffsetJournal, Source, windowed
from driftwatch.ingest.recent import DedupWindow
from driftwatch.metrics import Metrics
from driftwatch.monitor.features import FeatureExtractor
from driftwatch.monitor.monitor import Monitor, MonitorSettings
from driftwatch.monitor.report import evidently_report
from driftwatch.monitor.signals import AdapterSignals
from driftwatch.monitor.sketch import Profile
from driftwatch.retrain import harvest
from driftwatch.retrain.service import RetrainService, build_runner
from driftwatch.state.store import SqlStore, open_stores

log = logging.getLogger("driftwatch")

DEAD_LETTER_HEADROOM = 64 * 1024  # room for headers and batch overhead under the producer's max_request_size
POLL_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)  # after a failed poll: the broker is away


class BrokerWatch:
    """The broker's reachability in driftwatch's own words (kafka-python's lines are kept, not printed: log.KAFKA):
    one line when the broker is lost (since when, what failed), one a minute while the loss lasts, one when it is
    back (after how long); ``driftwatch_broker_up`` follows, 0 once unreachable for ``lost_after_s``. And a consumer
    that is not a member of its group says so after a minute, and every three, with why."""

    def __init__(self, metrics: Metrics, servers: str, group: str, lost_after_s: float = 5.0,
                 clock=time.monotonic) -> None:
        self.metrics, self.servers, self.group, self.lost_after_s, self.clock = metrics, servers, group, lost_after_s, clock
        self.down_since: float | None = None  # unreachable or failing since
        self.lost = False
        self._next_line = 0.0
        self._errors = 0  # kafka-python's error lines when the loss began
        self._failed = 0  # failed polls since the loss began
        self._unjoined_line = 0.0

    def observe(self, reachable: bool, failure: Exception | None = None) -> None:
        from driftwatch.log import KAFKA

        now = self.clock()
        if reachable and failure is None:
            if self.lost:
                log.warning("the broker is back after %s: reading goes on from the committed offsets (records read "
                            "again count as duplicates); %d failed polls, %d client errors meanwhile",
                            _span(now - self.down_since), self._failed, KAFKA.count - self._errors)
            self.down_since, self.lost, self._failed = None, False, 0
            self.metrics.broker_up.set(1)
            return
        self._failed += failure is not None
        if self.down_since is None:
            self.down_since, self._errors = now, KAFKA.count
        if not self.lost and now - self.down_since >= self.lost_after_s:
            self.lost, self._next_line = True, now + 60
            self.metrics.broker_up.set(0)
            since = time.strftime("%H:%M:%S", time.localtime(time.time() - (now - self.down_since)))
            log.error("lost the broker (%s) at %s: %s; retrying, and saying so once a minute", self.servers, since,
                      failure or KAFKA.last or "no live connection")
        elif self.lost and now >= self._next_line:
            self._next_line = now + 60
            log.warning("the broker (%s) is still unreachable after %s (%d failed polls, %d client errors; last: "
                        "%s); retrying", self.servers, _span(now - self.down_since), self._failed,
                        KAFKA.count - self._errors, failure or KAFKA.last or "no live connection")

    def unjoined(self, since: float | None, why) -> None:
        """Not a member of the group since ``since`` (None: a member): a line after a minute, then every three."""
        now = self.clock()
        if since is None:
            self._unjoined_line = 0.0
            return
        if now - since >= 60 and now >= self._unjoined_line:
            self._unjoined_line = now + 180
            log.warning("not a member of consumer group '%s' for %s: %s", self.group, _span(now - since), why())


def _span(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s} s" if minutes else f"{s} s"


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
    control: Reconciler | None = None
    http: HttpServer | None = None
    stores: tuple[SqlStore, ...] = ()
    state: State = State.STARTING
    blocked_since: float | None = None  # dead letters (or harvested examples) cannot be written
    failing_since: float | None = None  # polls fail: the broker is away
    unjoined_since: float | None = None  # running, not (or no longer) a member of the consumer group
    last_tick: float = field(default_factory=time.monotonic)
    broker: BrokerWatch | None = None

    # -- probes -------------------------------------------------------------------------------------------------------
    def health(self) -> tuple[bool, dict]:
        """Alive: the loop turns, and it has not been unable to join or to poll for ``daemon.stuck_after_s`` (a
        restart is what is left to try: a broker that never evicts a killed member, a client stuck in a state)."""
        now = time.monotonic()
        age = now - self.last_tick
        stuck = {why: round(now - since, 1) for why, since in (("not_joined_s", self.unjoined_since),
                                                                ("polls_failing_s", self.failing_since))
                 if since is not None and now - since > self.settings.daemon.stuck_after_s}
        ok = age < max(60.0, 3 * self.settings.kafka.consumer.poll_timeout_ms / 1000) and not stuck
        return ok, {"state": self.state.value, "loop_age_s": round(age, 3), **stuck}

    def readiness(self) -> tuple[bool, dict]:
        """Ready: ingesting. Running, a member of its group, the broker reachable, nothing blocked. The control API
        is served whatever this says (the Service publishes not-ready addresses: pause and rollback are needed
        exactly during an outage); docs/operations.md."""
        joined = self.source.joined
        unavailable = self.failing_since is not None or (self.broker is not None and self.broker.lost)
        ok = self.state is State.RUNNING and joined and self.blocked_since is None and not unavailable
        return ok, {"state": self.state.value, "joined": joined, "dead_letter_blocked": self.blocked_since is not None,
                    "broker_unavailable": unavailable}

    # -- the ingest loop ----------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> int:
        """Ingest until ``stop`` is set; return the exit code (0 clean, 1 stopped with work that will be redelivered)."""
        self.state = State.RUNNING
        self.unjoined_since = time.monotonic()
        code = 0
        joined = False
        failures = 0
        if self.control is not None:
            self.control.start()
        try:
            while not stop.is_set():
                self.last_tick = time.monotonic()
                try:
                    batch = self.ingestor.poll()
                except IngestError as exc:  # the broker went away mid-poll: wait, and poll again
                    failures += 1
                    self._failing(exc, failures)
                    self._watch(exc)
                    stop.wait(POLL_BACKOFF_S[min(failures, len(POLL_BACKOFF_S)) - 1])
                    continue
                self._watch(None)
                if failures:
                    log.info("polling again after %d failed poll(s)", failures)
                    failures, self.failing_since = 0, None
                if not joined and self.source.joined:
                    joined = True
                    self.metrics.consumer_joined.set(1)
                if self.source.joined:
                    self.unjoined_since = None
                elif self.unjoined_since is None:
                    self.unjoined_since = time.monotonic()
                if batch is not None and not self._finish(batch, stop):
                    code = 1
                    break
                if self.monitor is not None:
                    self.monitor.maintain()  # close windows whose time is up; publish when asked
        finally:
            self.state = State.DRAINING
            self._close()
            self.state = State.STOPPED
        return code

    def _watch(self, failure: Exception | None) -> None:
        if self.broker is not None:
            self.broker.observe(getattr(self.source, "reachable", lambda: True)(), failure)
            self.broker.unjoined(self.unjoined_since,
                                 getattr(self.source, "why_unjoined", lambda: "the group has not assigned partitions"))

    def _failing(self, exc: IngestError, failures: int) -> None:
        if self.failing_since is None:
            self.failing_since = time.monotonic()
        self.metrics.poll_failures.inc()
        log.debug("poll failed (%d in a row; retrying with backoff): %s", failures, exc)  # BrokerWatch says it

    def _finish(self, batch: Batch, stop: threading.Event) -> bool:
        """Deliver dead letters, save examples and commit; while either cannot be written, retry and commit nothing."""
        while True:
            try:
                self.ingestor.finish(batch)
            except (DeadLetterError, StoreError) as exc:
                if isinstance(exc, DeadLetterError):
                    batch.dead_letters = exc.pending  # type: ignore[assignment]
                if self.blocked_since is None:
                    self.blocked_since = time.monotonic()
                    self.metrics.dead_letter_blocked.set(1)
                log.error("the batch cannot be finished; not committing offsets until it can: %s", exc)
                if stop.wait(self.settings.ingest.dead_letter_retry_s):
                    log.error("stopping with %d dead letter(s) and %d example(s) unwritten; their offsets were not "
                              "committed and the records will be redelivered", len(batch.dead_letters),
                              len(batch.examples))
                    return False
                self.last_tick = time.monotonic()
                continue
            if self.blocked_since is not None:
                log.info("the batch finished after %.1fs blocked", time.monotonic() - self.blocked_since)
                self.blocked_since = None
                self.metrics.dead_letter_blocked.set(0)
            return True

    def _close(self) -> None:
        """The close order of the module's docstring (the batch in hand was finished by the loop)."""
        steps = [("control loop", self.control.stop if self.control is not None else None),
                 ("consumer", self.source.close), ("dead-letter producer", self.dead_letters.close),
                 ("leadership", self.control.leadership.release if self.control is not None else None),
                 ("vLLM clients", self.control.rollouts.close if self.control is not None else None),
                 *((f"store {i}", s.close) for i, s in enumerate(self.stores)),
                 ("HTTP server", self.http.stop if self.http is not None else None)]
        for name, close in steps:
            if close is None:
                continue
            try:
                close()
            except Exception:  # noqa: BLE001 - shutting down: log and go on closing the rest
                log.exception("error closing the %s", name)

    def report(self, adapter: str, out_dir: Path) -> tuple[Path, Path]:
        """Evidently's report for an adapter's window (the one checks look at) against the reference."""
        windows = self.monitor.latest() if self.monitor is not None else None
        if windows is None or windows.reference is None:
            raise ReportError("no reference profile configured: set monitor.reference_path (see driftwatch baseline)")
        view = windows.views.get(adapter)
        if view is None:
            known = ", ".join(sorted(windows.views))
            raise LookupError(f"no window for adapter '{adapter}'" + (f"; adapters seen: {known}" if known else ""))
        files = evidently_report(windows.reference.sample, list(view[0].rows), out_dir, f"report-{adapter}",
                                 title=f"driftwatch: adapter {adapter} vs reference {windows.reference.content_hash[:12]}")
        return files.html, files.json


def build(settings: Settings, registry: CollectorRegistry | None = None, *, serve_http: bool = True) -> Daemon:
    """Wire the daemon from settings: metrics, HTTP, topic check, consumer, dead-letter producer, the ingest
    pipeline and its monitor, the stores, the control loop and what it drives."""
    from driftwatch.ingest.kafka import KafkaDeadLetterSink, KafkaSource, ensure_topics

    if registry is None:
        registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=registry)
    m = settings.metrics
    metrics = Metrics(registry, max_adapters=m.max_adapters, latency_buckets_s=m.latency_buckets_s)
    metrics.build_info.labels(version=__version__).set(1)

    k, ing, rt = settings.kafka, settings.ingest, settings.retrain
    daemon: Daemon | None = None  # the HTTP server answers from the start: "starting" until the daemon exists
    http = None
    if serve_http:
        http = HttpServer(daemon_app(registry, lambda: daemon.health() if daemon else (True, {"state": "starting"}),
                                     lambda: daemon.readiness() if daemon else (False, {"state": "starting"}),
                                     control_routes(lambda: daemon.control if daemon else None,
                                                    settings.control.secret(),
                                                    lambda adapter, scratch: daemon.report(adapter, scratch))),
                          settings.http.host, settings.http.port).start()
    otlp_topics = [s.topic for s in ing.sources]
    try:
        if otlp_topics:
            from driftwatch.ingest.otel import load_proto

            load_proto()  # the otel extra is installed (ConfigError otherwise), before anything joins the group
        ensure_topics(k, otlp_topics)
        source = KafkaSource(k, otlp_topics)
        sink = KafkaDeadLetterSink(k)
    except Exception:
        if http is not None:
            http.stop()
        raise
    settings.daemon.state_dir.mkdir(parents=True, exist_ok=True)
    store, adapters = open_stores(settings.state_store_path, settings.registry_path)
    rebaselined = next(iter(adapters.events(kind="rebaselined", limit=1)), None)
    if rebaselined is not None and settings.monitor.reference_path is not None:
        log.info("reference: %s (re-baselined after a promotion; monitor.reference_path %s is older)",
                 rebaselined.detail["reference"], settings.monitor.reference_path)
        settings = settings.model_copy(update={"monitor": settings.monitor.model_copy(
            update={"reference_path": Path(rebaselined.detail["reference"])})})
    monitor = build_monitor(settings)
    signals = AdapterSignals(metrics)
    spans = otlp_decoders(settings, adapters)

    def save_examples(examples: list) -> None:
        store.add_examples(examples)
        for e in examples:
            metrics.training_examples.labels(source=e.source).inc()

    ingestor = Ingestor(
        source, sink, metrics,
        kinds={k.topics.inference: "inference", k.topics.feedback: "feedback"},
        max_record_bytes=ing.max_record_bytes,
        dedup=DedupWindow(ing.dedup_max_entries, ing.dedup_max_age_s),
        # one journal per pod: replicas may share daemon.state_dir (one volume), never this file
        journal=OffsetJournal(settings.daemon.state_dir / "".join(
            ("offsets-", k.consumer.group_id, f"-{os.environ['POD_NAME']}" if os.environ.get("POD_NAME") else "", ".json"))),
        downstream=(lambda items: (signals(items), monitor.observe(windowed(items)))) if spans
        else (lambda items: (signals(items), monitor.observe(items))),
        label=metrics.adapter_cap,
        harvest=functools.partial(harvest.example, trusted_callers=frozenset(rt.trusted_callers),
                                  skipped=lambda reason: metrics.harvest_skipped.labels(reason=reason).inc())
        if rt.harvest_max_pending else None, save_examples=save_examples,
        max_kept=rt.harvest_max_pending,
        group_id=k.consumer.group_id,
        dead_letter_head_bytes=ing.dead_letter_head_bytes,
        dead_letter_max_bytes=max(1024, k.producer.max_request_size - DEAD_LETTER_HEADROOM),
        feedback_hold_s=ing.feedback_hold_s, max_held=max(1, ing.dedup_max_entries // 4), held_feedback=store,
        spans=spans,
    )
    pol = settings.policy
    policy = Policy(pol.rules, store, metrics, cooldown_s=pol.cooldown_s, max_retrains_per_day=pol.max_retrains_per_day,
                    max_attempts=pol.max_attempts, min_new_examples=settings.retrain.min_new_examples)
    for name in settings.control.retrain_alerts:
        metrics.retrain_requests.labels(rule=f"alert:{name}")
    jobs = Jobs()
    holder = leader.identity()
    control = Reconciler(settings, store=store, registry=adapters, metrics=metrics, monitor=monitor, policy=policy,
                         rollouts=rollout_controller(settings, adapters, metrics=metrics, jobs=jobs, monitor=monitor,
                                                     state=store),
                         retrain=retrain_service(settings, store, metrics, adapters), jobs=jobs,
                         leadership=leader.build(settings.leader, settings.daemon.state_dir, holder), identity=holder)
    control.advertise_url = advertise_url(settings, http)
    daemon = Daemon(settings, metrics, source, sink, ingestor, monitor, control, http,
                    stores=(store,) if adapters is store else (store, adapters),
                    broker=BrokerWatch(metrics, ",".join(settings.kafka.bootstrap_servers),
                                       settings.kafka.consumer.group_id))
    return daemon


def otlp_decoders(settings: Settings, registry: SqlStore) -> dict:
    """ingest.sources' decoders by topic (ingest/otel.py, loaded only when there are sources): model names resolve
    against the registry as the gateway's do (the base model only when the gateway serves it)."""
    if not settings.ingest.sources:
        return {}
    from driftwatch.ingest.otel import SpanDecoder
    from driftwatch.state.names import ModelNames

    gw = settings.gateway
    names = ModelNames(registry, extra=frozenset({gw.base_model}) if gw.serve_base_model else frozenset(),
                       refresh_s=max(gw.alias_poll_s, 5.0))
    return {s.topic: SpanDecoder(s.format, names.resolve, refresh=names.refresh_if_due, base_model=gw.base_model,
                                 max_bytes=settings.ingest.max_record_bytes, trusted=s.trusted)
            for s in settings.ingest.sources}


def advertise_url(settings: Settings, http: HttpServer | None) -> str | None:
    """Where other replicas reach this one's control API: leader.advertise_url, else http://$POD_IP:<port>."""
    if settings.leader.advertise_url:
        return settings.leader.advertise_url
    if http is None:
        return None
    return f"http://{os.environ['POD_IP']}:{http.port}" if os.environ.get("POD_IP") else http.url


def retrain_service(settings: Settings, store: SqlStore, metrics: Metrics | None = None,
                    registry: SqlStore | None = None) -> RetrainService | None:
    """The retrain stage, when retrain.base_model is set (else retrain decisions are recorded only)."""
    rt = settings.retrain
    if rt.base_model is None:
        return None

    def adapter_path(name: str) -> str | None:  # the registry's path: never one a client sent
        if registry is None:
            return None
        weights = registry.alias_table()[1].get(name)  # an alias (an alert's "production"): what it serves most
        record = registry.adapter(max(weights, key=weights.get) if weights else name)
        return record.path if record is not None else None

    return RetrainService(rt, settings.daemon.state_dir, store, build_runner(rt, settings.daemon.state_dir), metrics,
                          adapter_path=adapter_path)


def rollout_controller(settings: Settings, registry: SqlStore, *, metrics: Metrics | None = None,
                       jobs: Jobs | InlineJobs | None = None, monitor: Monitor | None = None,
                       state: SqlStore | None = None) -> RolloutController:
    """The rollout stage on the registry; without ``jobs`` its evaluation runs inline (the CLI)."""
    return RolloutController(settings, registry, metrics=metrics, jobs=jobs, monitor=monitor, state=state)


def evaluator(settings: Settings, client):
    """The evaluator on one vLLM client (the CLI's `driftwatch evaluate`; a rollout makes its own on first use)."""
    from driftwatch.evaluate.evaluator import Evaluator, reports_dir

    return Evaluator(settings.evaluate, client, settings.retrain.golden_set,
                     reports_dir(settings.evaluate, settings.daemon.state_dir), base=settings.gateway.base_model)


def build_monitor(settings: Settings) -> Monitor:
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
        extractor=fx, embed=embed,
    )
