"""Build a training set that will not poison the model: sources → gates → split → versioned files. Pure Python.

Sources, by trust: corrections from feedback (a user wrote the right answer), positively rated responses, and a
replay sample of the base training set (against forgetting). Every gate produces a number with a bound; a gate
that fails stops the run before any training, with its reason. Examples a gate removes (duplicates, leaked golden
prompts, bad targets, outliers, contradictions) are counted in the report.

Near-duplicates: prompts are reduced to shingles of their content words (question fillers such as "how do I",
"can you tell me", "please" dropped), MinHash signatures are banded (LSH) to find candidate pairs, and pairs whose
estimated Jaccard similarity reaches ``near_dup_threshold`` join one cluster (union-find). A cluster keeps one
example — the most trusted — unless its targets disagree: then it is a contradiction and is left out whole.

The train/validation split is by cluster (no cluster on both sides) and deterministic; the dataset's version is
the sha256 of its canonical content, so the same inputs give the same version.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from driftwatch.errors import DataError, GateFailure
from driftwatch.evaluate.gates import Gate
from driftwatch.evaluate.golden import GoldenItem, normalize, read_golden, records, text_field

TRUST = {"correction": 3, "positive": 2, "replay": 1, "anchor": 1}
REPLAYED = ("replay", "anchor")  # the base training set's lines: its own, and the base model's answers (anchors.py)
_FILLERS = set("""a an the and or but of to in on at for with by from about into as is are was were be been being do does
did done i me my we our you your it its this that these those there what which who whom how why when where can could would
should will shall may might must please tell explain show give know want need help way best some any just really
quick quickly simply hi hello hey thanks thank kindly let lets us so if then also am pls plz step question""".split())
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b")
PHONE = re.compile(r"(?<!\w)(?:\+?\d[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?)?\d{3,4}[\s.-]\d{3,4}(?:[\s.-]\d{2,4})?(?!\w)")


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str
    source: str  # correction | positive (harvested) | replay | anchor (the base training set's)
    route: str | None = None
    system: str | None = None
    ref: str = ""  # request_id for harvested examples, file:line for files
    served: str | None = None  # a harvested request as served (retrain/harvest.served); None: prompt (+ system) only

    @property
    def replayed(self) -> bool:
        return self.source in REPLAYED


# -- files ------------------------------------------------------------------------------------------------------------
def read_examples(path: Path) -> list[Example]:
    """The base training set: one {"prompt", "response", "route"?, "system"?, "source"?} per line
    (docs/training-data.md); source ``anchor`` marks the base model's own answers (``driftwatch anchors``), else
    ``replay``."""
    out = []
    for line_no, obj in records(path):
        where = f"{path}:{line_no}"
        source = text_field(obj, "source", where, False) or "replay"
        if source not in REPLAYED:
            raise DataError(f"{where}: source {source!r} is not one of {', '.join(REPLAYED)}")
        out.append(Example(text_field(obj, "prompt", where), text_field(obj, "response", where), source,
                           text_field(obj, "route", where, False), text_field(obj, "system", where, False), where))
    return out


# -- text similarity ----------------------------------------------------------------------------------------------------
def shingles(text: str) -> set[str]:
    """Content words and their adjacent pairs; fillers dropped, plurals folded. Short texts fall back to all words."""
    words = normalize(text).split()
    folded = [w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w for w in words]
    content = [w for w in folded if w not in _FILLERS] or folded
    return set(content) | {f"{a} {b}" for a, b in zip(content, content[1:])}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


_MASK = (1 << 61) - 1


class MinHasher:
    """MinHash signatures (``perms`` universal hashes of a 64-bit blake2b) and LSH bands for candidate pairs."""

    def __init__(self, perms: int = 64, bands: int = 16, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.coeffs = [(rng.randrange(1, _MASK), rng.randrange(_MASK)) for _ in range(perms)]
        self.bands, self.rows = bands, perms // bands

    def signature(self, items: set[str]) -> tuple[int, ...]:
        hashes = [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in items] or [0]
        return tuple(min((a * h + b) & _MASK for h in hashes) for a, b in self.coeffs)

    def candidates(self, signatures: Sequence[tuple[int, ...]]) -> set[tuple[int, int]]:
        pairs: set[tuple[int, int]] = set()
        for band in range(self.bands):
            buckets: dict[tuple[int, ...], list[int]] = {}
            for i, sig in enumerate(signatures):
                buckets.setdefault(sig[band * self.rows:(band + 1) * self.rows], []).append(i)
            for members in buckets.values():  # each member against the first and its neighbour: O(n), not O(n²)
                for j in range(1, len(members)):
                    pairs.add((members[0], members[j]))
                    pairs.add((members[j - 1], members[j]))
        return pairs


def clusters(texts: Sequence[str], threshold: float = 0.7, hasher: MinHasher | None = None) -> list[int]:
    """Cluster id per text: near-duplicates (Jaccard of shingles >= threshold, found by MinHash LSH) share one."""
    hasher = hasher or MinHasher()
    sets = [shingles(t) for t in texts]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in hasher.candidates([hasher.signature(s) for s in sets]):
        if find(i) != find(j) and jaccard(sets[i], sets[j]) >= threshold:
            parent[find(i)] = find(j)
    return [find(i) for i in range(len(texts))]


# -- gates ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GateSettings:
    near_dup_threshold: float = 0.7
    max_duplicate_share: float = 0.5  # exact + near duplicates removed, as a share of the harvested candidates
    max_contradiction_share: float = 0.05
    min_unique_prompts: int = 50  # distinct prompt clusters in the final set
    min_route_examples: int = 5  # per route that drifted
    max_golden_leakage_share: float = 0.02  # leaked examples are removed; above this share the sources are suspect
    max_bad_target_share: float = 0.1  # empty, truncated, garbage
    max_length_outlier_share: float = 0.05
    max_target_chars: int = 8000
    pii: str = "mask"  # mask | refuse | allow
    validation_fraction: float = 0.1
    replay_fraction: float = 0.5  # replay examples as a share of the final set (against forgetting)
    seed: int = 0


_DANGLING = {"the", "a", "an", "and", "or", "of", "to", "with", "for", "in", "on", "is", "are", "that", "which", "but"}


def bad_target(text: str, max_chars: int) -> str | None:
    """Why a target cannot be learned from, or None: empty, truncated (cut at the length limit, trailing "...",
    an unclosed code fence or bracket, or ending on a word that cannot end a sentence), garbage (mostly non-letters,
    long runs of one character, replacement characters)."""
    t = text.strip()
    if not t:
        return "empty"
    words = t.split()
    if (len(text) >= max_chars or t.endswith(("...", "…", ",", "-", "(", "[", "{")) or t.count("```") % 2
            or (len(words) > 3 and words[-1].lower() in _DANGLING)):
        return "truncated"
    letters = sum(ch.isalnum() for ch in t)
    if letters / len(t) < 0.3 or re.search(r"(.)\1{9,}", t) or "\ufffd" in t:
        return "garbage"
    return None


def mask_pii(text: str) -> tuple[str, int]:
    text, emails = EMAIL.subn("<EMAIL>", text)
    text, phones = PHONE.subn("<PHONE>", text)
    return text, emails + phones


def _resolve(members: list[Example]) -> list[Example] | None:
    """One cluster of near-duplicate prompts → the examples to keep, or None for a contradiction.

    Targets that agree: paraphrases, keep one (the shortest prompt). Targets that differ where the prompts differ
    (an order id in the prompt and in the answer): slot variants, keep one per distinct prompt. Targets that
    differ for no reason the prompts show: a contradiction, keep none."""
    targets = [shingles(m.target) for m in members]
    pairs = [(i, j) for i in range(len(members)) for j in range(i + 1, len(members))
             if jaccard(targets[i], targets[j]) < 0.5]
    if not pairs:
        return [min(members, key=lambda m: (len(m.prompt), m.prompt))]
    words = [{w for w in shingles(m.prompt) if " " not in w} for m in members]
    for i, j in pairs:
        differ = words[i] ^ words[j]  # content words one prompt has and the other lacks
        said = shingles(members[i].target) | shingles(members[j].target)
        if not differ & said:
            return None
    by_prompt: dict[str, Example] = {}
    for m in members:
        by_prompt.setdefault(normalize(m.prompt), m)
    return list(by_prompt.values())


@dataclass
class Curated:
    train: list[Example]
    validation: list[Example]
    report: list[Gate]
    counts: dict[str, int] = field(default_factory=dict)


def curate(candidates: Sequence[Example], golden: Sequence[GoldenItem], focus_routes: Sequence[str] = (),
           settings: GateSettings | None = None) -> Curated:
    """Apply every gate; return the split set and the report, or raise GateFailure with the report.

    Every share, and the count of unique prompts, is of what was *harvested*: the replay was judged when it was
    harvested, and hundreds of replayed lines would otherwise dilute a poisoned harvest under the bounds (a set of
    replay alone, a first training, is judged whole)."""
    s = settings or GateSettings()
    judged = _judged(candidates)
    counts: dict[str, int] = {"candidates": len(candidates),
                              **{f"from_{src}": sum(e.source == src for e in candidates) for src in TRUST}}
    pool, pii_hits = _mask_pii(candidates, s, counts)
    pool, bad = _drop_bad_targets(pool, s, counts)
    pool, outliers = _drop_length_outliers(pool, counts)
    pool, leaked = _drop_golden(pool, golden, s, counts)
    kept, collapse = _collapse(pool, s, judged, counts)
    final = _with_replay(kept, s, counts)
    report = _report(final, judged, len([e for e in candidates if judged(e)]), bad, outliers, leaked, collapse,
                     pii_hits, focus_routes, s, counts)
    if any(not g.passed for g in report):
        raise GateFailure(report)
    train, validation = _split(final, s)
    counts.update(train=len(train), validation=len(validation))
    return Curated(train, validation, report, counts)


def _judged(candidates: Sequence[Example]):
    """Which examples the gates' shares count: the harvested ones, or every one when nothing was harvested."""
    if any(not e.replayed for e in candidates):
        return lambda e: not e.replayed
    return lambda e: True


