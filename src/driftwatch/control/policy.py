"""Rules over monitor snapshots → decisions (retrain | alert | hold | resolved), with state that survives restarts.

Each rule watches one signal of each adapter's window. Its state per adapter goes inactive → pending (the
condition holds) → firing (it held for ``for_s``) → inactive again only when the signal crosses the *clear*
level (hysteresis). A rule that starts firing with action ``retrain`` emits a :class:`RetrainRequest` — unless a
cooldown or the daily maximum says hold, which is recorded with its reason too. No data (a window too small)
changes nothing. Every transition and decision is written to the state store.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from driftwatch.metrics import Metrics
from driftwatch.monitor.monitor import AdapterSnapshot, MonitorSnapshot
from driftwatch.state.store import RuleState, StateStore

log = logging.getLogger(__name__)

INPUT_FEATURES = ("prompt_chars", "prompt_tokens", "route", "language", "semantic")
OUTPUT_FEATURES = ("response_chars", "response_tokens", "repeated_ngram_ratio", "refusal", "empty_response")
SIGNALS = ("input_drift", "output_drift", "error_ratio", "refusal_rate", "empty_rate", "negative_feedback_ratio",
           "distinct_2", "distinct_2_ratio")
STATE_CODES = {"inactive": 0, "pending": 1, "firing": 2}
DAY = 86_400.0


@dataclass(frozen=True)
class RuleSpec:
    name: str
    signal: str  # one of SIGNALS, or "drift:<feature>"
    threshold: float
    op: str = ">="  # ">=" or "<="
    clear: float | None = None  # hysteresis level; default: the threshold itself
    for_s: float = 0.0
    min_samples: int = 0  # window events (feedback count for negative_feedback_ratio)
    action: str = "retrain"  # retrain | alert


@dataclass(frozen=True)
class RetrainRequest:
    """What the policy hands the retrain stage: a plain value."""

    adapter: str
    rule: str
    reasons: tuple[str, ...]
    decision_id: int
    requested_at: float
    routes: tuple[str, ...] = ()  # routes whose share grew: the training set must cover them


@dataclass(frozen=True)
class Decision:
    adapter: str
    action: str
    rule: str
    reasons: tuple[str, ...]
    id: int
    run_id: str | None = None  # the retrain run a "retrain" decision started


PAUSE_EVENT = "automatic-retraining"  # event kind; detail {"paused": bool}: the latest one says


def paused_in(store: StateStore) -> bool:
    """Whether automatic retraining is paused, as the store's latest pause/resume event says."""
    last = next(iter(store.events(kind=PAUSE_EVENT, limit=1)), None)
    return bool(last is not None and last.detail.get("paused"))


def signal_value(spec: RuleSpec, a: AdapterSnapshot, baselines: dict[str, float]) -> tuple[float | None, int]:
    """The signal's value for this adapter's window and the sample size it rests on (None: no data)."""
    if spec.signal == "negative_feedback_ratio":
        return a.negative_feedback_ratio, a.feedback_count
    n = a.window_events
    if spec.signal == "input_drift":
        tested = [a.drift[f] for f in INPUT_FEATURES if f in a.drift and a.drift[f].value is not None]
        return (float(sum(v.drifted for v in tested)) if tested else None), n
    if spec.signal == "output_drift":
        tested = [a.drift[f] for f in OUTPUT_FEATURES if f in a.drift and a.drift[f].value is not None]
        return (float(sum(v.drifted for v in tested)) if tested else None), n
    if spec.signal.startswith("drift:"):
        v = a.drift.get(spec.signal[6:])
        return (None if v is None or v.value is None else float(v.drifted)), n
    if spec.signal == "distinct_2_ratio":
        base = baselines.get("distinct_2")
        return (a.distinct_2 / base if a.distinct_2 is not None and base else None), n
    return getattr(a, spec.signal), n


