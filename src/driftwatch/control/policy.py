"""Rules over a check's snapshot → decisions (retrain | alert | hold | resolved), with state that survives restarts.

Each rule watches one signal of each adapter's window. Its state per adapter goes inactive → pending (the
condition holds) → firing (it held for ``for_s``) → inactive again only when the signal crosses the *clear*
level (hysteresis). No data (a window too small) changes nothing. Every transition and decision is written to the
state store; the reconciler (control/reconciler.py) acts on the decisions.

**Retrains are level-triggered.** A firing ``retrain`` rule is pursued on every check, not only when it starts
firing (Kubernetes controllers compare the world with what it should be on each pass). Its retrain decisions since
it began firing are read back from the store with their outcomes (``outcome``: the reconciler's view of each
decision's run and rollout): one still in flight waits; a promotion answers the rule; each that ended without a
promotion is an *attempt*. It decides a retrain when nothing holds it, in this order: a rollout or run in progress,
the pause, the daily maximum, the cooldown (from the last decision, or from the end of the last attempt), and after
an attempt, fewer than ``min_new_examples`` examples harvested since (the same data would train the same
candidate). After ``max_attempts`` consecutive attempts the slot is *stuck* (``driftwatch_retrain_stuck``) until the
signal clears, a promotion, or a person's ``retrain`` or ``resume``. A hold is recorded as a ``hold`` decision when
its kind changes (the timeline), and :attr:`Policy.waiting` says why each firing rule is not retraining now and when
it next tries (the status API).

**Serving slots.** The cooldown and the daily maximum belong to the slot an adapter serves — the alias that points
to it (``production``), else the adapter itself — not to a version name. A version promoted to answer a drift
serves the slot whose retrain decided it, so it is not retrained for that drift again while the slot cools down.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

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


@dataclass(frozen=True)
class Waiting:
    """Why a firing retrain rule is not retraining now: ``kind`` (in-flight | busy | paused | daily-cap | cooldown |
    new-data | stuck), the reason in words, and when it next tries (None: when the hold lifts)."""

    kind: str
    reason: str
    next_try: float | None
    attempts: int
    slot: str = ""


Outcome = Callable[[int], "tuple[str, float | None]"]  # decision id → (open | promoted | unpromoted | answered, at)


def _never_retried(decision_id: int) -> tuple[str, float | None]:
    return "open", None  # without the reconciler's view every decision stays in flight: nothing is retried


def human_time(now: float, at: float) -> str:
    """``at`` as a UTC time and a duration from ``now``: '2026-12-07 15:03 UTC (in 5 h 59 min)'."""
    import time as _time

    left = max(0.0, at - now)
    hours, minutes = divmod(round(left / 60), 60)
    span = f"{hours} h {minutes} min" if hours else f"{minutes} min" if minutes else f"{left:.0f} s"
    return f"{_time.strftime('%Y-%m-%d %H:%M UTC', _time.gmtime(at))} (in {span})"


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
                 cooldown_s: float = 6 * 3600, max_retrains_per_day: int = 3, max_attempts: int = 3,
                 min_new_examples: int = 0) -> None:
        self.rules = list(rules)
        self.store, self.metrics = store, metrics
        self.cooldown_s, self.max_per_day = cooldown_s, max_retrains_per_day
        self.max_attempts, self.min_new_examples = max_attempts, min_new_examples
        self.waiting: dict[tuple[str, str], Waiting] = {}  # (rule, adapter) → why it is not retraining now
        self._stuck: set[str] = set()  # slots whose driftwatch_retrain_stuck series is 1
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
               busy: str | None = None, outcome: Outcome = _never_retried) -> list[Decision]:
        """Every rule on every adapter's window of one check. ``slots``: adapter → its serving slot (from the alias
        table); ``busy``: why acting now would collide (a rollout or a run in progress), holding any retrain;
        ``outcome``: where a retrain decision ended (see the module's docstring)."""
        decisions: list[Decision] = []
        for adapter, a in sorted(snapshot.adapters.items()):
            for spec in self.rules:
                decision = self._step(spec, a, now, snapshot.baselines, (slots or {}).get(adapter, adapter), busy,
                                      outcome)
                if decision is not None:
                    decisions.append(decision)
        self._export_stuck()
        return decisions

    def _step(self, spec: Rule, a: AdapterSnapshot, now: float, baselines: Mapping[str, float], slot: str,
              busy: str | None, outcome: Outcome) -> Decision | None:
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
                if spec.action != "retrain":
                    decision = self._record(a.adapter, spec.action, spec.name, (_describe(spec, a, value),), now, slot)
        elif current.state == "firing" and cleared:
            new_state, since = "inactive", now
            reason = f"{spec.name}: {spec.signal} = {value:.4g} crossed the clear level {clear_level:g}"
            decision = self._record(a.adapter, "resolved", spec.name, (reason,), now, slot)
            self.waiting.pop((spec.name, a.adapter), None)
        if new_state == "firing" and spec.action == "retrain":
            decision = self._pursue(spec, a, value, since, now, slot, busy, outcome)
        state = RuleState(spec.name, a.adapter, new_state, since, value)
        if state != current:
            with self._lock:
                self._states[(spec.name, a.adapter)] = state
            self.store.save_rule_state(state, now)
        if self.metrics is not None:
            self.metrics.rule_state.labels(rule=spec.name, adapter=a.adapter).set(STATE_CODES[new_state])
        return decision

    def _pursue(self, spec: Rule, a: AdapterSnapshot, value: float, firing_since: float, now: float, slot: str,
                busy: str | None, outcome: Outcome) -> Decision | None:
        """A firing retrain rule, on each check: decide a retrain unless one is in flight, one was promoted, or
        something holds it (see the module's docstring)."""
        key = (spec.name, a.adapter)
        tries = [d for d in reversed(self.store.decisions(since=max(firing_since, self._reset_at(slot)),
                                                          action="retrain"))
                 if d.rule == spec.name and d.adapter == a.adapter]
        attempts, last, ended = 0, None, None
        for d in tries:
            state, at = outcome(d.id)
            if state == "open":
                self.waiting[key] = Waiting("in-flight", f"decision #{d.id} is in flight (its run or rollout has "
                                            "not finished)", None, attempts, slot)
                return None
            if state in ("promoted", "answered"):  # a promotion answered the drift (or no retrain stage runs it)
                self.waiting.pop(key, None)
                return None
            attempts, last, ended = attempts + 1, d, at if at is not None else d.at
        reasons = (_describe(spec, a, value),)
        if attempts >= self.max_attempts:
            return self._wait(key, slot, reasons, now, Waiting(
                "stuck", f"stuck: {attempts} consecutive attempts ended without a promotion (policy.max_attempts = "
                f"{self.max_attempts}; last: decision #{last.id}); `driftwatch retrain` or `driftwatch resume` tries "
                "again", None, attempts))
        held = self._hold(slot, now, busy, last, ended, attempts)
        if held is not None:
            return self._wait(key, slot, reasons, now, held)
        self.waiting.pop(key, None)
        if last is not None:
            reasons += (f"attempt {attempts + 1} of {self.max_attempts}: decision #{last.id} ended without a "
                        "promotion",)
        return self._retrain(a.adapter, spec.name, reasons, now, slot, a.grown_routes)

    def _wait(self, key: tuple[str, str], slot: str, reasons: tuple[str, ...], now: float,
              waiting: Waiting) -> Decision | None:
        """Note why a rule waits; record it as a ``hold`` decision when its kind changed (the timeline)."""
        before = self.waiting.get(key)
        self.waiting[key] = waiting = replace(waiting, slot=slot)
        if before is not None and before.kind == waiting.kind:
            return None
        return self._record(key[1], "hold", key[0], reasons + (f"held: {waiting.reason}",), now, slot)

    def _reset_at(self, slot: str) -> float:
        """When a person last asked for a retrain of this slot, or resumed retraining: attempts count from there."""
        resumed = next((e.at for e in self.store.events(kind=PAUSE_EVENT, limit=50) if not e.detail.get("paused")), 0.0)
        manual = next((d.at for d in self.store.decisions(action="retrain", limit=50)
                       if d.rule == "manual" and (d.slot or d.adapter) == slot), 0.0)
        return max(resumed, manual)

    def request_retrain(self, adapter: str, rule: str, reasons: tuple[str, ...], now: float, *, slot: str | None = None,
                        busy: str | None = None, routes: tuple[str, ...] = (), manual: bool = False) -> Decision:
        """A retrain asked for by an alert or a person: recorded as ``retrain`` (the reconciler queues its run), or
        as ``hold`` with the reason. A manual request skips the pause, the cooldown and the daily cap; never a
        rollout or a run in progress (``busy``)."""
        slot = slot or adapter
        held = Waiting("busy", busy, None, 0) if busy else None if manual else self._hold(slot, now, None, None, None, 0)
        if held is not None:
            return self._record(adapter, "hold", rule, reasons + (f"held: {held.reason}",), now, slot)
        if manual:  # a person asked: the slot's attempts count from here
            self.waiting = {k: w for k, w in self.waiting.items() if not (w.slot == slot and w.kind == "stuck")}
            self._export_stuck()
        return self._retrain(adapter, rule, reasons, now, slot, routes)

    def _retrain(self, adapter: str, rule: str, reasons: tuple[str, ...], now: float, slot: str,
                 routes: tuple[str, ...]) -> Decision:
        if self.metrics is not None:
            self.metrics.retrain_requests.labels(rule=rule).inc()
        return self._record(adapter, "retrain", rule, reasons, now, slot, routes)

    def pause(self, paused: bool, who: str, why: str, now: float) -> None:
        """Pause or resume automatic retraining; persisted (a restart keeps it) and logged as an event."""
        self.store.commit(now, who, PAUSE_EVENT, None, why, detail={"paused": paused})
        self.paused = paused
        if not paused:  # a person resumed: every stuck slot's attempts count from here
            self.waiting = {k: w for k, w in self.waiting.items() if w.kind != "stuck"}
            self._export_stuck()
        if self.metrics is not None:
            self.metrics.retrain_paused.set(int(paused))
        log.warning("automatic retraining %s by %s: %s", "paused" if paused else "resumed", who, why)

    def _hold(self, slot: str, now: float, busy: str | None, last, ended: float | None, attempts: int) -> Waiting | None:
        """What holds a retrain of ``slot`` now, in order; ``last``/``ended``: the last attempt and when it ended."""
        if busy:
            return Waiting("busy", busy, None, attempts)
        if self.paused:
            return Waiting("paused", "automatic retraining is paused; `driftwatch resume` lifts it", None, attempts)
        recent = [d for d in self.store.decisions(since=now - DAY, action="retrain") if (d.slot or d.adapter) == slot]
        if len(recent) >= self.max_per_day:  # 0: automatic retrains off
            at = recent[self.max_per_day - 1].at + DAY if recent and self.max_per_day else None
            return Waiting("daily-cap", f"{len(recent)} retrains of serving slot '{slot}' in the last 24 h "
                           f"(policy.max_retrains_per_day = {self.max_per_day})"
                           + (f"; next at {human_time(now, at)}" if at is not None else ""), at, attempts)
        start = max(([recent[0].at] if recent else []) + ([ended] if ended is not None else []), default=None)
        if start is not None and now - start < self.cooldown_s:
            at = start + self.cooldown_s
            why = (f"retrain decision #{recent[0].id} on {recent[0].adapter}" if recent and start == recent[0].at
                   else f"attempt #{last.id} ended")
            return Waiting("cooldown", f"serving slot '{slot}' cools down until {human_time(now, at)} ({why}; "
                           f"policy.cooldown_s = {self.cooldown_s:g})", at, attempts)
        if last is not None and self.min_new_examples:
            new = self.store.count_examples(since=last.at)
            if new < self.min_new_examples:
                return Waiting("new-data", f"{new} examples harvested since attempt #{last.id}; a retry needs "
                               f"{self.min_new_examples} (retrain.min_new_examples): the same data would train the "
                               "same candidate", None, attempts)
        return None

    def _export_stuck(self) -> None:
        stuck = {w.slot for w in self.waiting.values() if w.kind == "stuck"}
        if self.metrics is not None:
            for slot in self._stuck | stuck:
                self.metrics.retrain_stuck.labels(slot=slot).set(int(slot in stuck))
        self._stuck = stuck

    def _record(self, adapter: str, action: str, rule: str, reasons: tuple[str, ...], now: float, slot: str,
                routes: tuple[str, ...] = ()) -> Decision:
        decision_id = self.store.record_decision(now, adapter, action, rule, list(reasons), slot)
        log.info("decision %d: %s for adapter '%s' (slot %s): %s", decision_id, action, adapter, slot,
                 " | ".join(reasons))
        if self.metrics is not None:
            self.metrics.decisions.labels(action=action).inc()
        return Decision(adapter, action, rule, reasons, decision_id, slot, routes)
