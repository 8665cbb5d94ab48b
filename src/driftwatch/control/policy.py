"""Rules over a check's snapshot → decisions (retrain | alert | hold | resolved), with state that survives restarts.

Each rule watches one signal of each adapter's window. Its state per adapter goes inactive → pending (the
condition holds) → firing (it held for ``for_s``) → inactive again only when the signal crosses the *clear*
level (hysteresis). A rule that starts firing with action ``retrain`` decides a retrain — unless something holds
it, which is recorded as a ``hold`` with its reason: a rollout or a retrain run in progress, the pause, the cooldown
or the daily maximum. No data (a window too small) changes nothing. Every transition and decision is written to the
state store; the reconciler (control/reconciler.py) acts on the decisions.

**Serving slots.** The cooldown and the daily maximum belong to the slot an adapter serves — the alias that points
to it (``production``), else the adapter itself — not to a version name. A version promoted to answer a drift
serves the slot whose retrain decided it, so it is not retrained for that drift again while the slot cools down.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Iterable, Mapping

from driftwatch.config import Rule
from driftwatch.metrics import Metrics
from driftwatch.monitor.monitor import AdapterSnapshot, MonitorSnapshot
from driftwatch.state.store import RuleState, SqlStore

log = logging.getLogger(__name__)

INPUT_FEATURES = ("prompt_chars", "prompt_tokens", "route", "language", "semantic")
OUTPUT_FEATURES = ("response_chars", "response_tokens", "repeated_ngram_ratio", "refusal", "empty_response")
STATE_CODES = {"inactive": 0, "pending": 1, "firing": 2}
DAY = 86_400.0


@dataclass(frozen=True)
class Decision:
    adapter: str
    action: str
    rule: str
    reasons: tuple[str, ...]
    id: int
    slot: str = ""  # the serving slot (the alias the adapter served, else the adapter)
    routes: tuple[str, ...] = ()  # retrain: routes whose share grew, that the training set must cover


PAUSE_EVENT = "automatic-retraining"  # event kind; detail {"paused": bool}: the latest one says


def paused_in(store: SqlStore) -> bool:
    """Whether automatic retraining is paused, as the store's latest pause/resume event says."""
    last = next(iter(store.events(kind=PAUSE_EVENT, limit=1)), None)
    return bool(last is not None and last.detail.get("paused"))


def signal_value(spec: Rule, a: AdapterSnapshot, baselines: dict[str, float]) -> tuple[float | None, int]:
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


def _describe(spec: Rule, a: AdapterSnapshot, value: float) -> str:
    text = (f"{spec.name}: {spec.signal} = {value:.4g} {spec.op} {spec.threshold:g}"
            f"{f' for {spec.for_s:g}s' if spec.for_s else ''} on adapter '{a.adapter}' (window of {a.window_events} events)")
    drifted = [f"{name} ({v.reason})" for name, v in sorted(a.drift.items()) if v.drifted]
    return text + (f"; drifted: {'; '.join(drifted)}" if drifted else "")


