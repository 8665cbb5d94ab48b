"""Every Prometheus metric driftwatch exports, defined once.

The registry is injected: the daemon passes one registry, tests pass a fresh ``CollectorRegistry()`` and read
values back with ``registry.get_sample_value``. Names are ``driftwatch_*``, in base units, counters end in
``_total``. Label values that come from data (adapter) go through a :class:`LabelCap`, so 10k adapter names cannot make
10k series: past the cap they become ``"other"``. Values computed at a moment (consumer lag, the monitor's window
gauges) are served by collectors that read the latest snapshot at scrape time.

Stages record into these objects; nothing here does I/O.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from driftwatch.events import Reason

OTHER = "other"
UNKNOWN = "unknown"

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


MAX_LABEL_CHARS = 128
_LABEL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/@+-")


def label_value(value: str) -> str:
    """A label value as exported: at most MAX_LABEL_CHARS characters, each outside ``[A-Za-z0-9._:/@+-]`` as ``_``."""
    value = value[:MAX_LABEL_CHARS]
    return value if all(c in _LABEL_SAFE for c in value) else "".join(c if c in _LABEL_SAFE else "_" for c in value)


class LabelCap:
    """Admit the first ``limit`` distinct values of a label; map every later one to ``"other"``. Reserved values
    (every alias and registered version: ``reserve``) always pass as themselves and take no place under the limit;
    every value is bounded and sanitized by :func:`label_value`."""

    __slots__ = ("limit", "_seen", "_reserved", "_overflow")

    def __init__(self, limit: int, overflow: Counter | None = None, label: str = "") -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._reserved: frozenset[str] = frozenset()
        self._overflow = overflow.labels(label=label) if overflow is not None else None

    def reserve(self, values) -> None:
        self._reserved = frozenset(label_value(v) for v in values)  # one reference swap: readers see old or new

    def __call__(self, value: str | None) -> str:
        if value is None:
            return UNKNOWN
        if value in self._reserved or value in self._seen:
            return value
        value = label_value(value)
        if value in self._reserved or value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        if self._overflow is not None:
            self._overflow.inc()
        return OTHER


class _LagCollector(Collector):
    """Consumer lag computed from the consumer's own high watermarks, read at scrape time from a snapshot."""

    def __init__(self) -> None:
        self.snapshot: Mapping[tuple[str, int], int] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "driftwatch_consumer_lag_records",
            "Records between the consumer's position and the partition's high watermark (from fetch responses)",
            labels=["topic", "partition"],
        )
        for (topic, partition), lag in sorted(self.snapshot.items()):
            family.add_metric([topic, str(partition)], lag)
        yield family


