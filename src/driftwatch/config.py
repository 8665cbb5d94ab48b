"""Settings: one pydantic tree, read from YAML with environment overrides.

Precedence: defaults < YAML file < environment. An environment variable names a field path with double
underscores: ``DRIFTWATCH__KAFKA__BOOTSTRAP_SERVERS=broker-1:9092,broker-2:9092``.

Every bad value fails at load time as a :class:`~driftwatch.errors.ConfigError` that lists each problem with
its dotted field path and what would fix it. Secrets are ``SecretStr``: they print as ``**********``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from driftwatch.errors import ConfigError, ConfigProblem

ENV_PREFIX = "DRIFTWATCH__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Topics(_Section):
    inference: str = Field("driftwatch.inference.v1", min_length=1, max_length=249)
    feedback: str = Field("driftwatch.feedback.v1", min_length=1, max_length=249)
    dead_letter: str = Field("driftwatch.dead-letter.v1", min_length=1, max_length=249)


class Security(_Section):
    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True


class Consumer(_Section):
    group_id: str = Field("driftwatch", min_length=1)
    max_poll_records: int = Field(500, ge=1, le=100_000)
    poll_timeout_ms: int = Field(500, ge=1, le=60_000)
    session_timeout_ms: int = Field(10_000, ge=1_000, le=300_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100, le=100_000)
    max_poll_interval_ms: int = Field(300_000, ge=1_000)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    fetch_max_bytes: int = Field(52_428_800, ge=1024)
    max_partition_fetch_bytes: int = Field(4_194_304, ge=1024)
    handover_grace_ms: int = Field(
        1_500, ge=0, le=60_000,
        description="assigned partitions wait this long after a rebalance, then start from the freshest committed offset",
    )


class Producer(_Section):
    acks: Literal["all", "1", "0"] = "all"
    linger_ms: int = Field(5, ge=0, le=10_000)
    max_request_size: int = Field(1_048_576, ge=1024)
    delivery_timeout_ms: int = Field(30_000, ge=1_000)
    compression_type: Literal["none", "gzip"] = "none"


class Kafka(_Section):
    bootstrap_servers: list[str] = Field(default_factory=lambda: ["127.0.0.1:9092"], min_length=1)
    client_id: str = "driftwatch"
    request_timeout_ms: int = Field(30_000, ge=1_000)
    topics: Topics = Topics()
    security: Security = Security()
    consumer: Consumer = Consumer()
    producer: Producer = Producer()
    create_topics: bool = False
    partitions: int = Field(4, ge=1, description="partition count used when create_topics is on")
    replication_factor: int = Field(1, ge=1)
    require_copartitioned: bool = True

    _split = field_validator("bootstrap_servers", mode="before")(_split_csv)


class IngestSource(_Section):
    """An extra topic the daemon reads, and how its records are written (docs/ingest-otel.md)."""

    topic: str = Field(min_length=1, max_length=249)
    format: Literal["otlp_proto", "otlp_json"] = Field(
        "otlp_proto", description="OTLP traces as the OpenTelemetry Collector's Kafka exporter writes them "
        "(its traces encoding)")
    trusted: bool = Field(False, description="its spans may move the monitor windows (drift, quality, the bake's "
                          "checks, so decisions and rollbacks): only when whoever can write to the topic is trusted, "
                          "e.g. the Collector's receivers authenticate; off, they count in the signals (requests, "
                          "latency, tokens, errors) only")


def _sources(value: Any) -> Any:
    """From the environment: a JSON list of {topic, format}, or 'topic:format,topic:format' (a topic alone reads
    otlp_proto)."""
    if not isinstance(value, str):
        return value
    if value.lstrip().startswith("["):
        import json

        return json.loads(value)
    out = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        topic, sep, fmt = part.partition(":")
        out.append({"topic": topic.strip(), **({"format": fmt.strip()} if sep else {})})
    return out


class Ingest(_Section):
    max_record_bytes: int = Field(1_048_576, ge=256, description="larger records are dead-lettered as oversize")
    dedup_max_entries: int = Field(200_000, ge=1)
    dedup_max_age_s: float = Field(3_600.0, gt=0)
    dead_letter_head_bytes: int = Field(65_536, ge=0, description="bytes of an oversize record kept in its dead letter")
    dead_letter_retry_s: float = Field(2.0, gt=0, le=300)
    feedback_hold_s: float = Field(60.0, ge=0, description="feedback read before its request waits this long for it "
                                   "(the two topics are not read in lockstep), then counts under adapter 'unknown'")
    sources: list[IngestSource] = Field(
        default_factory=list, description="extra topics of OpenTelemetry traces, each {topic, format: otlp_proto or "
        "otlp_json}: GenAI spans become inference events (docs/ingest-otel.md; needs driftwatch[otel]); from env: "
        "a JSON list or 'topic:format,...'")

    _split_sources = field_validator("sources", mode="before")(_sources)


class Metrics(_Section):
    max_adapters: int = Field(100, ge=1, description="distinct adapter label values; the rest are 'other'")
    latency_buckets_s: list[float] = Field(
        default_factory=lambda: [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0], min_length=1
    )

    _split = field_validator("latency_buckets_s", mode="before")(_split_csv)


class Monitor(_Section):
    reference_path: Path | None = Field(None, description="reference profile (driftwatch baseline); without it only quality signals")
    window_events: int = Field(2_000, ge=10, description="a window closes after this many events of one adapter ...")
    window_seconds: float = Field(600.0, gt=0, description="... or after this long")
    check_interval_s: float = Field(15.0, gt=0)
    alpha: float = Field(0.01, gt=0, lt=1)
    min_samples: int = Field(200, ge=1, description="both reference and window need this many to test")
    psi_floor: float = Field(0.05, ge=0, description="numeric drift needs PSI at least this")
    cramers_v_floor: float = Field(0.1, ge=0, description="categorical drift needs Cramér's V at least this")
    max_categories: int = Field(50, ge=2)
    diversity_sample: int = Field(500, ge=10, description="responses kept per window for distinct-n")
    report_sample: int = Field(1_000, ge=0, description="feature rows kept per window (reservoir) for Evidently "
                               "reports and retrain evidence; 0 keeps none")
    semantic_sample: int = Field(0, ge=0, description="prompts embedded per closed window for the semantic drift "
                                 "check (needs driftwatch[semantic] and a reference from `baseline --semantic`); 0: off")
    semantic_floor: float = Field(0.01, ge=0, description="semantic drift needs MMD² at least this")
    semantic_permutations: int = Field(200, ge=19, description="permutations of the MMD test (p-value resolution)")
    refusal_patterns: list[str] | None = Field(
        None, description="regular expressions; default: common English refusals; from env: a JSON list or one pattern")

    @field_validator("refusal_patterns", mode="before")
    @classmethod
    def _one_or_json_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            import json

            return json.loads(value) if value.lstrip().startswith("[") else [value]
        return value


# The vocabulary a rule may name: the monitor's features (monitor/features.py computes them, in this order) and the
# policy's signals (control/policy.py reads them off a window's snapshot).
NUMERIC_FEATURES = ("prompt_chars", "prompt_tokens", "response_chars", "response_tokens", "latency_ms",
                    "repeated_ngram_ratio")
CATEGORICAL_FEATURES = ("status", "route", "language", "refusal", "empty_response")
SIGNALS = ("input_drift", "output_drift", "error_ratio", "refusal_rate", "empty_rate", "negative_feedback_ratio",
           "distinct_2", "distinct_2_ratio")


class Rule(_Section):
    name: str = Field(min_length=1, max_length=64)
    signal: str = Field(description="input_drift, output_drift, error_ratio, refusal_rate, empty_rate, "
                                    "negative_feedback_ratio, distinct_2, distinct_2_ratio, or drift:<feature>")
    threshold: float
    op: Literal[">=", "<="] = ">="
    clear: float | None = Field(None, description="hysteresis: the rule clears only past this level (default: threshold)")
    for_s: float = Field(0.0, ge=0)
    min_samples: int = Field(0, ge=0)
    action: Literal["retrain", "alert"] = "retrain"


DEFAULT_RULES = (
    Rule(name="input-drift", signal="input_drift", threshold=1, clear=0.5, for_s=0, min_samples=1000),
    Rule(name="output-collapse", signal="distinct_2_ratio", op="<=", threshold=0.85, clear=0.92, for_s=60,
         min_samples=500),
    Rule(name="refusals", signal="refusal_rate", threshold=0.1, clear=0.05, for_s=60, min_samples=500),
    Rule(name="negative-feedback", signal="negative_feedback_ratio", threshold=0.35, clear=0.25, for_s=120,
         min_samples=50),
    Rule(name="error-ratio", signal="error_ratio", threshold=0.05, clear=0.02, for_s=120, min_samples=500,
         action="alert"),
)


def _default_rules() -> list[Rule]:
    return list(DEFAULT_RULES)


class Policy(_Section):
    rules: list[Rule] = Field(default_factory=_default_rules)
    cooldown_s: float = Field(6 * 3600.0, ge=0, description="after a retrain request, the same adapter waits this long")
    max_retrains_per_day: int = Field(3, ge=0)
    max_attempts: int = Field(3, ge=1, description="consecutive retrains of a slot that end without a promotion "
                              "(failed, refused, unimproved, rejected, rolled back) before a firing rule stops "
                              "retrying (driftwatch_retrain_stuck); a promotion, the signal clearing, `driftwatch "
                              "retrain` or `driftwatch resume` resets the count")
    store_path: Path | None = Field(None, description="SQLite state store; default: <daemon.state_dir>/state.db")


class Gates(_Section):
    near_dup_threshold: float = Field(0.7, gt=0, le=1, description="Jaccard of content-word shingles for a near-duplicate")
    max_duplicate_share: float = Field(
        0.5, ge=0, le=1, description="exact + near duplicates collapsed, share of the harvested candidates")
    max_contradiction_share: float = Field(
        0.05, ge=0, le=1, description="prompt clusters whose targets disagree, share of those with a harvested example")
    min_unique_prompts: int = Field(50, ge=1, description="distinct prompts left after collapsing")
    min_route_examples: int = Field(5, ge=0, description="examples for each route that drifted")
    max_golden_leakage_share: float = Field(0.02, ge=0, le=1, description="candidates matching the golden set (removed)")
    max_bad_target_share: float = Field(0.1, ge=0, le=1, description="empty, truncated or garbage targets (removed)")
    max_length_outlier_share: float = Field(0.05, ge=0, le=1)
    max_target_chars: int = Field(8000, ge=1)
    pii: Literal["mask", "refuse", "allow"] = Field("mask", description="e-mail addresses and phone numbers")
    validation_fraction: float = Field(0.1, gt=0, lt=1)
    replay_fraction: float = Field(0.5, ge=0, lt=1, description="share of the set replayed from the base training set "
                                   "(make efficacy: 0.5 with the warm start kept phase A and the battery, 0.3 did not)")
    seed: int = 0


class Lora(_Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])

    _csv = field_validator("target_modules", mode="before")(_split_csv)


class Training(_Section):
    learning_rate: float = Field(2e-4, gt=0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16)
    eval_every: int = Field(10, ge=1, description="optimizer steps between validation evaluations")
    patience: int = Field(3, ge=1, description="evaluations without improvement before early stopping")
    min_delta: float = Field(0.0, ge=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    loss_per: Literal["token", "example"] = Field("token", description="how answer tokens weigh in the loss, in "
                                                  "training and validation: every token the same (a long anchor "
                                                  "answer outweighs a one-word label), or every example the same")
    select_by: Literal["all", "task"] = Field("all", description="the validation loss that picks the best checkpoint "
                                              "and decides early stopping: the whole split's, or the harvested "
                                              "(task) lines' alone; the validation loss of each source (task, "
                                              "replay, anchor) is in the run's manifest either way")
    anchor_max_rise: float | None = Field(None, ge=0, description="with select_by task: a checkpoint whose anchors' "
                                          "validation loss rose more than this share above step 0 is never chosen")
    kl_anchor: float = Field(4.0, ge=0, description="weight of a KL term on the anchor lines' answers to the base "
                             "model (the adapter disabled): keeps the base model's distribution, not only its greedy "
                             "answers (bench/efficacy.py, SmolLM2: the candidate's battery loss against the base "
                             "model went from 32 points without it to 6 with 4; docs/evaluation.md); 0 turns it off")
    kl_replay: float = Field(0.0, ge=0, description="weight of a KL term on the replay lines' answers to the frozen "
                             "incumbent adapter (the base model when none serves): keeps what production serves now")


class Review(_Section):
    candidates: int = Field(1, ge=1, le=8, description="adapters a retrain offers the promotion gate: its best "
                            "checkpoint, then it interpolated toward the incumbent, then earlier best checkpoints; "
                            "ranked on one part of the golden set and the battery, the best gated on the other part "
                            "(1: the best checkpoint alone, gated on every item)")
    interpolate: list[float] = Field(default_factory=lambda: [0.75, 0.5, 0.25], description="α of each interpolation "
                                     "α·best + (1-α)·incumbent (exact, as a LoRA of the concatenated rank)")
    keep_checkpoints: int = Field(1, ge=0, description="earlier best checkpoints kept as candidates")
    max_rank: int = Field(32, ge=1, description="vLLM's --max-lora-rank: an interpolation of a larger concatenated "
                          "rank is truncated to it by SVD (and no longer exact)")

    @field_validator("interpolate")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        names = [round(a * 100) for a in v]  # a candidate is named a<α·100>
        if any(not 0 < n < 100 for n in names) or len(set(names)) != len(names):
            raise ValueError("each α is between 0.01 and 0.99, and no two round to the same hundredth")
        return v


class KubernetesRunner(_Section):
    namespace: str = "driftwatch"
    image: str | None = Field(None, description="trainer image (driftwatch with the train extra)")
    pvc: str | None = Field(None, description="claim of the volume shared by the daemon and the trainer Job")
    mount_path: str = "/driftwatch"
    gpus: int = Field(1, ge=0)
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = "4"
    memory: str = "32Gi"
    tolerations: list[dict] | None = Field(None, description="default: tolerate the GPU resource's NoSchedule taint")
    node_selector: dict[str, str] = Field(default_factory=dict)
    service_account: str | None = None


class Retrain(_Section):
    base_model: Path | None = Field(None, description="base model directory (transformers format); without it retrain "
                                    "requests are recorded, not run")
    golden_set: Path | None = Field(None, description="JSONL {prompt, expected}: held out, never trained on (required "
                                    "with base_model)")
    base_training_set: Path | None = Field(None, description="JSONL {prompt, response, route?}: the replay source")
    window_hours: float = Field(168.0, gt=0, description="harvested feedback examples from this far back")
    min_new_examples: int = Field(20, ge=0, description="a firing rule retries a retrain that ended without a "
                                  "promotion only once this many examples were harvested since (a new dataset "
                                  "version); 0: retry on the cooldown alone")
    harvest_max_pending: int = Field(20_000, ge=0, description="recent requests kept in memory for feedback to "
                                     "join (corrections and positive ratings become examples); 0: no harvesting")
    trusted_callers: list[str] = Field(default_factory=list, description="feedback callers (gateway.feedback_callers) "
                                       "whose corrections and ratings are training examples as they come; an end user's "
                                       "(a receipt's) are candidates until `driftwatch examples approve`. Feedback "
                                       "written to the topic directly is trusted: the topic's ACLs guard it")
    max_tenant_share: float = Field(0.2, gt=0, le=1, description="the most of a dataset one tenant's harvested "
                                    "examples may be (the tenant as the gateway authenticated it)")
    datasets_dir: Path | None = Field(None, description="default: <daemon.state_dir>/datasets")
    runs_dir: Path | None = Field(None, description="default: <daemon.state_dir>/runs (the shared volume for Jobs)")
    retention_days: float = Field(30.0, gt=0, description="datasets older than this are deleted")
    runner: Literal["local", "kubernetes"] = "local"
    timeout_s: float = Field(3600.0, gt=0, description="a run's deadline, from when it was queued (after collecting)")
    collect_deadline_s: float = Field(0.0, ge=0, description="an automatic retrain (a rule's or an alert's) first "
                                      "collects, until the harvest since window_hours meets the data gates' minimums "
                                      "(unique prompt clusters, examples of every drifted route) or this deadline "
                                      "passes: the run then ends insufficient-data, nothing trained; 0: no collecting "
                                      "(the run trains on what there is)")
    collect_check_s: float = Field(30.0, gt=0, description="how often a collecting run counts the harvest")
    chat_template: Path | None = Field(None, description="the Jinja chat template vLLM serves with (its "
                                       "--chat-template), when not the base model's own: training renders a harvested "
                                       "conversation as the server did")
    price_per_gpu_hour: float = Field(0.0, ge=0, description="for the run's cost in its manifest")
    warm_start: bool = Field(True, description="continue from the adapter being retrained (its registered path, "
                             "its own r and modules), not a new LoRA: what it learned stays where replay is short "
                             "(make efficacy: phase A kept 0.35 against 0.08 from a new LoRA, and the new traffic "
                             "0.62 against 0.48)")
    gates: Gates = Gates()
    lora: Lora = Lora()
    training: Training = Training()
    review: Review = Review()
    kubernetes: KubernetesRunner = KubernetesRunner()


class PromotionGates(_Section):
    golden_min_delta: float = Field(0.0, description="candidate golden-set score minus the incumbent's: more than "
                                    "this (default: strictly better; a candidate no better than the incumbent is "
                                    "refused)")
    golden_min: float = Field(0.0, ge=0, le=1, description="candidate golden-set score: at least this")
    forgetting_max_drop: float = Field(0.05, ge=0, le=1, description="general-knowledge battery: the incumbent's score "
                                       "minus the candidate's, at most this")
    forgetting_base_max_drop: float | None = Field(0.05, ge=0, le=1, description="general-knowledge battery: the base "
                                                   "model's score (gateway.base_model) minus the candidate's, at most "
                                                   "this; null: not checked (an incumbent that already forgot hides "
                                                   "the next one's forgetting from forgetting_max_drop)")
    forgetting_confidence: float = Field(0.95, gt=0.5, lt=1, description="both forgetting gates pair the battery "
                                         "question by question: a loss significant at this confidence (one-sided "
                                         "exact sign test on the questions that flipped) fails, whatever its size")
    distinct2_min_ratio: float = Field(0.8, ge=0, description="candidate distinct-2 over its outputs, as a share of "
                                       "the incumbent's: at least this (modal collapse)")
    self_similarity_max_delta: float = Field(0.15, ge=0, le=1, description="mean pairwise similarity of the "
                                             "candidate's outputs minus the incumbent's: at most this")
    confusion_max_delta: float = Field(0.1, ge=0, le=1, description="share of off-task probes answered like the task, "
                                       "candidate minus incumbent: at most this")
    latency_p95_max_ratio: float = Field(1.5, gt=0, description="candidate p95 latency over the incumbent's (plus "
                                         "latency_slack_ms): at most this")
    latency_slack_ms: float = Field(20.0, ge=0)
    max_request_errors: int = Field(0, ge=0, description="evaluation requests that failed, either adapter")


class Evaluate(_Section):
    battery: Path | None = Field(None, description="JSONL {prompt, expected (text or list), scoring?}: general "
                                 "knowledge against forgetting; default: the 120 questions shipped with driftwatch "
                                 "(defaults/eval/battery.jsonl in the package); battery-large.jsonl beside it has 649: "
                                 "the forgetting gates catch a 5-point loss 98.6 % of the time against 45 %, for 5x "
                                 "the evaluation requests (docs/evaluation.md)")
    probes: Path | None = Field(None, description="JSONL {prompt}: requests outside the tuned task; default: shipped")
    scoring: Literal["exact", "normalized", "contains", "rouge_l"] = Field(
        "normalized", description="for golden items that name no scoring of their own")
    confusion_similarity: float = Field(0.6, gt=0, le=1, description="a probe's output this similar (ROUGE-L) to an "
                                        "output the adapter gave for a task prompt counts as answered like the task")
    system_prompt: str | None = None
    max_tokens: int = Field(48, ge=1)
    concurrency: int = Field(4, ge=1, description="requests in flight to vLLM during an evaluation")
    timeout_s: float = Field(120.0, gt=0, description="for one evaluation request")
    reports_dir: Path | None = Field(None, description="default: <daemon.state_dir>/evals")
    gates: PromotionGates = PromotionGates()


class Bake(_Section):
    duration_s: float = Field(600.0, gt=0, description="live traffic the new adapter must serve without regression "
                              "before the previous one is unloaded")
    deadline_s: float = Field(1800.0, gt=0, description="with no data until then, on_no_data decides")
    on_no_data: Literal["keep", "rollback"] = Field("keep", description="keep: keep the adapter and raise the "
                                                    "inconclusive-bake alert (driftwatch_rollout_inconclusive)")
    min_events: int = Field(50, ge=1, description="requests in the new adapter's window before its checks count")
    min_feedback: int = Field(20, ge=1, description="feedback events before the negative-feedback check counts")
    failed_checks: int = Field(2, ge=1, description="failed checks (over the bake, not in a row) that roll back")
    error_ratio_max_delta: float = Field(0.02, ge=0, description="new error ratio minus the previous': at most this")
    negative_feedback_max_delta: float = Field(0.15, ge=0)
    refusal_max_delta: float = Field(0.05, ge=0)
    empty_max_delta: float = Field(0.05, ge=0, description="new share of empty responses minus the previous'")
    distinct2_min_ratio: float = Field(0.8, ge=0, description="new distinct-2 over the previous': at least this")
    latency_max_ratio: float = Field(1.5, gt=0, description="new mean latency over the previous' (plus "
                                     "latency_slack_ms): at most this")
    latency_slack_ms: float = Field(20.0, ge=0)
    error_ratio_max: float = Field(0.05, ge=0, le=1, description="a first version (no previous adapter to compare "
                                   "with): its error ratio at most this")
    refusal_max: float = Field(0.1, ge=0, le=1, description="a first version: its refusal rate at most this")
    empty_max: float = Field(0.05, ge=0, le=1, description="a first version: its share of empty answers at most this")


class Rollout(_Section):
    auto_promote: bool = Field(True, description="a retrain's candidate that passes the gate goes to production; "
                               "off: it is registered only, and rolled out by hand (driftwatch promote VERSION)")
    alias: str = Field("production", description="the alias clients call; previous/candidate are kept beside it")
    vllm_urls: list[str] = Field(default_factory=list, description="the vLLM servers adapters are loaded on "
                                 "(every one; evaluation runs on the first); default: gateway.upstreams")
    warm_requests: int = Field(3, ge=0, description="requests sent to a loaded version before it takes traffic")
    canary_steps: list[float] = Field(default_factory=list, description="traffic shares for a stepped canary "
                                      "through alias weights (e.g. 0.1,0.5), each baked for step_s; empty: one flip")
    step_s: float = Field(120.0, gt=0)
    load_deadline_s: float = Field(600.0, gt=0, description="loading: a server still unreachable then fails the "
                                   "rollout (production untouched)")
    evaluate_deadline_s: float = Field(3600.0, gt=0, description="evaluating: no verdict by then rejects the "
                                       "candidate (the evaluation is cancelled)")
    warm_deadline_s: float = Field(300.0, gt=0, description="warming: a server still unreachable then fails the "
                                   "rollout (production untouched)")
    tick_s: float = Field(5.0, gt=0, description="how often the control loop ticks (advances a rollout, starts and "
                          "collects jobs, acts on control requests; at once when a request arrives)")
    lease_s: float = Field(30.0, gt=0, description="a process acting on a rollout holds it this long; a crashed "
                           "holder's rollout is taken over after it")
    rebaseline_deadline_s: float = Field(
        900.0, gt=0, description="after a bake that answered input drift, how long the re-baseline waits for the "
        "candidate's window to hold monitor.min_samples rows; then it is skipped (recorded) and the reference stays")
    bake: Bake = Bake()

    _csv = field_validator("vllm_urls", "canary_steps", mode="before")(_split_csv)

    @field_validator("canary_steps")
    @classmethod
    def _steps(cls, steps: list[float]) -> list[float]:
        if any(not 0 < w < 1 for w in steps) or steps != sorted(set(steps)):
            raise ValueError("canary steps are increasing traffic shares between 0 and 1 (exclusive), e.g. 0.1,0.5")
        return steps


class Gateway(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65_535)
    upstreams: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:8001"], min_length=1,
                                 description="vLLM servers (OpenAI API base URLs, without /v1)")
    base_model: str = Field("base", description="the served base model name (--served-model-name)")
    serve_base_model: bool = Field(False, description="let clients name the base model itself; by default the gateway "
                                   "serves aliases and registered adapter versions only (anything else is 404)")
    connect_timeout_s: float = Field(2.0, gt=0)
    timeout_s: float = Field(120.0, gt=0, description="for a whole upstream response")
    max_request_bytes: int = Field(1_048_576, ge=1024)
    buffer_max_events: int = Field(100_000, ge=1, description="events held while Kafka is unreachable; beyond, "
                                   "counted in driftwatch_gateway_events_dropped_total")
    buffer_max_bytes: int = Field(256 * 2**20, ge=2**20, description="and at most this many bytes of them (size the "
                                  "pod's memory limit above it)")
    alias_poll_s: float = Field(0.25, gt=0, description="how often the alias table's version is read from the state "
                                "store (the table only when it changed), and each upstream asked what it has loaded")
    store_path: Path | None = Field(None, description="the state store holding the alias table; default: "
                                    "policy.store_path, else <daemon.state_dir>/state.db")
    upstream_api_key: SecretStr | None = Field(
        None, description="vLLM's API key (its VLLM_API_KEY or --api-key): the gateway and the daemon (adapter loads, "
                          "evaluation) send it as a bearer token; DRIFTWATCH__GATEWAY__UPSTREAM_API_KEY, from a Secret")

    feedback_secret: SecretStr | None = Field(
        None, description="HMAC key of the feedback receipts the gateway hands out with each answer "
                          "(DRIFTWATCH__GATEWAY__FEEDBACK_SECRET, from a Secret; the same on every replica); unset: a "
                          "random key per process, so receipts die with it")
    feedback_token_ttl_s: float = Field(7 * 86400.0, gt=0, description="how long a feedback receipt is accepted")
    feedback_callers: SecretStr | None = Field(
        None, description="server-side callers that may post feedback on any request without a receipt: "
                          "'name:token,name:token' (DRIFTWATCH__GATEWAY__FEEDBACK_CALLERS, from a Secret); they send "
                          "Authorization: Bearer <token>")
    trust_tenant_header: bool = Field(False, description="take x-driftwatch-tenant as the tenant: only behind a proxy "
                                      "that authenticates clients and sets it; otherwise the header is kept as "
                                      "metadata.claimed_tenant and the event has no tenant")

    _csv = field_validator("upstreams", mode="before")(_split_csv)

    def callers(self) -> dict[str, str]:
        """feedback_callers as {token: name}."""
        out: dict[str, str] = {}
        raw = self.feedback_callers.get_secret_value() if self.feedback_callers else ""
        for pair in filter(None, (p.strip() for p in raw.split(","))):
            name, sep, token = pair.partition(":")
            if not sep or not name or len(token) < 16:
                raise ValueError("gateway.feedback_callers: each entry is name:token, the token 16 characters or more")
            out[token] = name
        return out

    def upstream_key(self) -> str | None:
        """The key to send to vLLM, or None when unset or empty."""
        return (self.upstream_api_key.get_secret_value() or None) if self.upstream_api_key is not None else None


class Http(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9108, ge=0, le=65_535)


class Control(_Section):
    token: SecretStr | None = Field(
        None, description="bearer token of the control API (DRIFTWATCH__CONTROL__TOKEN, from a Secret); unset: the API "
                          "refuses every call")
    token_file: Path | None = Field(None, description="read the token from this file instead (a mounted Secret)")
    retrain_alerts: list[str] = Field(
        default_factory=lambda: ["DriftwatchInputDrift", "DriftwatchOutputQualityDrop", "DriftwatchNegativeFeedbackSpike"],
        description="Alertmanager alerts (by alertname, with an adapter label) that the webhook turns into retrain requests")

    request_wait_s: float = Field(30.0, ge=0, description="a control call waits this long for the control loop to act "
                                  "on its request, then answers 202 with the request's id")
    webhook_alerts_per_minute: int = Field(60, ge=1, description="alerts the Alertmanager webhook turns into retrain "
                                           "requests per minute (a token bucket of this size); a call beyond is 429 "
                                           "with nothing recorded, and Alertmanager sends it again later")
    retention_days: float = Field(30.0, ge=2, description="decisions (not those a run refers to), alert occurrences and "
                                  "answered requests older than this are deleted from the state store")
    prune_cron: str = Field("17 3 * * *", description="when the control loop deletes what is past retention_days (a "
                            "crontab expression, UTC)")

    @field_validator("prune_cron")
    @classmethod
    def _crontab(cls, value: str) -> str:
        from apscheduler.triggers.cron import CronTrigger

        CronTrigger.from_crontab(value, timezone="UTC")  # raises ValueError on a bad expression
        return value

    _split = field_validator("retrain_alerts", mode="before")(_split_csv)

    def secret(self) -> str | None:
        """The token: control.token, else the contents of control.token_file (whitespace stripped)."""
        if self.token is not None:
            return self.token.get_secret_value() or None
        if self.token_file is not None:
            return self.token_file.read_text().strip() or None
        return None


class Daemon(_Section):
    shutdown_grace_s: float = Field(20.0, gt=0)
    stuck_after_s: float = Field(300.0, gt=0, description="/healthz fails (so Kubernetes restarts the pod) once the "
                                 "loop has been unable to join its consumer group or to poll for this long")
    state_dir: Path = Path(".driftwatch")


class Store(_Section):
    url: str | None = Field(
        None, description="PostgreSQL URL (postgresql://user@host:5432/db; the password from PGPASSWORD or ~/.pgpass) "
                          "of the state store and registry that several replicas share; unset: SQLite files in "
                          "daemon.state_dir (policy.store_path, gateway.store_path)")

    @field_validator("url")
    @classmethod
    def _postgres(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (SQLite needs no URL: leave it unset)")
        return v


class Leader(_Section):
    backend: Literal["none", "file", "kubernetes"] = Field(
        "file", description="how replicas elect the one that decides and acts: file (a lock beside the state: one "
                            "machine), kubernetes (a coordination.k8s.io Lease), none (one replica, always the leader)")
    lock_path: Path | None = Field(None, description="the file lock; default: <daemon.state_dir>/leader.lock")
    lease_name: str = "driftwatch-leader"
    namespace: str | None = Field(None, description="the Lease's namespace; default: the pod's own")
    lease_s: float = Field(15.0, gt=0, description="a leader not renewed for this long is replaced")
    renew_s: float = Field(2.0, gt=0, description="how often a replica renews or tries to take leadership")
    advertise_url: str | None = Field(
        None, description="where other replicas reach this one's control API; default: http://$POD_IP:<http.port>, "
                          "else the address the daemon listens on")
    window_stale_s: float = Field(30.0, gt=0, description="the leader ignores a follower's windows older than this")


class Logging(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(_Section):
    kafka: Kafka = Kafka()
    ingest: Ingest = Ingest()
    metrics: Metrics = Metrics()
    monitor: Monitor = Monitor()
    policy: Policy = Policy()
    retrain: Retrain = Retrain()
    evaluate: Evaluate = Evaluate()
    rollout: Rollout = Rollout()
    gateway: Gateway = Gateway()
    http: Http = Http()
    control: Control = Control()
    daemon: Daemon = Daemon()
    store: Store = Store()
    leader: Leader = Leader()
    logging: Logging = Logging()

    @property
    def registry_path(self) -> Path | str:
        """The store holding the alias table and the adapter registry: store.url, else gateway.store_path, else the
        state store."""
        return self.store.url or self.gateway.store_path or self.state_store_path

    @property
    def vllm_urls(self) -> list[str]:
        return self.rollout.vllm_urls or self.gateway.upstreams

    @property
    def state_store_path(self) -> Path | str:
        """The state store: store.url, else the SQLite file policy.store_path, else <daemon.state_dir>/state.db."""
        return self.store.url or self.policy.store_path or self.daemon.state_dir / "state.db"

    def redacted(self) -> dict[str, Any]:
        """The resolved settings as plain data, secrets masked (SecretStr fields, passwords inside URLs): safe to
        print and log."""
        def mask(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: mask(v) for k, v in value.items()}
            if isinstance(value, list):
                return [mask(v) for v in value]
            return mask_url(value) if isinstance(value, str) and "://" in value else value

        return mask(self.model_dump(mode="json"))


def mask_url(url: str) -> str:
    """``scheme://user:secret@host/...?password=secret`` → the same with each secret as ``***``."""
    import re

    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("?", 1)[0].split("#", 1)[0]:  # userinfo: everything up to the last @ before the path
        authority_end = len(rest.split("?", 1)[0].split("#", 1)[0])
        at = rest.rfind("@", 0, authority_end)
        user, colon, _ = rest[:at].partition(":")
        url = f"{scheme}://{user}{':***' if colon else ''}@{rest[at + 1:]}"
    return re.sub(r"((?:^|[?&;\s])(?:password|passwd|pwd|secret|token|api_key)=)[^&;\s]*", r"\1***", url, flags=re.I)


