"""Mergeable sketches and the reference profile. Pure: no I/O except Profile.save/load.

* :class:`Histogram` — fixed bin edges (taken once, from reference quantiles), integer counts. Two histograms
  with the same edges merge by adding counts, so replicas' windows combine into the global one exactly.
* :class:`Categories` — counts per value, at most ``max_values`` distinct values; the rest count as ``"other"``.
* :class:`Profile` — the reference: one sketch per feature, versioned and content-hashed (the same inputs give
  the same hash), saved as JSON, with a bounded row sample for Evidently reports.

Memory is constant per sketch whatever the stream length: edges and counts only.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

OTHER = "other"
PROFILE_FORMAT = 1


class Histogram:
    """Counts over bins (-inf, e0], (e0, e1], ..., (e_last, +inf): len(edges) + 1 bins."""

    __slots__ = ("edges", "counts")

    def __init__(self, edges: Iterable[float], counts: Iterable[int] | None = None) -> None:
        self.edges = [float(e) for e in edges]
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("edges must be strictly increasing")
        self.counts = [0] * (len(self.edges) + 1) if counts is None else [int(c) for c in counts]
        if len(self.counts) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} counts, got {len(self.counts)}")

    @classmethod
    def from_quantiles(cls, values: Iterable[float], bins: int = 10) -> Histogram:
        """Edges at the reference's quantiles (ties collapsed), then the reference counted into them."""
        arr = np.asarray(list(values), dtype=float)
        arr = arr[np.isfinite(arr)]
        if arr.size == 0:
            raise ValueError("no finite values to take quantiles from")
        edges = np.unique(np.quantile(arr, np.linspace(0, 1, bins + 1)[1:-1]))
        hist = cls(edges.tolist())
        hist.add_many(arr)
        return hist

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.edges, value)] += 1

    def add_many(self, values: Iterable[float] | np.ndarray) -> None:
        arr = np.asarray(values, dtype=float)
        idx = np.searchsorted(np.asarray(self.edges), arr, side="left")
        for i, n in enumerate(np.bincount(idx, minlength=len(self.counts))):
            self.counts[i] += int(n)

    def merge(self, other: Histogram) -> Histogram:
        if other.edges != self.edges:
            raise ValueError("histograms with different edges cannot be merged")
        return Histogram(self.edges, [a + b for a, b in zip(self.counts, other.counts)])

    def empty_like(self) -> Histogram:
        return Histogram(self.edges)

    def copy(self) -> Histogram:
        out = Histogram.__new__(Histogram)
        out.edges, out.counts = self.edges, list(self.counts)  # edges never change: shared
        return out

    @property
    def total(self) -> int:
        return sum(self.counts)

    def to_dict(self) -> dict:
        return {"edges": self.edges, "counts": self.counts}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Histogram) and other.edges == self.edges and other.counts == self.counts


class Categories:
    """Counts per categorical value, bounded: past ``max_values`` distinct values, new ones count as "other"."""

    __slots__ = ("max_values", "counts")

    def __init__(self, max_values: int = 50, counts: Mapping[str, int] | None = None) -> None:
        self.max_values = max_values
        self.counts: dict[str, int] = dict(counts or {})

    def add(self, value: str | None, n: int = 1) -> None:
        key = OTHER if value is None else value
        counts = self.counts
        if key in counts:
            counts[key] += n
        elif len(counts) < self.max_values:
            counts[key] = n
        else:
            counts[OTHER] = counts.get(OTHER, 0) + n

    def merge(self, other: Categories) -> Categories:
        out = Categories(max(self.max_values, other.max_values), self.counts)
        for key, n in other.counts.items():
            out.add(key, n)
        return out

    def empty_like(self) -> Categories:
        return Categories(self.max_values)

    def copy(self) -> Categories:
        return Categories(self.max_values, self.counts)

    def aligned(self, other: Categories) -> tuple[list[str], list[int], list[int]]:
        """Both count vectors over the union of keys (sorted), for a two-sample test."""
        keys = sorted(set(self.counts) | set(other.counts))
        return keys, [self.counts.get(k, 0) for k in keys], [other.counts.get(k, 0) for k in keys]

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"max_values": self.max_values, "counts": dict(sorted(self.counts.items()))}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Categories) and other.counts == self.counts


@dataclass
class Profile:
    """A reference profile: numeric histograms and categorical counts per feature, plus free-form baselines."""

    numeric: dict[str, Histogram] = field(default_factory=dict)
    categorical: dict[str, Categories] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)  # e.g. refusal rate, distinct-2 of responses
    scope: str = "global"  # "global" or an adapter name
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    source: str = ""  # where it was built from (file, topic range)
    sample: list[list] = field(default_factory=list)  # a bounded row sample (features in COLUMNS order), for reports
    semantic: dict = field(default_factory=dict)  # {"model": name, "embeddings": [[...], ...]} of sampled prompts


    def content(self) -> dict:
        doc = {
            "scope": self.scope,
            "numeric": {k: v.to_dict() for k, v in sorted(self.numeric.items())},
            "categorical": {k: v.to_dict() for k, v in sorted(self.categorical.items())},
            "baselines": dict(sorted(self.baselines.items())),
        }
        if self.sample:  # profiles written before samples existed keep their hash
            doc["sample"] = self.sample
        if self.semantic:
            doc["semantic"] = self.semantic
        return doc

    @property
    def content_hash(self) -> str:
        canonical = json.dumps(self.content(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_json(self) -> str:
        doc = {"format": PROFILE_FORMAT, "content_hash": self.content_hash, "created_ms": self.created_ms,
               "source": self.source, **self.content()}
        return json.dumps(doc, indent=1, sort_keys=True)

    def save(self, path: Path) -> str:
        """Write atomically; return the content hash (the profile's version)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
        return self.content_hash

    @classmethod
    def load(cls, path: Path) -> Profile:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read reference profile {path}: {exc}") from None
        if doc.get("format") != PROFILE_FORMAT:
            raise ValueError(f"{path}: profile format {doc.get('format')!r}, this driftwatch reads {PROFILE_FORMAT}")
        profile = cls(
            numeric={k: Histogram(v["edges"], v["counts"]) for k, v in doc["numeric"].items()},
            categorical={k: Categories(v["max_values"], v["counts"]) for k, v in doc["categorical"].items()},
            baselines=doc.get("baselines", {}), scope=doc.get("scope", "global"),
            created_ms=doc.get("created_ms", 0), source=doc.get("source", ""), sample=doc.get("sample", []),
            semantic=doc.get("semantic", {}),
        )
        if profile.content_hash != doc.get("content_hash"):
            raise ValueError(f"{path}: content hash mismatch — the file was changed after it was written")
        return profile