class _WindowCollector(Collector):
    """The monitor's window gauges, served from the last check's samples at scrape time (``Metrics.set_windows``):
    replaced by one reference swap, never cleared and refilled, so a scrape never sees a gap (which would reset a
    pending ``for:`` in an alert rule)."""

    FAMILIES = {  # name -> (metric, help, labels)
        "drift_score": ("driftwatch_drift_score", "Effect size of the last drift check: PSI (numeric) or Cramér's V "
                        "(categorical)", ("adapter", "feature")),
        "drift_p_value": ("driftwatch_drift_p_value", "p-value of the last drift check (binned KS or two-sample "
                          "chi-square)", ("adapter", "feature")),
        "drift_detected": ("driftwatch_drift_detected", "1 if the feature drifted (significant and above the effect "
                           "floor)", ("adapter", "feature")),
        "window_events": ("driftwatch_window_events", "Events in the window last checked, per adapter", ("adapter",)),
        "output_quality": ("driftwatch_output_quality", "Output quality of the window: refusal_rate, empty_rate, "
                           "distinct_1, distinct_2", ("adapter", "signal")),
        "error_ratio": ("driftwatch_error_ratio", "Share of requests with status error or timeout in the window",
                        ("adapter",)),
        "negative_feedback_ratio": ("driftwatch_negative_feedback_ratio", "Share of negative feedback in the window",
                                    ("adapter",)),
        "reference_info": ("driftwatch_reference_info", "The reference profile in use (content hash)", ("version",)),
        "last_check": ("driftwatch_last_check_timestamp_seconds", "Unix time of the last monitor check", ()),
    }

    def __init__(self) -> None:
        self.samples: Mapping[str, list] = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        samples = self.samples  # one read: the old set or the new one
        for key, (name, text, labels) in self.FAMILIES.items():
            family = GaugeMetricFamily(name, text, labels=list(labels))
            for values, value in samples.get(key, ()):
                family.add_metric(list(values), value)
            yield family


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_adapters: int = 100,
        latency_buckets_s: Iterable[float] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0),
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        self.build_info = Gauge("driftwatch_build_info", "driftwatch version running", ["version"], registry=r)

        # ingest
        self.records = Counter(
            "driftwatch_ingest_records", "Records read from Kafka, by topic and outcome (accepted, rejected, duplicate; "
            "skipped: an OTLP record without a GenAI span)",
            ["topic", "outcome"], registry=r,
        )
        self.dead_letters = Counter(
            "driftwatch_dead_letters", "Records written to the dead-letter topic, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "driftwatch_duplicates",
            "Records skipped as duplicates: same key seen in the window (key) or an offset already processed (redelivery)",
            ["topic", "kind"], registry=r,
        )
        self.batch_seconds = Histogram(
            "driftwatch_ingest_batch_duration_seconds", "Time to process one polled batch, commit included",
            buckets=BATCH_BUCKETS, registry=r,
        )
        self.commits = Counter(
            "driftwatch_offset_commits", "Offset commits, by outcome (ok, failed)", ["outcome"], registry=r
        )
        self.dead_letter_blocked = Gauge(
            "driftwatch_dead_letter_blocked",
            "1 while a batch cannot be finished (the dead-letter topic or the state store cannot be written); offsets "
            "are not committed meanwhile", registry=r,
        )
        self.poll_failures = Counter(
            "driftwatch_poll_failures", "Polls that failed (the broker away); the loop retries with backoff", registry=r
        )
        self.broker_up = Gauge(
            "driftwatch_broker_up", "1 while the consumer holds a live connection to a broker and its polls succeed; "
            "0 within seconds of losing them (the log says since when and why)", registry=r
        )
        self.consumer_joined = Gauge(
            "driftwatch_consumer_joined", "1 once the consumer has joined its group and received an assignment", registry=r
        )
        self.dedup_entries = Gauge(
            "driftwatch_dedup_window_entries", "Keys held in the duplicate window (bounded by count and age)", registry=r
        )
        self.feedback_held = Gauge(
            "driftwatch_feedback_held",
            "Feedback read before its request's inference event, waiting for it (at most ingest.feedback_hold_s)",
            registry=r,
        )
        # OpenTelemetry sources (ingest.sources): what became of each span
        self.otel_spans = Counter(
            "driftwatch_otel_spans", "Spans read from OTLP sources, by outcome: event (an inference event with its "
            "content), metrics_only (no content: requests, latency, tokens and errors only), duplicate, skipped",
            ["outcome"], registry=r,
        )
        self.otel_skipped = Counter(
            "driftwatch_otel_spans_skipped", "Spans of OTLP sources that are no inference event, by reason: not_genai "
            "(no gen_ai.* attribute), operation (a GenAI operation other than chat or completion: embeddings, tools, "
            "agents), invalid (a GenAI inference span without usable ids, times or fields)", ["reason"], registry=r,
        )
        self._lag = _LagCollector()
        r.register(self._lag)

        # the mission's signals, per adapter
        self.label_capped = Counter(
            "driftwatch_label_values_capped", "Observations whose label value was folded into 'other'", ["label"], registry=r
        )
        self.requests = Counter(
            "driftwatch_requests", "Inference requests seen in the logs, by serving adapter and status", ["adapter", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "driftwatch_request_latency_seconds", "Inference latency reported in the logs, by serving adapter", ["adapter"],
            buckets=tuple(latency_buckets_s), registry=r,
        )
        self.tokens = Counter(
            "driftwatch_tokens", "Tokens reported in the logs, by adapter and direction (in, out)", ["adapter", "direction"],
            registry=r,
        )
        self.feedback = Counter(
            "driftwatch_feedback", "User feedback, by the adapter that served the request and sentiment", ["adapter", "sentiment"],
            registry=r,
        )
        # monitor: windows against the reference, from the last check (set_windows; adapters bounded by adapter_cap)
        self._windows = _WindowCollector()
        r.register(self._windows)
        # policy
        self.rule_state = Gauge(
            "driftwatch_rule_state", "Policy rule state per adapter: 0 inactive, 1 pending, 2 firing", ["rule", "adapter"],
            registry=r,
        )
        self.decisions = Counter(
            "driftwatch_decisions", "Policy decisions, by action (retrain, alert, hold, resolved)", ["action"], registry=r
        )
        self.retrain_requests = Counter(
            "driftwatch_retrain_requests", "Retrain requests emitted by the policy, by rule (manual, alert:<name>)",
            ["rule"], registry=r
        )
        self.leader = Gauge(
            "driftwatch_leader", "1 on the replica that decides and acts (leader election), 0 on the others", registry=r
        )
        self.monitor_replicas = Gauge(
            "driftwatch_monitor_replicas", "Replicas whose windows the leader's last check merged (itself included)",
            registry=r
        )
        self.retrain_paused = Gauge(
            "driftwatch_retrain_paused", "1 while automatic retraining is paused (control API)", registry=r
        )
        self.retrain_stuck = Gauge(
            "driftwatch_retrain_stuck", "1 while a serving slot's firing retrain rule has stopped retrying: "
            "policy.max_attempts consecutive retrains ended without a promotion", ["slot"], registry=r
        )
        self.webhook_alerts = Counter(
            "driftwatch_webhook_alerts", "Alerts received on the Alertmanager webhook, by outcome (retrain, held, "
            "queued: not acted on within control.request_wait_s, duplicate, ignored, unknown_adapter: not in the registry, "
            "rate_limited)", ["outcome"], registry=r
        )
        # retrain
        self.training_examples = Counter(
            "driftwatch_training_examples", "Examples harvested from feedback (correction, positive)", ["source"],
            registry=r,
        )
        self.harvest_skipped = Counter(
            "driftwatch_harvest_skipped", "Feedback that would have made an example, left out (fitted: its request "
            "was cut to fit the event contract; unrenderable: a conversation with a tool turn)", ["reason"], registry=r,
        )
        self.retrain_runs = Counter(
            "driftwatch_retrain_runs", "Retrain runs finished, by status (succeeded, failed, timed_out, cancelled, "
            "refused by the data gates, unimproved: no checkpoint beat the adapter it started from, insufficient-data: "
            "the harvest never met the gates' minimums by retrain.collect_deadline_s)", ["status"], registry=r,
        )
        self.retrain_collecting = Gauge(
            "driftwatch_retrain_collecting", "Retrain runs collecting harvest before they train "
            "(retrain.collect_deadline_s)", registry=r,
        )
        self.training_gpu_seconds = Counter(
            "driftwatch_training_gpu_seconds", "GPU-seconds spent by finished training runs", registry=r
        )
        self.training_tokens = Counter(
            "driftwatch_training_tokens", "Tokens seen by finished training runs", registry=r
        )
        self.training_cost = Counter(
            "driftwatch_training_cost", "Cost of finished training runs (retrain.price_per_gpu_hour units)", registry=r
        )
        # evaluate and rollout
        self.evaluations = Counter(
            "driftwatch_evaluations", "Candidate evaluations against the incumbent, by result (passed, failed)",
            ["result"], registry=r,
        )
        self.rollouts = Counter(
            "driftwatch_rollouts", "Rollouts finished, by outcome (done, rolled_back, rejected, failed)", ["outcome"],
            registry=r,
        )
        self.rollbacks = Counter(
            "driftwatch_rollbacks", "Rollbacks, by trigger (bake: live checks failed; no_data; manual)", ["trigger"],
            registry=r,
        )
        self.rollout_phase = Gauge(
            "driftwatch_rollout_phase", "1 for the phase the rollout in progress is in (none when idle)", ["phase"],
            registry=r,
        )
        self.rollout_failed_checks = Gauge(
            "driftwatch_rollout_failed_checks", "Failed bake checks of the rollout in progress", registry=r
        )
        self.rollout_inconclusive = Gauge(
            "driftwatch_rollout_inconclusive", "1 when the last bake ended with no data (the adapter was kept)",
            registry=r,
        )
        self.production_info = Gauge(
            "driftwatch_production_info", "The adapter version the production alias points to (value: its weight)",
            ["version"], registry=r,
        )
        self.adapter_cap = LabelCap(max_adapters, self.label_capped, "adapter")
        # known label values exist from the start at 0: dashboards show them, and increase() sees the first event
        for metric, label, values in (
            (self.decisions, "action", ("retrain", "alert", "hold", "resolved")),
            (self.retrain_runs, "status", ("succeeded", "failed", "timed_out", "cancelled", "refused", "unimproved",
                                           "insufficient-data")),
            (self.webhook_alerts, "outcome", ("retrain", "held", "queued", "duplicate", "ignored",
                                               "unknown_adapter", "rate_limited")),
            (self.evaluations, "result", ("passed", "failed")),
            (self.rollouts, "outcome", ("done", "rolled_back", "rejected", "failed")),
            (self.rollbacks, "trigger", ("bake", "no_data", "manual")),
            (self.commits, "outcome", ("ok", "failed")),
            (self.dead_letters, "reason", tuple(r.value for r in Reason)),
            (self.retrain_requests, "rule", ("manual",)),
        ):
            for value in values:
                metric.labels(**{label: value})

    def set_windows(self, samples: Mapping[str, list]) -> None:
        """Replace the window gauges' samples (``monitor.monitor.window_samples``): one reference swap."""
        self._windows.samples = samples

    def set_lag(self, snapshot: Mapping[tuple[str, int], int]) -> None:
        """Replace the lag snapshot (an atomic reference swap; the scrape thread reads the old or the new one)."""
        self._lag.snapshot = dict(snapshot)


class GatewayMetrics:
    """The gateway's own metrics (it is its own process, with its own /metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None, max_adapters: int = 100) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "driftwatch_gateway_requests", "Requests by alias, resolved adapter version and status",
            ["alias", "version", "status"], registry=r,
        )
        self.added_latency = Histogram(
            "driftwatch_gateway_added_latency_seconds", "Time spent in the gateway, upstream time excluded",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1), registry=r,
        )
        self.upstream_latency = Histogram(
            "driftwatch_gateway_upstream_latency_seconds", "Upstream (vLLM) response time", registry=r,
        )
        self.events_buffered = Gauge(
            "driftwatch_gateway_events_buffered", "Events waiting to be delivered to Kafka", registry=r
        )
        self.events_delivered = Counter(
            "driftwatch_gateway_events_delivered", "Events acknowledged by Kafka, by topic", ["topic"], registry=r
        )
        self.events_resent = Counter(
            "driftwatch_gateway_events_resent", "Events sent to Kafka again because their delivery was not confirmed "
            "(at-least-once: the daemon drops the copies by request id)", ["topic"], registry=r
        )
        self.events_dropped = Counter(
            "driftwatch_gateway_events_dropped", "Events not delivered, by reason: buffer_full (the buffer was full), "
            "refused (Kafka refused that record for good), shutdown (still buffered when the drain deadline passed)",
            ["topic", "reason"], registry=r
        )
        self.alias_table_version = Gauge(
            "driftwatch_gateway_alias_table_version", "The alias table version in use", registry=r
        )
        self.label_capped = Counter(
            "driftwatch_gateway_label_values_capped", "Label values folded into 'other'", ["label"], registry=r
        )
        self.version_cap = LabelCap(max_adapters, self.label_capped, "version")