class Policy:
    def __init__(self, rules: Iterable[Rule], store: SqlStore, metrics: Metrics | None = None, *,
                 cooldown_s: float = 6 * 3600, max_retrains_per_day: int = 3) -> None:
        self.rules = list(rules)
        self.store, self.metrics = store, metrics
        self.cooldown_s, self.max_per_day = cooldown_s, max_retrains_per_day
        if metrics is not None:
            for spec in self.rules:
                if spec.action == "retrain":
                    metrics.retrain_requests.labels(rule=spec.name)
        self._lock = threading.Lock()  # the control thread decides; the status API reads the states
        self.reload()

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

    def decide(self, snapshot: MonitorSnapshot, now: float, *, slots: Mapping[str, str] | None = None,
               busy: str | None = None) -> list[Decision]:
        """Every rule on every adapter's window of one check. ``slots``: adapter → its serving slot (from the alias
        table); ``busy``: why acting now would collide (a rollout or a run in progress), holding any retrain."""
        decisions: list[Decision] = []
        for adapter, a in sorted(snapshot.adapters.items()):
            for spec in self.rules:
                decision = self._step(spec, a, now, snapshot.baselines, (slots or {}).get(adapter, adapter), busy)
                if decision is not None:
                    decisions.append(decision)
        return decisions

    def _step(self, spec: Rule, a: AdapterSnapshot, now: float, baselines: Mapping[str, float], slot: str,
              busy: str | None) -> Decision | None:
        value, n = signal_value(spec, a, baselines)
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
                reasons = (_describe(spec, a, value),)
                decision = (self._record(a.adapter, spec.action, spec.name, reasons, now, slot)
                            if spec.action != "retrain" else
                            self.request_retrain(a.adapter, spec.name, reasons, now, slot=slot, busy=busy,
                                                 routes=a.grown_routes))
        elif current.state == "firing" and cleared:
            new_state, since = "inactive", now
            reason = f"{spec.name}: {spec.signal} = {value:.4g} crossed the clear level {clear_level:g}"
            decision = self._record(a.adapter, "resolved", spec.name, (reason,), now, slot)
        state = RuleState(spec.name, a.adapter, new_state, since, value)
        if state != current:
            with self._lock:
                self._states[(spec.name, a.adapter)] = state
            self.store.save_rule_state(state, now)
        if self.metrics is not None:
            self.metrics.rule_state.labels(rule=spec.name, adapter=a.adapter).set(STATE_CODES[new_state])
        return decision

    def request_retrain(self, adapter: str, rule: str, reasons: tuple[str, ...], now: float, *, slot: str | None = None,
                        busy: str | None = None, routes: tuple[str, ...] = (), manual: bool = False) -> Decision:
        """A retrain asked for by a rule, an alert or a person: recorded as ``retrain`` (the reconciler queues its
        run), or as ``hold`` with the reason. A manual request skips the pause, the cooldown and the daily cap;
        never a rollout or a run in progress (``busy``)."""
        slot = slot or adapter
        hold = f"held: {busy}" if busy else None if manual else self._why_hold(slot, now)
        if hold:
            return self._record(adapter, "hold", rule, reasons + (hold,), now, slot)
        if self.metrics is not None:
            self.metrics.retrain_requests.labels(rule=rule).inc()
        return self._record(adapter, "retrain", rule, reasons, now, slot, routes)

    def pause(self, paused: bool, who: str, why: str, now: float) -> None:
        """Pause or resume automatic retraining; persisted (a restart keeps it) and logged as an event."""
        self.store.commit(now, who, PAUSE_EVENT, None, why, detail={"paused": paused})
        self.paused = paused
        if self.metrics is not None:
            self.metrics.retrain_paused.set(int(paused))
        log.warning("automatic retraining %s by %s: %s", "paused" if paused else "resumed", who, why)

    def _why_hold(self, slot: str, now: float) -> str | None:
        if self.paused:
            return "automatic retraining is paused"
        recent = [d for d in self.store.decisions(since=now - DAY, action="retrain") if (d.slot or d.adapter) == slot]
        if len(recent) >= self.max_per_day:
            return (f"held: {len(recent)} retrains of serving slot '{slot}' in the last 24 h "
                    f"(policy.max_retrains_per_day = {self.max_per_day})")
        if recent and now - recent[0].at < self.cooldown_s:
            return (f"held: serving slot '{slot}' cools down until {self.cooldown_s - (now - recent[0].at):.0f}s from "
                    f"now (retrain decision #{recent[0].id} on {recent[0].adapter}; policy.cooldown_s = "
                    f"{self.cooldown_s:g})")
        return None

    def _record(self, adapter: str, action: str, rule: str, reasons: tuple[str, ...], now: float, slot: str,
                routes: tuple[str, ...] = ()) -> Decision:
        decision_id = self.store.record_decision(now, adapter, action, rule, list(reasons), slot)
        log.info("decision %d: %s for adapter '%s' (slot %s): %s", decision_id, action, adapter, slot,
                 " | ".join(reasons))
        if self.metrics is not None:
            self.metrics.decisions.labels(action=action).inc()
        return Decision(adapter, action, rule, reasons, decision_id, slot, routes)