def _mask_pii(pool: Sequence[Example], s: GateSettings, counts: dict) -> tuple[list[Example], int]:
    """PII first, so nothing below sees it: masked, or found (the ``pii`` gate refuses)."""
    if s.pii == "allow":
        counts["pii_found"] = 0
        return list(pool), 0
    masked, hits = [], 0
    for e in pool:
        prompt, a = mask_pii(e.prompt)
        target, b = mask_pii(e.target)
        hits += a + b  # the served request holds the prompt's text again: masked alike, not counted twice
        masked.append(Example(prompt, target, e.source, e.route, e.system, e.ref, _mask_served(e.served)))
    counts["pii_masked" if s.pii == "mask" else "pii_found"] = hits
    return (masked if s.pii == "mask" else list(pool)), hits


def _mask_served(served: str | None) -> str | None:
    if served is None:
        return None
    doc = json.loads(served)
    if "prompt" in doc:
        return json.dumps({"prompt": mask_pii(doc["prompt"])[0]}, ensure_ascii=False)
    return json.dumps({"messages": [{**m, "content": mask_pii(m["content"])[0]} for m in doc["messages"]]},
                      ensure_ascii=False)


def _drop_bad_targets(pool: list[Example], s: GateSettings, counts: dict) -> tuple[list[Example], list[Example]]:
    """Empty, truncated and garbage targets are removed."""
    why = [(e, bad_target(e.target, s.max_target_chars)) for e in pool]
    for kind in ("empty", "truncated", "garbage"):
        counts[f"bad_{kind}"] = sum(w == kind for _, w in why)
    return [e for e, w in why if w is None], [e for e, w in why if w is not None]


