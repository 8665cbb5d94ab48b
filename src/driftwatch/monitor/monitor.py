"""Windows per adapter on mergeable sketches, and the check that compares them with the reference. No I/O.

Each adapter has a current window that fills until ``window_events`` events or ``window_seconds`` pass, then
closes; checks run on the last closed window (a stable sample) against the reference profile. Memory per
adapter is constant: sketches with the reference's edges, counters, and a capped sample of responses for the
diversity (distinct-n) measure.

**One writer.** The ingest thread alone writes windows (:meth:`Monitor.observe`, :meth:`Monitor.maintain`). It
publishes an immutable :class:`Windows` when a window closes, or when a reader asked (:meth:`Monitor.fresh`), by
swapping one reference: a closed window is never written again, so it is shared as it is; the current one is
copied. Checks (:meth:`Monitor.snapshot`, on the control thread), followers' publishing, reports and the status API
read publications only. A new reference (:meth:`Monitor.use_reference`) is handed to the ingest thread, which
takes it up at its next step. The check's result is a plain :class:`MonitorSnapshot`; :func:`window_samples`
turns it into the gauges' values, which a collector serves at scrape time.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

import numpy as np

from driftwatch.events import InferenceEvent
from driftwatch.metrics import OTHER, UNKNOWN
from driftwatch.monitor.features import CATEGORICAL, NUMERIC, FeatureExtractor, Features, distinct_n, prompt_text
from driftwatch.monitor.sketch import Categories, Histogram, Profile
from driftwatch.monitor.stats import Verdict, semantic_verdict, verdict

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


def vouched(kind: str, event, request) -> bool:
    """Whether an accepted event may move a window. Not: an answer the client caused (the gateway's 4xx: a request
    it refused or cut short), nor an anonymous end user's feedback (``origin: receipt`` on a request with no
    authenticated tenant) — any client can collect receipts, so those would let one client trip the feedback rule.
    Feedback written to the topic, by an authenticated caller, or on a tenant's request counts."""
    if kind == "inference":
        status = event.metadata.get("http_status")
        return not (type(status) is int and 400 <= status < 500)
    return event.origin != "receipt" or (request is not None and request.tenant is not None)


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

    def copy(self) -> Window:
        """A copy the ingest thread will not write (the current window, published)."""
        out = Window.__new__(Window)
        out.numeric = {k: h.copy() for k, h in self.numeric.items()}
        out.categorical = {k: c.copy() for k, c in self.categorical.items()}
        out.events, out.errors, out.refusals, out.empties = self.events, self.errors, self.refusals, self.empties
        out.latency_ms_sum, out.feedback, out.started = self.latency_ms_sum, dict(self.feedback), self.started
        out.responses, out.rows, out.prompts = list(self.responses), list(self.rows), list(self.prompts)
        out.diversity_cap, out.rows_cap, out.prompts_cap = self.diversity_cap, self.rows_cap, self.prompts_cap
        out.semantic, out.rng = None, None
        return out

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
class Windows:
    """What the ingest thread published: per adapter, the window a check looks at (the last closed one, else a copy of
    the current one) and whether it is closed, with the reference they are cut against. Nobody writes it."""

    seq: int  # publication number: 0 before the first
    at: float  # the monitor's clock when published
    reference: Profile | None
    views: Mapping[str, tuple[Window, bool]]


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
    baselines: Mapping[str, float] = field(default_factory=dict)  # the reference's quality baselines


