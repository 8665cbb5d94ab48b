"""Windows per adapter on mergeable sketches, and the check that compares them with the reference. No I/O.

Each adapter has a current window that fills until ``window_events`` events or ``window_seconds`` pass, then
closes; checks run on the last closed window (a stable sample) against the reference profile. Memory per
adapter is constant: sketches with the reference's edges, counters, and a capped sample of responses for the
diversity (distinct-n) measure. :meth:`Monitor.snapshot` returns a plain :class:`MonitorSnapshot`.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from driftwatch.events import Event, FeedbackEvent, InferenceEvent, Kind
from driftwatch.metrics import UNKNOWN, LabelCap, Metrics
from driftwatch.monitor.features import CATEGORICAL, NUMERIC, FeatureExtractor, Features, distinct_n, prompt_text
from driftwatch.monitor.sketch import Categories, Histogram, Profile
from driftwatch.monitor.stats import Verdict, semantic_verdict, verdict
from driftwatch.ingest.recent import DedupWindow

log = logging.getLogger(__name__)


def merge_views(views: dict[str, tuple[Window, bool]], others: Sequence[tuple[str, bytes]]
                ) -> dict[str, tuple[Window, bool]]:
    """The leader's view of every partition: its own windows (:meth:`Monitor.windows`) with each follower's
    published window of the same adapter merged in (``others``: (adapter, :meth:`Window.to_bytes`)). A merged window
    counts as closed only when every part is."""
    out = dict(views)
    for adapter, data in others:
        theirs, closed = Window.from_bytes(data)
        mine = out.get(adapter)
        try:
            out[adapter] = (theirs, closed) if mine is None else (mine[0].merged(theirs), mine[1] and closed)
        except ValueError:  # cut at another reference's edges: a follower that has not taken up a re-baseline yet
            log.info("a follower's window of %s is on another reference; left out of this check", adapter)
    return out


@dataclass(frozen=True)
class MonitorSettings:
    window_events: int = 2000
    window_seconds: float = 600.0
    max_categories: int = 50
    alpha: float = 0.01
    min_samples: int = 200
    psi_floor: float = 0.05
    cramers_v_floor: float = 0.1
    diversity_sample: int = 500
    report_sample: int = 1000  # feature rows kept per window (reservoir) for Evidently reports; 0: none
    semantic_sample: int = 0  # prompts kept per window for the semantic (embedding) check; 0: off
    semantic_floor: float = 0.01  # MMD² at least this, and significant, counts as semantic drift
    semantic_permutations: int = 200


def _reservoir(sample: list, cap: int, item, seen: int, rng: random.Random) -> None:
    """Keep a uniform sample of ``cap`` of the ``seen`` items so far (``item`` is the seen-th)."""
    if len(sample) < cap:
        sample.append(item)
    elif cap and (j := rng.randrange(seen)) < cap:
        sample[j] = item


class Window:
    __slots__ = ("numeric", "categorical", "events", "errors", "refusals", "empties", "feedback", "responses",
                 "started", "latency_ms_sum", "diversity_cap", "rows", "rows_cap", "prompts", "prompts_cap", "semantic", "rng")

    def __init__(self, reference: Profile | None, max_categories: int, diversity_cap: int, now: float,
                 rows_cap: int = 0, prompts_cap: int = 0, rng: random.Random | None = None) -> None:
        ref_num = reference.numeric if reference else {}
        self.numeric = {name: ref_num[name].empty_like() for name in NUMERIC if name in ref_num}
        self.categorical = {name: Categories(max_categories) for name in CATEGORICAL}
        self.events = self.errors = self.refusals = self.empties = 0
        self.latency_ms_sum = 0.0
        self.feedback = {"positive": 0, "negative": 0, "neutral": 0}
        self.responses: list[str] = []
        self.diversity_cap = diversity_cap
        self.rows: list[Features] = []  # a uniform sample of the window's feature rows (reservoir)
        self.rows_cap = rows_cap
        self.prompts: list[str] = []  # a uniform sample of prompts, for the semantic check
        self.prompts_cap = prompts_cap
        self.semantic: Verdict | None = None  # computed once, when the window is closed
        self.rng = rng or random.Random(0)
        self.started = now

    def add(self, features, response: str | None, prompt: str | None = None) -> None:
        self.events += 1
        for name, hist in self.numeric.items():
            hist.add(getattr(features, name))
        for name, cats in self.categorical.items():
            cats.add(getattr(features, name))
        self.errors += features.status != "ok"
        self.refusals += features.refusal == "yes"
        self.empties += features.empty_response == "yes"
        self.latency_ms_sum += features.latency_ms
        if response and len(self.responses) < self.diversity_cap:
            self.responses.append(response[:1000])
        _reservoir(self.rows, self.rows_cap, features, self.events, self.rng)
        if prompt is not None:
            _reservoir(self.prompts, self.prompts_cap, prompt[:2000], self.events, self.rng)

    def to_bytes(self, closed: bool) -> bytes:
        """The window as a follower publishes it for the leader (compressed JSON; no reservoir state, no verdict)."""
        return zlib.compress(json.dumps({
            "closed": closed,
            "numeric": {k: h.counts for k, h in self.numeric.items()},
            "edges": {k: h.edges for k, h in self.numeric.items()},
            "categorical": {k: c.to_dict() for k, c in self.categorical.items()},
            "counters": [self.events, self.errors, self.refusals, self.empties, self.latency_ms_sum],
            "feedback": self.feedback, "started": self.started,
            "caps": [self.diversity_cap, self.rows_cap, self.prompts_cap],
            "responses": self.responses, "rows": [list(r) for r in self.rows], "prompts": self.prompts,
        }, separators=(",", ":")).encode(), 1)

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[Window, bool]:
        """(the window, whether it was closed) from :meth:`to_bytes`."""
        doc = json.loads(zlib.decompress(data))
        win = cls(None, 2, doc["caps"][0], doc["started"], doc["caps"][1], doc["caps"][2])
        win.numeric = {k: Histogram(doc["edges"][k], counts) for k, counts in doc["numeric"].items()}
        win.categorical = {k: Categories(c["max_values"], c["counts"]) for k, c in doc["categorical"].items()}
        win.events, win.errors, win.refusals, win.empties, win.latency_ms_sum = doc["counters"]
        win.feedback, win.responses, win.prompts = doc["feedback"], doc["responses"], doc["prompts"]
        win.rows = [Features(*r) for r in doc["rows"]]
        return win, doc["closed"]

    def merged(self, other: Window) -> Window:
        """One window of both (e.g. two replicas' windows of one adapter): sketches and counters add exactly; the
        response and row samples take from each in proportion to its events."""
        out = Window(None, 2, self.diversity_cap, min(self.started, other.started), self.rows_cap, self.prompts_cap)
        out.numeric = {k: h.merge(other.numeric[k]) for k, h in self.numeric.items()}
        out.categorical = {k: c.merge(other.categorical[k]) for k, c in self.categorical.items()}
        out.events = self.events + other.events
        out.errors, out.refusals = self.errors + other.errors, self.refusals + other.refusals
        out.empties = self.empties + other.empties
        out.latency_ms_sum = self.latency_ms_sum + other.latency_ms_sum
        out.feedback = {k: n + other.feedback[k] for k, n in self.feedback.items()}
        share = self.events / out.events if out.events else 0.5
        for name, cap in (("responses", self.diversity_cap), ("rows", self.rows_cap), ("prompts", self.prompts_cap)):
            mine, theirs = getattr(self, name), getattr(other, name)
            take = min(len(mine), max(round(cap * share), cap - len(theirs)))
            setattr(out, name, mine[:take] + theirs[:cap - take])
        return out


@dataclass(frozen=True)
class AdapterSnapshot:
    adapter: str
    window_events: int  # events in the window checked (the last closed one, else the current one)
    window_closed: bool
    error_ratio: float | None
    refusal_rate: float | None
    empty_rate: float | None
    negative_feedback_ratio: float | None
    feedback_count: int
    distinct_1: float | None
    distinct_2: float | None
    drift: dict[str, Verdict] = field(default_factory=dict)  # feature -> verdict against the reference
    latency_mean_ms: float | None = None
    grown_routes: tuple[str, ...] = ()  # routes whose share grew markedly against the reference (retrain focus)

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, v in self.drift.items() if v.drifted]


@dataclass(frozen=True)
class MonitorSnapshot:
    taken_at: float
    reference_version: str | None
    adapters: dict[str, AdapterSnapshot]


class Monitor:
    def __init__(
        self,
        reference: Profile | None,
        settings: MonitorSettings | None = None,
        join: DedupWindow | None = None,
        extractor: FeatureExtractor | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_adapters: int = 100,
        embed: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> None:
        self.reference = reference
        self.settings = settings or MonitorSettings()
        self.join = join or DedupWindow(200_000, 3600)
        self.extract = extractor or FeatureExtractor()
        self.clock = clock
        self.embed = embed if reference is not None and reference.semantic else None  # the semantic check, if on
        self._ref_embeddings = np.asarray(reference.semantic["embeddings"], np.float32) if self.embed else None
        self.adapter_cap = LabelCap(max_adapters)  # the metrics' mechanism: past the cap, "other"
        self._rng = random.Random(0)  # the windows' reservoirs: seeded, so the same stream keeps the same sample
        self._current: dict[str, Window] = {}
        self._closed: dict[str, Window] = {}
        self._lock = threading.RLock()

    def _window(self, adapter: str, now: float) -> Window:
        win = self._current.get(adapter)
        s = self.settings
        if win is not None and (win.events >= s.window_events or now - win.started >= s.window_seconds):
            self._closed[adapter] = win
            win = None
        if win is None:
            win = self._current[adapter] = Window(self.reference, s.max_categories, s.diversity_sample, now,
                                                  s.report_sample, s.semantic_sample if self.embed else 0, self._rng)
        return win

    def observe(self, events: Sequence[tuple[Kind, Event]]) -> None:
        now = self.clock()
        with self._lock:
            for kind, event in events:
                if kind == "inference":
                    assert isinstance(event, InferenceEvent)
                    self.join.add(event.request_id, event.adapter)
                    win = self._window(self.adapter_cap(event.adapter), now)
                    win.add(self.extract(event), event.response, prompt_text(event) if win.prompts_cap else None)
                else:
                    assert isinstance(event, FeedbackEvent)
                    adapter = self.join.get(event.request_id, UNKNOWN)
                    if adapter != UNKNOWN:
                        self._window(adapter, now).feedback[event.sentiment] += 1

    def rebaseline(self, adapter: str, source: str) -> Profile:
        """Make the adapter's window (its row sample, responses and prompts) the new reference, and start every
        window afresh against it (a window's histograms are cut at the reference's edges)."""
        with self._lock:
            win = self._closed.get(adapter) or self._current.get(adapter)
            if win is None or len(win.rows) < self.settings.min_samples:
                raise ValueError(f"adapter '{adapter}' has {len(win.rows) if win else 0} sampled rows, fewer than "
                                 f"monitor.min_samples ({self.settings.min_samples}): not enough to be a reference")
            profile = profile_from_rows(win.rows, win.responses, win.prompts, max_categories=self.settings.max_categories,
                                        source=source, embed=self.embed)
            self.use_reference(profile)
        return profile

    def use_reference(self, profile: Profile) -> None:
        """Check against ``profile`` from now on, every window started afresh (a follower takes up the reference
        the leader re-baselined on)."""
        with self._lock:
            self.reference = profile
            if self.embed is not None:
                self._ref_embeddings = np.asarray(profile.semantic["embeddings"], np.float32)
            self._current.clear()
            self._closed.clear()

    def rows(self, adapter: str) -> list[Features] | None:
        """The row sample of the window a check looks at (the last closed one, else the current one); None for an
        adapter with no window."""
        with self._lock:
            win = self._closed.get(adapter) or self._current.get(adapter)
            return list(win.rows) if win else None

    def windows(self) -> dict[str, tuple[Window, bool]]:
        """Per adapter, the window a check looks at (the last closed one, else the current one) and whether it is
        closed. Merge two replicas' with :meth:`Window.merged` and pass the result to :meth:`snapshot`."""
        now = self.clock()
        with self._lock:
            for adapter in list(self._current):
                self._window(adapter, now)  # close windows whose time is up
            return {a: (self._closed.get(a) or w, a in self._closed) for a, w in self._current.items()}

    def snapshot(self, windows: dict[str, tuple[Window, bool]] | None = None) -> MonitorSnapshot:
        views = self.windows() if windows is None else windows
        out = {a: self._adapter_snapshot(a, win, closed) for a, (win, closed) in views.items()}
        return MonitorSnapshot(self.clock(), self.reference.content_hash if self.reference else None, out)

    def _adapter_snapshot(self, adapter: str, win: Window, closed: bool) -> AdapterSnapshot:
        s, ref = self.settings, self.reference
        n = win.events
        fb = sum(win.feedback.values())
        drift: dict[str, Verdict] = {}
        if ref is not None:
            for name, hist in win.numeric.items():
                drift[name] = verdict(ref.numeric[name].counts, hist.counts, kind="numeric", alpha=s.alpha,
                                      min_samples=s.min_samples, psi_floor=s.psi_floor)
            for name, cats in win.categorical.items():
                if name in ref.categorical:
                    _, r, c = ref.categorical[name].aligned(cats)
                    drift[name] = verdict(r, c, kind="categorical", alpha=s.alpha, min_samples=s.min_samples,
                                          cramers_v_floor=s.cramers_v_floor)
            if self.embed is not None and closed:  # embedding costs ~3 ms a prompt on CPU: once per closed window
                if win.semantic is None:
                    win.semantic = semantic_verdict(self._ref_embeddings, self.embed(win.prompts), alpha=s.alpha,
                                                    floor=s.semantic_floor, permutations=s.semantic_permutations,
                                                    min_samples=min(50, s.semantic_sample))
                drift["semantic"] = win.semantic
        grown: tuple[str, ...] = ()
        if ref is not None and "route" in ref.categorical and n:
            keys, r, c = ref.categorical["route"].aligned(win.categorical["route"])
            total_r = sum(r) or 1
            grown = tuple(k for k, rn, cn in zip(keys, r, c) if cn / n >= 0.05 and cn / n >= 1.25 * rn / total_r + 0.02)
        return AdapterSnapshot(
            adapter=adapter, window_events=n, window_closed=closed, grown_routes=grown,
            error_ratio=win.errors / n if n else None,
            refusal_rate=win.refusals / n if n else None,
            empty_rate=win.empties / n if n else None,
            negative_feedback_ratio=win.feedback["negative"] / fb if fb else None,
            feedback_count=fb,
            distinct_1=distinct_n(win.responses, 1) if win.responses else None,
            distinct_2=distinct_n(win.responses, 2) if win.responses else None,
            drift=drift, latency_mean_ms=win.latency_ms_sum / n if n else None,
        )


def build_profile(events: Sequence[InferenceEvent], *, bins: int = 10, max_categories: int = 50, scope: str = "global",
                  source: str = "", extractor: FeatureExtractor | None = None, diversity_sample: int = 500,
                  row_sample: int = 2000, embed: Callable[[Sequence[str]], np.ndarray] | None = None,
                  semantic_sample: int = 300) -> Profile:
    """A reference profile from events: quantile-edged histograms, category counts, quality baselines, and an
    evenly spaced row sample (deterministic, so the same events give the same version) for Evidently reports."""
    if not events:
        raise ValueError("no inference events to build a reference from")
    fx = extractor or FeatureExtractor()
    every = max(1, len(events) // semantic_sample) if embed is not None else 0
    return profile_from_rows(
        [fx(e) for e in events], [e.response[:1000] for e in events if e.response][:diversity_sample],  # a window's size
        [prompt_text(e)[:2000] for e in events[::every][:semantic_sample]] if every else None,
        bins=bins, max_categories=max_categories, scope=scope, source=source, row_sample=row_sample, embed=embed)


def profile_from_rows(rows: Sequence[Features], responses: Sequence[str], prompts: Sequence[str] | None = None, *,
                      bins: int = 10, max_categories: int = 50, scope: str = "global", source: str = "",
                      row_sample: int = 2000, embed: Callable[[Sequence[str]], np.ndarray] | None = None) -> Profile:
    """A reference profile from feature rows (all of them, or a window's uniform sample), responses and, for the
    semantic check, prompts."""
    step = max(1, len(rows) // row_sample) if row_sample else 0
    profile = Profile(scope=scope, source=source, sample=[list(r) for r in rows[::step][:row_sample]] if step else [])
    for name in NUMERIC:
        profile.numeric[name] = Histogram.from_quantiles([getattr(r, name) for r in rows], bins=bins)
    for name in CATEGORICAL:
        cats = Categories(max_categories)
        for r in rows:
            cats.add(getattr(r, name))
        profile.categorical[name] = cats
    if embed is not None and prompts:  # the semantic check's reference
        vectors = embed(list(prompts))
        profile.semantic = {"model": getattr(embed, "model", "all-MiniLM-L6-v2"),
                            "embeddings": np.round(vectors.astype(float), 5).tolist()}
    n = len(rows)
    profile.baselines.update({
        "events": float(n),
        "error_ratio": sum(r.status != "ok" for r in rows) / n,
        "refusal_rate": sum(r.refusal == "yes" for r in rows) / n,
        "empty_rate": sum(r.empty_response == "yes" for r in rows) / n,
        "distinct_1": distinct_n(responses, 1),
        "distinct_2": distinct_n(responses, 2),
    })
    return profile


def export(snapshot: MonitorSnapshot, metrics: Metrics, wall_time: float | None = None) -> None:
    """Write a snapshot into the gauges (a series with no value this time is removed, not left stale)."""
    for gauge in (metrics.drift_score, metrics.drift_p_value, metrics.drift_detected, metrics.window_events,
                  metrics.output_quality, metrics.error_ratio, metrics.negative_feedback_ratio, metrics.reference_info):
        gauge.clear()
    if snapshot.reference_version:
        metrics.reference_info.labels(version=snapshot.reference_version[:12]).set(1)
    for adapter, a in snapshot.adapters.items():
        metrics.window_events.labels(adapter=adapter).set(a.window_events)
        for name, v in a.drift.items():
            if v.value is not None:
                metrics.drift_score.labels(adapter=adapter, feature=name).set(v.value)
                metrics.drift_p_value.labels(adapter=adapter, feature=name).set(v.p_value)
            metrics.drift_detected.labels(adapter=adapter, feature=name).set(1 if v.drifted else 0)
        for signal in ("refusal_rate", "empty_rate", "distinct_1", "distinct_2"):
            value = getattr(a, signal)
            if value is not None:
                metrics.output_quality.labels(adapter=adapter, signal=signal).set(value)
        if a.error_ratio is not None:
            metrics.error_ratio.labels(adapter=adapter).set(a.error_ratio)
        if a.negative_feedback_ratio is not None:
            metrics.negative_feedback_ratio.labels(adapter=adapter).set(a.negative_feedback_ratio)
    metrics.last_check.set(time.time() if wall_time is None else wall_time)