# ---------------------------------------------------------------------------------------------------------------------
# loading


def load_settings(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read YAML (optional), apply ``DRIFTWATCH__`` overrides, validate. Raises ConfigError listing every problem."""
    source = str(path) if path else "defaults"
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    env_paths = _apply_env(data, os.environ if env is None else env)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(err, env_paths) for err in exc.errors()]
    else:
        problems = [_from_env(p, env_paths) for p in _cross_checks(settings)]
    if problems:  # each problem names where its value came from: the file, or an environment variable
        if all("(from environment variable" in p.message for p in problems):
            source = "environment" if path is None else f"{path} (the values below came from the environment)"
        raise ConfigError(problems, source)
    return settings


def _from_env(problem: ConfigProblem, env_paths: Mapping[tuple[str, ...], str]) -> ConfigProblem:
    loc = tuple(problem.path.split("."))
    origin = next((var for keys, var in env_paths.items() if loc[: len(keys)] == keys), None)
    if origin is None:
        return problem
    return ConfigProblem(problem.path, f"{problem.message} (from environment variable {origin})", problem.fix)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem("(file)", f"cannot read {path}: {exc.strerror}", "pass an existing, readable YAML file")], str(path)) from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([ConfigProblem("(file)", f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", "correct the YAML syntax")], str(path)) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError([ConfigProblem("(file)", f"top level is a {type(loaded).__name__}", "make the top level a mapping of sections (kafka:, ingest:, ...)")], str(path))
    return loaded


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Write DRIFTWATCH__A__B=v into data["a"]["b"]; return which paths came from which variable."""
    origins: dict[tuple[str, ...], str] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        keys = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__") if part)
        if not keys:
            continue
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = value
        origins[keys] = name
    return origins


_FIXES = {
    "missing": "add this field",
    "int_parsing": "use a whole number",
    "int_type": "use a whole number",
    "int_from_float": "use a whole number",
    "float_parsing": "use a number",
    "float_type": "use a number",
    "bool_parsing": "use true or false",
    "bool_type": "use true or false",
    "string_type": "use a string",
    "list_type": "use a list (or a comma-separated string)",
    "dict_type": "use a mapping",
    "model_type": "use a mapping of this section's fields",
    "model_attributes_type": "use a mapping of this section's fields",
    "string_too_short": "use a non-empty value",
    "too_short": "give at least one item",
}


def _problem(err: Mapping[str, Any], env_paths: Mapping[tuple[str, ...], str]) -> ConfigProblem:
    loc = tuple(str(part) for part in err["loc"])
    path = ".".join(loc) or "(top level)"
    kind = err["type"]
    ctx = err.get("ctx") or {}
    message = err["msg"]
    if kind == "extra_forbidden":
        message = "unknown field"
        fix = "remove it"
        known = _known_fields(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        if close:
            fix = f"did you mean '{close[0]}'?"
        elif known:
            fix += f" (fields here: {', '.join(sorted(known))})"
    elif kind == "literal_error":
        fix = f"use one of {ctx.get('expected')}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        fix = "use a value that " + message.lower().removeprefix("input should be ")
    else:
        fix = _FIXES.get(kind, "see docs/configuration.md for this field")
    origin = next((var for keys, var in env_paths.items() if loc[: len(keys)] == keys), None)
    if origin:
        message += f" (from environment variable {origin})"
    return ConfigProblem(path, message, fix)


def _known_fields(loc: tuple[str, ...]) -> list[str]:
    model: type[BaseModel] = Settings
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _cross_checks(s: Settings) -> list[ConfigProblem]:
    """Rules that span fields; each names the one field to change."""
    out: list[ConfigProblem] = []
    c = s.kafka.consumer
    if c.heartbeat_interval_ms * 3 > c.session_timeout_ms:
        out.append(ConfigProblem(
            "kafka.consumer.heartbeat_interval_ms",
            f"{c.heartbeat_interval_ms} ms is above a third of session_timeout_ms ({c.session_timeout_ms} ms)",
            f"set it to at most {c.session_timeout_ms // 3}, or raise session_timeout_ms",
        ))
    if c.session_timeout_ms > c.max_poll_interval_ms:
        out.append(ConfigProblem(
            "kafka.consumer.max_poll_interval_ms", "is below session_timeout_ms", f"set it to at least {c.session_timeout_ms}"
        ))
    for server in s.kafka.bootstrap_servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65_536:
            out.append(ConfigProblem("kafka.bootstrap_servers", f"'{server}' is not host:port", "write each server as host:port, e.g. kafka-0:9092"))
    if s.leader.renew_s * 2 > s.leader.lease_s:
        out.append(ConfigProblem("leader.renew_s", f"{s.leader.renew_s:g}s is above half of leader.lease_s "
                                 f"({s.leader.lease_s:g}s): a leader could lose its lease between renewals",
                                 f"set it to at most {s.leader.lease_s / 2:g}, or raise leader.lease_s"))
    t = s.kafka.topics
    names = [t.inference, t.feedback, t.dead_letter]
    if len(set(names)) != 3:
        out.append(ConfigProblem("kafka.topics", f"topic names must differ, got {names}", "give inference, feedback and dead_letter distinct names"))
    seen = set(names)
    for i, source in enumerate(s.ingest.sources):
        if source.topic in seen:
            out.append(ConfigProblem(f"ingest.sources.{i}.topic", f"topic '{source.topic}' is already read (or is the "
                                     "dead-letter topic)", "give each source its own topic, apart from kafka.topics"))
        seen.add(source.topic)
    sec = s.kafka.security
    if sec.protocol.startswith("SASL"):
        if sec.sasl_mechanism is None:
            out.append(ConfigProblem("kafka.security.sasl_mechanism", f"required with protocol {sec.protocol}", "set PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"))
        if not sec.sasl_username:
            out.append(ConfigProblem("kafka.security.sasl_username", f"required with protocol {sec.protocol}", "set the SASL user name"))
        if sec.sasl_password is None:
            out.append(ConfigProblem("kafka.security.sasl_password", f"required with protocol {sec.protocol}",
                                     "set it, preferably from a secret via DRIFTWATCH__KAFKA__SECURITY__SASL_PASSWORD"))
    elif sec.sasl_mechanism is not None:
        out.append(ConfigProblem("kafka.security.sasl_mechanism", f"set but protocol is {sec.protocol}", "use protocol SASL_SSL (or SASL_PLAINTEXT), or remove sasl_mechanism"))
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(sec, name)
        if value is not None and not value.is_file():
            out.append(ConfigProblem(f"kafka.security.{name}", f"file {value} does not exist", "point it at a readable PEM file"))
    if s.ingest.max_record_bytes > c.max_partition_fetch_bytes:
        out.append(ConfigProblem("ingest.max_record_bytes", f"above kafka.consumer.max_partition_fetch_bytes ({c.max_partition_fetch_bytes})",
                                 f"set it to at most {c.max_partition_fetch_bytes}, or raise max_partition_fetch_bytes"))
    ref = s.monitor.reference_path
    if ref is not None and not ref.is_file():
        out.append(ConfigProblem("monitor.reference_path", f"file {ref} does not exist",
                                 "build one with `driftwatch baseline --events FILE.jsonl --out PATH`, or remove the field"))
    if s.monitor.refusal_patterns:
        import re

        for pattern in s.monitor.refusal_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                out.append(ConfigProblem("monitor.refusal_patterns", f"'{pattern}' is not a regular expression: {exc}",
                                         "fix or remove the pattern"))
    r = s.retrain
    if r.base_model is not None:
        if not (r.base_model / "config.json").is_file():
            out.append(ConfigProblem("retrain.base_model", f"{r.base_model} is not a model directory (no config.json)",
                                     "point it at a directory written by save_pretrained"))
        if r.golden_set is None:
            out.append(ConfigProblem("retrain.golden_set", "required when retrain.base_model is set",
                                     "name a JSONL file of {prompt, expected}: the held-out set candidates are judged on"))
    for name in ("golden_set", "base_training_set"):
        value = getattr(r, name)
        if value is not None and not value.is_file():
            out.append(ConfigProblem(f"retrain.{name}", f"file {value} does not exist",
                                     "point it at a JSONL file (format: docs/training-data.md)"))
    ctl = s.control
    if ctl.token is not None and ctl.token_file is not None:
        out.append(ConfigProblem("control.token_file", "set together with control.token", "keep one of the two"))
    elif ctl.token_file is not None and not ctl.token_file.is_file():
        out.append(ConfigProblem("control.token_file", f"file {ctl.token_file} does not exist",
                                 "point it at the mounted Secret's key, or remove the field"))
    elif (ctl.token is not None or ctl.token_file is not None) and len(ctl.secret() or "") < 16:
        out.append(ConfigProblem("control.token" if ctl.token is not None else "control.token_file",
                                 "the control token is shorter than 16 characters",
                                 "use a random one, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"))
    if r.runner == "kubernetes":
        for name in ("image", "pvc"):
            if getattr(r.kubernetes, name) is None:
                out.append(ConfigProblem(f"retrain.kubernetes.{name}", "required with retrain.runner: kubernetes",
                                         "set the trainer image" if name == "image" else
                                         "name the PersistentVolumeClaim the daemon and the Job share"))
    features = NUMERIC_FEATURES + CATEGORICAL_FEATURES
    names = [r.name for r in s.policy.rules]
    for i, rule in enumerate(s.policy.rules):
        where = f"policy.rules.{i}"
        feature = rule.signal[6:] if rule.signal.startswith("drift:") else None
        if rule.signal not in SIGNALS and feature not in features:
            out.append(ConfigProblem(f"{where}.signal", f"unknown signal '{rule.signal}'",
                                     f"use one of {', '.join(SIGNALS)}, or drift:<one of {', '.join(features)}>"))
        if names.count(rule.name) > 1:
            out.append(ConfigProblem(f"{where}.name", f"rule name '{rule.name}' is used twice", "give each rule its own name"))
        if rule.clear is not None and (rule.clear > rule.threshold if rule.op == ">=" else rule.clear < rule.threshold):
            out.append(ConfigProblem(f"{where}.clear", f"{rule.clear} is on the firing side of the threshold {rule.threshold}",
                                     f"set it {'below' if rule.op == '>=' else 'above'} {rule.threshold}, or leave it out"))
    buckets = s.metrics.latency_buckets_s
    if any(b <= 0 for b in buckets) or buckets != sorted(set(buckets)):
        out.append(ConfigProblem("metrics.latency_buckets_s", f"{buckets} is not strictly increasing and positive", "list positive bucket bounds in increasing order"))
    return out


def reference() -> str:
    """docs/configuration.md, generated from the tree (``make docs``; a unit test fails when the file drifts)."""
    import typing

    lines = [
        "# Configuration", "",
        "One YAML file (`driftwatch run --config FILE`, checked by `driftwatch config check FILE`) plus environment",
        "overrides: `DRIFTWATCH__SECTION__FIELD=value` (lists as comma-separated strings). Precedence: defaults <",
        "file < environment. Unknown fields are errors (with a did-you-mean), so typos never pass silently.",
        "Secrets (`*_password`) are never printed or logged.", "",
        "Generated from `driftwatch.config.Settings` by `make docs`.", "",
        "| field | default | notes |", "|---|---|---|",
    ]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            default = field.get_default(call_default_factory=True)
            notes = [field.description] if field.description else []
            for meta in field.metadata:
                notes += [f"{sym} {getattr(meta, attr)}" for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"))
                          if getattr(meta, attr, None) is not None]
            for arg in (ann, *typing.get_args(ann)):
                if typing.get_origin(arg) is Literal:
                    notes.append("one of " + ", ".join(f"`{v}`" for v in typing.get_args(arg)))
                if arg is SecretStr:
                    notes.append("secret")
            if isinstance(default, list) and default and isinstance(default[0], BaseModel):
                shown = ", ".join(getattr(item, "name", "?") for item in default)
                notes.append("a list of rules, each: name, signal, threshold, op, clear, for_s, min_samples, action")
            else:
                shown = "—" if default is None else default
            lines.append(f"| `{prefix}{name}` | `{shown}` | {'; '.join(notes)} |")

    walk(Settings, "")
    return "\n".join(lines) + "\n"