class Monitor:
    def __init__(
        self,
        reference: Profile | None,
        settings: MonitorSettings | None = None,
        extractor: FeatureExtractor | None = None,
        clock: Callable[[], float] = time.monotonic,
        embed: Callable[[Sequence[str]], np.ndarray] | None = None,
    ) -> None:
        self.settings = settings or MonitorSettings()
        self.extract = extractor or FeatureExtractor()
        self.clock = clock
        self._embedder = embed
        self._rng = random.Random(0)  # the windows' reservoirs: seeded, so the same stream keeps the same sample
        # the ingest thread's own: windows and the reference they are cut against
        self._current: dict[str, Window] = {}
        self._closed: dict[str, Window] = {}
        self._use(reference)
        self._changed = True  # something to publish (a window closed, the reference changed)
        # handed between threads, under _cond
        self._cond = threading.Condition()
        self._asked = False
        self._next_reference: Profile | None = None
        self._published = Windows(0, clock(), reference, MappingProxyType({}))
        self._semantic: dict[int, tuple[Window, Verdict]] = {}  # the checks' own: a closed window's verdict, once

    def _use(self, reference: Profile | None) -> None:
        self.reference = reference
        self.embed = self._embedder if reference is not None and reference.semantic else None  # the semantic check
        self._current.clear()
        self._closed.clear()

    def _window(self, adapter: str, now: float) -> Window:
        win = self._current.get(adapter)
        s = self.settings
        if win is not None and (win.events >= s.window_events or now - win.started >= s.window_seconds):
            self._closed[adapter] = win
            self._changed = True
            win = None
        if win is None:
            win = self._current[adapter] = Window(self.reference, s.max_categories, s.diversity_sample, now,
                                                  s.report_sample, s.semantic_sample if self.embed else 0, self._rng)
        return win

    # -- the ingest thread ----------------------------------------------------------------------------------------------
    def observe(self, items: Sequence) -> None:
        """Accepted events (the ingestor's ``Accepted``: kind, event, adapter label, request) into their windows."""
        now = self.clock()
        for kind, event, adapter, request in items:
            if adapter in (UNKNOWN, OTHER):
                continue  # a name the gateway refused, or past the label cap: counted in metrics, no window of its own
            if not vouched(kind, event, request):
                continue  # counted in metrics; a client cannot move a window by itself (docs/security.md)
            if kind == "inference":
                win = self._window(adapter, now)
                win.add(self.extract(event), event.response, prompt_text(event) if win.prompts_cap else None)
            else:
                self._window(adapter, now).feedback[event.sentiment] += 1

    def maintain(self) -> Windows | None:
        """The ingest thread's step between polls: take up a new reference, close windows whose time is up, and
        publish when a window closed or a reader asked. Returns the new publication, if any."""
        now = self.clock()
        if self._next_reference is not None:
            with self._cond:
                reference, self._next_reference = self._next_reference, None
            self._use(reference)
            self._changed = True
        for adapter in list(self._current):
            self._window(adapter, now)  # close windows whose time is up
        if not (self._changed or self._asked):
            return None
        views = {a: (self._closed[a], True) if a in self._closed else (w.copy(), False) for a, w in self._current.items()}
        with self._cond:
            self._published = Windows(self._published.seq + 1, now, self.reference, MappingProxyType(views))
            self._changed = self._asked = False
            self._cond.notify_all()
        return self._published

    # -- any thread -----------------------------------------------------------------------------------------------------
    def latest(self) -> Windows:
        """The last publication (an atomic read)."""
        return self._published

    def ask(self) -> None:
        """Ask the ingest thread to publish at its next step (between polls)."""
        with self._cond:
            self._asked = True

    def fresh(self, timeout_s: float = 2.0) -> Windows:
        """Ask the ingest thread to publish, and wait for it up to ``timeout_s`` (it publishes between polls); the
        last publication if it does not come in time (the ingest thread is blocked, say)."""
        with self._cond:
            seq = self._published.seq
            self._asked = True
            self._cond.wait_for(lambda: self._published.seq > seq, timeout_s)
            return self._published

    def use_reference(self, profile: Profile) -> None:
        """Check against ``profile`` from the ingest thread's next step on, every window started afresh (after a
        re-baseline; a follower taking up the leader's)."""
        with self._cond:
            self._next_reference = profile

    def rows(self, adapter: str) -> list[Features] | None:
        """The row sample of the window a check looks at, as last published; None for an adapter with no window."""
        view = self._published.views.get(adapter)
        return list(view[0].rows) if view else None

    def profile_from(self, adapter: str, source: str, windows: Windows | None = None) -> Profile:
        """A new reference from an adapter's published window (its row sample, responses and prompts): a
        re-baseline. Raises ValueError when the window holds fewer than ``min_samples`` rows."""
        view = (windows or self._published).views.get(adapter)
        win = view[0] if view else None
        if win is None or len(win.rows) < self.settings.min_samples:
            raise ValueError(f"adapter '{adapter}' has {len(win.rows) if win else 0} sampled rows, fewer than "
                             f"monitor.min_samples ({self.settings.min_samples}): not enough to be a reference")
        return profile_from_rows(win.rows, win.responses, win.prompts, max_categories=self.settings.max_categories,
                                 source=source, embed=self.embed)

    def snapshot(self, windows: Windows | Mapping[str, tuple[Window, bool]] | None = None) -> MonitorSnapshot:
        """The check: every window of ``windows`` (default: the last publication) against the reference. Pure but for
        a cache of each closed window's semantic verdict (computed once)."""
        published = windows if isinstance(windows, Windows) else self._published
        views = published.views if windows is None or isinstance(windows, Windows) else windows
        ref = published.reference
        out = {a: self._adapter_snapshot(a, win, closed, ref) for a, (win, closed) in views.items()}
        live = {id(w) for w, _ in views.values()}
        self._semantic = {k: v for k, v in self._semantic.items() if k in live}
        return MonitorSnapshot(self.clock(), ref.content_hash if ref else None, out, dict(ref.baselines) if ref else {})

    def _adapter_snapshot(self, adapter: str, win: Window, closed: bool, ref: Profile | None) -> AdapterSnapshot:
        s = self.settings
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
            if self._embedder is not None and ref.semantic and closed:  # ~3 ms a prompt on CPU: once per window
                cached = self._semantic.get(id(win))
                if cached is None:
                    reference = np.asarray(ref.semantic["embeddings"], np.float32)
                    cached = self._semantic[id(win)] = (win, semantic_verdict(
                        reference, self._embedder(win.prompts), alpha=s.alpha, floor=s.semantic_floor,
                        permutations=s.semantic_permutations, min_samples=min(50, s.semantic_sample)))
                drift["semantic"] = cached[1]
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