def _drop_length_outliers(pool: list[Example], counts: dict) -> tuple[list[Example], list[Example]]:
    """Text lengths are log-normal-ish, so robustly in log space: beyond median + 5 MAD (σ-scaled), per route (a
    summary's prompt is long by nature: when traffic drifts to summaries, its examples are not outliers against the
    replayed chat examples); a route with fewer than 10 examples is not judged."""
    size = lambda e: math.log1p(len(e.prompt) + len(e.target))  # noqa: E731
    limits: dict[str | None, float] = {}
    for route in {e.route for e in pool}:
        logs = sorted(size(e) for e in pool if e.route == route)
        if len(logs) >= 10:
            med = logs[len(logs) // 2]
            mad = sorted(abs(x - med) for x in logs)[len(logs) // 2] or 0.1
            limits[route] = med + 5 * 1.4826 * mad
    inside = [size(e) <= limits.get(e.route, math.inf) for e in pool]
    counts["length_outliers"] = inside.count(False)
    return [e for e, ok in zip(pool, inside) if ok], [e for e, ok in zip(pool, inside) if not ok]


def _drop_golden(pool: list[Example], golden: Sequence[GoldenItem], s: GateSettings,
                 counts: dict) -> tuple[list[Example], list[Example]]:
    """Examples whose prompt is (nearly) a golden prompt are removed: the golden set is never trained on."""
    golden_norm = {normalize(g.prompt) for g in golden}
    near = _near_matches([e.prompt for e in pool], [g.prompt for g in golden], s.near_dup_threshold) if golden else set()
    leaks = [i in near or normalize(e.prompt) in golden_norm for i, e in enumerate(pool)]
    counts["golden_leaked"] = sum(leaks)
    return [e for e, x in zip(pool, leaks) if not x], [e for e, x in zip(pool, leaks) if x]


@dataclass
class _Collapse:
    """What collapsing the harvested examples' prompt clusters removed (the duplicate and contradiction gates)."""
    exact: int = 0
    near: int = 0
    contradicting: int = 0
    clusters: int = 0


def _collapse(pool: list[Example], s: GateSettings, judged, counts: dict) -> tuple[list[tuple[str, Example]], _Collapse]:
    """Exact duplicates, near-duplicates and contradictions, by prompt cluster: each cluster keeps its most trusted
    examples, resolved (paraphrases → one, slot variants → one each, a contradiction → none). Returns the kept
    examples with their cluster's key (its smallest normalized prompt: stable across inputs, so the split is too)."""
    groups: dict[int, list[Example]] = {}
    for e, c in zip(pool, clusters([e.prompt for e in pool], s.near_dup_threshold)):
        groups.setdefault(c, []).append(e)
    exact = len(pool) - len({(normalize(e.prompt), normalize(e.target)) for e in pool})
    ours = [e for e in pool if judged(e)]
    out = _Collapse(exact=len(ours) - len({(normalize(e.prompt), normalize(e.target)) for e in ours}))
    kept: list[tuple[str, Example]] = []
    contradictions = collapsed = collapsed_judged = 0
    for members in groups.values():
        best = max(TRUST[m.source] for m in members)
        keep = _resolve([m for m in members if TRUST[m.source] == best])
        out.clusters += any(judged(m) for m in members)
        if keep is None:
            contradictions += 1
            out.contradicting += any(judged(m) for m in members)
            continue
        key = min(normalize(m.prompt) for m in members)
        kept.extend((key, e) for e in keep)
        collapsed += len(members) - len(keep)
        collapsed_judged += sum(map(judged, members)) - sum(map(judged, keep))
    out.near = max(0, collapsed_judged - out.exact)
    counts.update(exact_duplicates=exact, near_duplicates=max(0, collapsed - exact), contradicting_clusters=contradictions)
    return kept, out


def _with_replay(kept: list[tuple[str, Example]], s: GateSettings, counts: dict) -> list[tuple[str, Example]]:
    """Every harvested example, then replay up to ``replay_fraction`` of the final set (against forgetting)."""
    trusted = [(c, e) for c, e in kept if not e.replayed]
    replay = [(c, e) for c, e in kept if e.replayed]
    random.Random(s.seed).shuffle(replay)
    want = round(len(trusted) * s.replay_fraction / (1 - s.replay_fraction)) if trusted else len(replay)
    counts["replay_used"] = min(want, len(replay))
    return sorted(trusted + replay[:want], key=lambda ce: (ce[1].prompt, ce[1].target))


def _report(final: list[tuple[str, Example]], judged, n_judged: int, bad: list[Example], outliers: list[Example],
            leaked: list[Example], collapse: _Collapse, pii_hits: int, focus_routes: Sequence[str], s: GateSettings,
            counts: dict) -> list[Gate]:
    """Every gate's value against its bound."""
    of = max(1, n_judged)
    harvested = "harvested " if n_judged < counts["candidates"] else ""
    unique = sum(judged(e) for _, e in final)  # one per cluster, or one per slot variant
    routes = {r: sum(e.route == r for _, e in final) for r in focus_routes}
    thin = {r: n for r, n in routes.items() if n < s.min_route_examples}
    bad_judged = [e for e in bad if judged(e)]
    return [
        Gate("duplicate_share", (collapse.exact + collapse.near) / of, s.max_duplicate_share, "<=",
             f"{collapse.exact} exact + {collapse.near} near-duplicate prompts of {n_judged} {harvested}collapsed"),
        Gate("contradictions", collapse.contradicting / max(1, collapse.clusters), s.max_contradiction_share, "<=",
             f"{collapse.contradicting} of {collapse.clusters} {harvested}prompt cluster(s) with disagreeing targets "
             "left out"),
        Gate("unique_prompts", unique, s.min_unique_prompts, ">=",
             f"{unique} distinct {harvested}prompts after collapsing"),
        Gate("route_coverage", min(routes.values(), default=s.min_route_examples), s.min_route_examples, ">=",
             f"examples per drifted route {routes}" + (f"; too few for {sorted(thin)}" if thin else "")),
        Gate("golden_leakage", max(sum(map(judged, leaked)) / of, (len(leaked) - sum(map(judged, leaked)))
                                   / max(1, counts["candidates"] - n_judged)), s.max_golden_leakage_share, "<=",
             f"{len(leaked)} example(s) matching the golden set removed (the share: of the harvest or of the "
             "replay, whichever leaks more)"),
        Gate("bad_targets", len(bad_judged) / of, s.max_bad_target_share, "<=",
             f"of {n_judged} {harvested}targets: " + ", ".join(
                 f"{sum(bad_target(e.target, s.max_target_chars) == k for e in bad_judged)} {k}"
                 for k in ("empty", "truncated", "garbage"))),
        Gate("length_outliers", sum(map(judged, outliers)) / of, s.max_length_outlier_share, "<=",
             f"{len(outliers)} removed"),
        Gate("pii", pii_hits if s.pii == "refuse" else 0, 0, "<=",
             {"mask": f"{pii_hits} e-mail/phone string(s) masked", "refuse": f"{pii_hits} e-mail/phone string(s) found",
              "allow": "not checked (retrain.gates.pii = allow)"}[s.pii]),
    ]


def _split(final: list[tuple[str, Example]], s: GateSettings) -> tuple[list[Example], list[Example]]:
    """By cluster: a cluster's key's hash decides its side, so its variants are never on both sides. A small set (19
    examples: 13 % of the time at 0.1) can draw no validation example at all, and early stopping needs one: the
    cluster with the lowest hash goes."""
    side = {c: int(hashlib.sha256(f"{s.seed}:{c}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF for c, _ in final}
    ranked = sorted(side, key=lambda c: (side[c], c))
    val = {c for c in ranked if side[c] < s.validation_fraction} or set(ranked[:1])
    if len(val) == len(ranked):  # every cluster drew validation: the last one trains (one cluster: it trains)
        val = set(ranked[:-1])
    return [e for c, e in final if c not in val], [e for c, e in final if c in val]


def _near_matches(texts: Sequence[str], probes: Sequence[str], threshold: float) -> set[int]:
    """Indexes of texts that are near-duplicates of any probe."""
    ids = clusters(list(probes) + list(texts), threshold)
    probe_clusters = set(ids[:len(probes)])
    return {i for i, c in enumerate(ids[len(probes):]) if c in probe_clusters}


# -- versioned dataset on disk ------------------------------------------------------------------------------------------
def _line(e: Example) -> str:
    """A training line as the request was served: a completion's prompt and its completion, or the chat's messages
    with their roles and the answer; an example without its served request (a file's, or harvested before it was
    kept) is a single-turn chat."""
    served = json.loads(e.served) if e.served else None
    if served is not None and "prompt" in served:
        doc: dict = {"prompt": served["prompt"], "completion": e.target}
    else:
        turns = served["messages"] if served is not None else (
            [{"role": "system", "content": e.system}] if e.system else []) + [{"role": "user", "content": e.prompt}]
        doc = {"messages": [*turns, {"role": "assistant", "content": e.target}]}
    return json.dumps({**doc, "source": e.source, "route": e.route}, sort_keys=True, ensure_ascii=False)


def write_dataset(curated: Curated, root: Path, *, sources: dict, retention_days: float | None = None) -> Path:
    """Write train.jsonl, validation.jsonl and manifest.json under root/<version>/; return that directory.

    The version is the sha256 of the two files' content, so the same inputs give the same version (and the
    same directory). Datasets older than ``retention_days`` are deleted."""
    train = "".join(_line(e) + "\n" for e in curated.train)
    validation = "".join(_line(e) + "\n" for e in curated.validation)
    digest = hashlib.sha256(f"train\n{train}validation\n{validation}".encode()).hexdigest()
    out = root / digest[:16]
    if not (out / "manifest.json").exists():
        tmp = root / f".{digest[:16]}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "train.jsonl").write_text(train, encoding="utf-8")
        (tmp / "validation.jsonl").write_text(validation, encoding="utf-8")
        manifest = {"version": digest, "created_at": time.time(), "sources": sources, "counts": curated.counts,
                    "gates": [g.to_dict() for g in curated.report]}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    if retention_days is not None:
        horizon = time.time() - retention_days * 86400
        for old in root.iterdir():
            if old != out and old.is_dir() and not old.name.startswith(".") and old.stat().st_mtime < horizon:
                shutil.rmtree(old, ignore_errors=True)
    return out