def _describe(spec: RuleSpec, a: AdapterSnapshot, value: float) -> str:
    text = (f"{spec.name}: {spec.signal} = {value:.4g} {spec.op} {spec.threshold:g}"
            f"{f' for {spec.for_s:g}s' if spec.for_s else ''} on adapter '{a.adapter}' (window of {a.window_events} events)")
    drifted = [f"{name} ({v.reason})" for name, v in sorted(a.drift.items()) if v.drifted]
    return text + (f"; drifted: {'; '.join(drifted)}" if drifted else "")


class Policy:
    def __init__(
        self,
        rules: Iterable[RuleSpec],
        store: StateStore,
        metrics: Metrics | None = None,
        *,
        cooldown_s: float = 6 * 3600,
        max_retrains_per_day: int = 3,
        on_retrain: Callable[[RetrainRequest], str | None] | None = None,
        baselines: dict[str, float] | None = None,
    ) -> None:
        self.rules = list(rules)
        self.store = store
        self.metrics = metrics
        self.cooldown_s = cooldown_s
        self.max_per_day = max_retrains_per_day
        self.on_retrain = on_retrain or (lambda req: log.warning("retrain requested (no retrain stage yet): %s", req))
        self.baselines = baselines or {}
        self.paused = paused_in(store)
        if metrics is not None:
            metrics.retrain_paused.set(int(self.paused))
            for spec in self.rules:
                if spec.action == "retrain":
                    metrics.retrain_requests.labels(rule=spec.name)
        self.busy: Callable[[], str | None] = lambda: None  # why acting now would collide (a rollout in progress)
        self._states = store.rule_states()
        self._lock = threading.RLock()  # the scheduler's ticks and the control API's requests decide one at a time

    def reload(self) -> None:
        """Read rule states and the pause from the store again: a replica that just became the leader goes on from
        what the previous leader recorded (a rule it saw firing stays firing: no second trigger for one shift)."""
        with self._lock:
            self._states = self.store.rule_states()
            self.paused = paused_in(self.store)
            if self.metrics is not None:
                self.metrics.retrain_paused.set(int(self.paused))

    def state(self, rule: str, adapter: str) -> RuleState:
        return self._states.get((rule, adapter)) or RuleState(rule, adapter, "inactive", 0.0, None)

    def tick(self, snapshot: MonitorSnapshot, now: float) -> list[Decision]:
        decisions: list[Decision] = []
        with self._lock:
            for adapter, a in sorted(snapshot.adapters.items()):
                for spec in self.rules:
                    decision = self._step(spec, a, now)
                    if decision is not None:
                        decisions.append(decision)
        return decisions

    def _step(self, spec: RuleSpec, a: AdapterSnapshot, now: float) -> Decision | None:
        value, n = signal_value(spec, a, self.baselines)
        current = self.state(spec.name, a.adapter)
        if value is None or (isinstance(value, float) and math.isnan(value)) or n < spec.min_samples:
            return None  # no data holds: neither fires nor clears
        hit = value >= spec.threshold if spec.op == ">=" else value <= spec.threshold
        clear_level = spec.threshold if spec.clear is None else spec.clear
        cleared = value < clear_level if spec.op == ">=" else value > clear_level
        new_state, since, decision = current.state, current.since, None
        if current.state == "inactive" and hit:
            new_state, since = "pending", now
        if new_state == "pending":
            if not hit:
                new_state, since = "inactive", now
            elif now - since >= spec.for_s:
                new_state, since = "firing", now
                decision = self._fire(spec, a, value, now)
        elif current.state == "firing" and cleared:
            new_state, since = "inactive", now
            reason = f"{spec.name}: {spec.signal} = {value:.4g} crossed the clear level {clear_level:g}"
            decision = self._record(a.adapter, "resolved", spec.name, (reason,), now)
        state = RuleState(spec.name, a.adapter, new_state, since, value)
        if state != current:
            self._states[(spec.name, a.adapter)] = state
            self.store.save_rule_state(state, now)
        if self.metrics is not None:
            self.metrics.rule_state.labels(rule=spec.name, adapter=a.adapter).set(STATE_CODES[new_state])
        return decision

    def _fire(self, spec: RuleSpec, a: AdapterSnapshot, value: float, now: float) -> Decision:
        reasons = (_describe(spec, a, value),)
        if spec.action != "retrain":
            return self._record(a.adapter, spec.action, spec.name, reasons, now)
        return self.request_retrain(a.adapter, spec.name, reasons, now, routes=a.grown_routes)

    def request_retrain(self, adapter: str, rule: str, reasons: tuple[str, ...], now: float, *,
                        routes: tuple[str, ...] = (), manual: bool = False) -> Decision:
        """A retrain asked for by a rule, an alert or a person: recorded as ``retrain`` and handed on, or as ``hold``
        with the reason. A manual request skips the pause, the cooldown and the daily cap; never a rollout in progress."""
        with self._lock:
            hold = self._why_hold(adapter, now, manual)
            if hold:
                return self._record(adapter, "hold", rule, reasons + (hold,), now)
            decision = self._record(adapter, "retrain", rule, reasons, now)
            if self.metrics is not None:
                self.metrics.retrain_requests.labels(rule=rule).inc()
            run_id = self.on_retrain(RetrainRequest(adapter, rule, reasons, decision.id, now, routes))
            return replace(decision, run_id=run_id)

    def pause(self, paused: bool, who: str, why: str, now: float) -> None:
        """Pause or resume automatic retraining; persisted (a restart keeps it) and logged as an event."""
        self.store.commit(now, who, PAUSE_EVENT, None, why, detail={"paused": paused})
        self.paused = paused
        if self.metrics is not None:
            self.metrics.retrain_paused.set(int(paused))
        log.warning("automatic retraining %s by %s: %s", "paused" if paused else "resumed", who, why)

    def _why_hold(self, adapter: str, now: float, manual: bool = False) -> str | None:
        if (busy := self.busy()) is not None:
            return f"held: {busy}"
        if manual:
            return None
        if self.paused:
            return "automatic retraining is paused"
        recent = self.store.decisions(since=now - DAY, action="retrain")
        if len(recent) >= self.max_per_day:
            return f"held: {len(recent)} retrains in the last 24 h (policy.max_retrains_per_day = {self.max_per_day})"
        last = next((d for d in recent if d.adapter == adapter), None)
        if last is not None and now - last.at < self.cooldown_s:
            return f"held: cooldown until {self.cooldown_s - (now - last.at):.0f}s from now (policy.cooldown_s = {self.cooldown_s:g})"
        return None

    def _record(self, adapter: str, action: str, rule: str, reasons: tuple[str, ...], now: float) -> Decision:
        decision_id = self.store.record_decision(now, adapter, action, rule, list(reasons))
        log.info("decision %d: %s for adapter '%s': %s", decision_id, action, adapter, " | ".join(reasons))
        if self.metrics is not None:
            self.metrics.decisions.labels(action=action).inc()
        return Decision(adapter, action, rule, reasons, decision_id)


DEFAULT_RULES: tuple[RuleSpec, ...] = (
    RuleSpec("input-drift", "input_drift", threshold=1, clear=0.5, for_s=0, min_samples=1000),
    RuleSpec("output-collapse", "distinct_2_ratio", op="<=", threshold=0.85, clear=0.92, for_s=60, min_samples=500),
    RuleSpec("refusals", "refusal_rate", threshold=0.1, clear=0.05, for_s=60, min_samples=500),
    RuleSpec("negative-feedback", "negative_feedback_ratio", threshold=0.35, clear=0.25, for_s=120, min_samples=50),
    RuleSpec("error-ratio", "error_ratio", threshold=0.05, clear=0.02, for_s=120, min_samples=500, action="alert"),
)