def window_samples(snapshot: MonitorSnapshot, wall_time: float | None = None) -> dict[str, list]:
    """A check's result as the window gauges' samples (``metrics.Metrics.set_windows``): served at scrape time as
    they are, so a scrape sees the last check or the one before, never an empty set in between."""
    out: dict[str, list] = {name: [] for name in ("drift_score", "drift_p_value", "drift_detected", "window_events",
                                                  "output_quality", "error_ratio", "negative_feedback_ratio",
                                                  "reference_info", "last_check")}
    if snapshot.reference_version:
        out["reference_info"].append(((snapshot.reference_version[:12],), 1))
    for adapter, a in sorted(snapshot.adapters.items()):
        out["window_events"].append(((adapter,), a.window_events))
        for name, v in sorted(a.drift.items()):
            if v.value is not None:
                out["drift_score"].append(((adapter, name), v.value))
                out["drift_p_value"].append(((adapter, name), v.p_value))
            out["drift_detected"].append(((adapter, name), 1 if v.drifted else 0))
        for signal in ("refusal_rate", "empty_rate", "distinct_1", "distinct_2"):
            if (value := getattr(a, signal)) is not None:
                out["output_quality"].append(((adapter, signal), value))
        if a.error_ratio is not None:
            out["error_ratio"].append(((adapter,), a.error_ratio))
        if a.negative_feedback_ratio is not None:
            out["negative_feedback_ratio"].append(((adapter,), a.negative_feedback_ratio))
    out["last_check"].append(((), time.time() if wall_time is None else wall_time))
    return out
