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

TRUST = {"correction": 3, "positive": 2, "replay": 1}
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
    source: str  # correction | positive | replay
    route: str | None = None
    system: str | None = None
    ref: str = ""  # request_id for harvested examples, file:line for files


# -- files ------------------------------------------------------------------------------------------------------------
def read_examples(path: Path, source: str = "replay") -> list[Example]:
    """The base training set: one {"prompt", "response", "route"?, "system"?} per line (docs/training-data.md)."""
    out = []
    for line_no, obj in records(path):
        where = f"{path}:{line_no}"
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
    """Apply every gate; return the split set and the report, or raise GateFailure with the report."""
    s = settings or GateSettings()
    counts: dict[str, int] = {"candidates": len(candidates)}
    for src in TRUST:
        counts[f"from_{src}"] = sum(e.source == src for e in candidates)
    pool = list(candidates)

    # PII first, so nothing below sees it
    pii_hits = 0
    if s.pii != "allow":
        masked = []
        for e in pool:
            prompt, a = mask_pii(e.prompt)
            target, b = mask_pii(e.target)
            pii_hits += a + b
            masked.append(Example(prompt, target, e.source, e.route, e.system, e.ref))
        if s.pii == "mask":
            pool = masked
    counts["pii_masked" if s.pii == "mask" else "pii_found"] = pii_hits

    # empty / truncated / garbage targets
    bad = [(e, bad_target(e.target, s.max_target_chars)) for e in pool]
    for kind in ("empty", "truncated", "garbage"):
        counts[f"bad_{kind}"] = sum(why == kind for _, why in bad)
    n_bad = sum(why is not None for _, why in bad)
    pool = [e for e, why in bad if why is None]

    # length outliers: text lengths are log-normal-ish, so robustly in log space: beyond median + 5 MAD (σ-scaled),
    # per route (a summary's prompt is long by nature: when traffic drifts to summaries, its examples are not
    # outliers against the replayed chat examples); a route with fewer than 10 examples is not judged
    size = lambda e: math.log1p(len(e.prompt) + len(e.target))  # noqa: E731
    limits: dict[str | None, float] = {}
    for route in {e.route for e in pool}:
        logs = sorted(size(e) for e in pool if e.route == route)
        if len(logs) >= 10:
            med = logs[len(logs) // 2]
            mad = sorted(abs(x - med) for x in logs)[len(logs) // 2] or 0.1
            limits[route] = med + 5 * 1.4826 * mad
    kept = [e for e in pool if size(e) <= limits.get(e.route, math.inf)]
    outliers, pool = len(pool) - len(kept), kept
    counts["length_outliers"] = outliers

    # golden leakage: candidates whose prompt is (nearly) a golden prompt are removed
    golden_norm = {normalize(g.prompt) for g in golden}
    leak_ids = _near_matches([e.prompt for e in pool], [g.prompt for g in golden], s.near_dup_threshold) \
        if golden else set()
    leaked = [e for i, e in enumerate(pool) if i in leak_ids or normalize(e.prompt) in golden_norm]
    pool = [e for i, e in enumerate(pool) if not (i in leak_ids or normalize(e.prompt) in golden_norm)]
    counts["golden_leaked"] = len(leaked)

    # exact duplicates, near-duplicates and contradictions, by prompt cluster. Their shares are of what was
    # harvested: the replay was judged when it was harvested, and hundreds of replayed clusters would otherwise
    # dilute a poisoned harvest under the bounds. A set of replay alone (a first training) is judged whole.
    judged = (lambda es: [e for e in es if e.source != "replay"]) if any(e.source != "replay" for e in candidates) \
        else list
    cluster_of = clusters([e.prompt for e in pool], s.near_dup_threshold)
    groups: dict[int, list[Example]] = {}
    for e, c in zip(pool, cluster_of):
        groups.setdefault(c, []).append(e)
    exact = len(pool) - len({(normalize(e.prompt), normalize(e.target)) for e in pool})
    judged_pool, n_judged = judged(pool), len(judged(candidates))
    exact_judged = len(judged_pool) - len({(normalize(e.prompt), normalize(e.target)) for e in judged_pool})
    kept_examples: list[tuple[int, Example]] = []
    contradictions = collapsed = contradicting_judged = collapsed_judged = judged_clusters = 0
    for c, members in groups.items():
        best_trust = max(TRUST[m.source] for m in members)
        keep = _resolve([m for m in members if TRUST[m.source] == best_trust])
        judged_clusters += bool(judged(members))
        if keep is None:
            contradictions += 1
            contradicting_judged += bool(judged(members))
        else:
            kept_examples.extend((c, e) for e in keep)
            collapsed += len(members) - len(keep)
            collapsed_judged += len(judged(members)) - len(judged(keep))
    counts.update(exact_duplicates=exact, near_duplicates=max(0, collapsed - exact), contradicting_clusters=contradictions)
    near_judged = max(0, collapsed_judged - exact_judged)

    # replay share: keep trusted examples, then replay up to the configured share of the final set
    trusted = [(c, e) for c, e in kept_examples if e.source != "replay"]
    replay = [(c, e) for c, e in kept_examples if e.source == "replay"]
    rng = random.Random(s.seed)
    rng.shuffle(replay)
    want = round(len(trusted) * s.replay_fraction / (1 - s.replay_fraction)) if trusted else len(replay)
    final = sorted(trusted + replay[:want], key=lambda ce: (ce[1].prompt, ce[1].target))
    counts["replay_used"] = min(want, len(replay))

    total = max(1, len(candidates))
    harvested = "harvested " if n_judged < len(candidates) else ""
    routes = {r: sum(e.route == r for _, e in final) for r in focus_routes}
    thin = {r: n for r, n in routes.items() if n < s.min_route_examples}
    report = [
        Gate("duplicate_share", (exact_judged + near_judged) / max(1, n_judged), s.max_duplicate_share, "<=",
             f"{exact_judged} exact + {near_judged} near-duplicate prompts of {n_judged} {harvested}collapsed"),
        Gate("contradictions", contradicting_judged / max(1, judged_clusters), s.max_contradiction_share, "<=",
             f"{contradicting_judged} of {judged_clusters} {harvested}prompt cluster(s) with disagreeing targets "
             "left out"),
        Gate("unique_prompts", len(final), s.min_unique_prompts, ">=", f"{len(final)} distinct prompts after collapsing"),
        Gate("route_coverage", min(routes.values(), default=s.min_route_examples), s.min_route_examples, ">=",
             f"examples per drifted route {routes}" + (f"; too few for {sorted(thin)}" if thin else "")),
        Gate("golden_leakage", len(leaked) / total, s.max_golden_leakage_share, "<=",
             f"{len(leaked)} example(s) matching the golden set removed"),
        Gate("bad_targets", n_bad / total, s.max_bad_target_share, "<=",
             ", ".join(f"{counts[f'bad_{k}']} {k}" for k in ("empty", "truncated", "garbage"))),
        Gate("length_outliers", outliers / total, s.max_length_outlier_share, "<=", f"{outliers} removed"),
        Gate("pii", pii_hits if s.pii == "refuse" else 0, 0, "<=",
             {"mask": f"{pii_hits} e-mail/phone string(s) masked", "refuse": f"{pii_hits} e-mail/phone string(s) found",
              "allow": "not checked (retrain.gates.pii = allow)"}[s.pii]),
    ]
    if any(not g.passed for g in report):
        raise GateFailure(report)

    # by cluster: a cluster's hash decides its side, so it is never on both; a small set (19 examples: 13 % of
    # the time at 0.1) can draw no validation example at all, and early stopping needs one: the lowest hash goes
    sided = sorted(((int(hashlib.sha256(f"{s.seed}:{normalize(e.prompt)}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF, i)
                    for i, (_, e) in enumerate(final)))
    n_val = min(max(1, sum(side < s.validation_fraction for side, _ in sided)), len(final) - 1)
    val_idx = {i for _, i in sided[:n_val]}
    train = [e for i, (_, e) in enumerate(final) if i not in val_idx]
    validation = [e for i, (_, e) in enumerate(final) if i in val_idx]
    counts.update(train=len(train), validation=len(validation))
    return Curated(train, validation, report, counts)


def _near_matches(texts: Sequence[str], probes: Sequence[str], threshold: float) -> set[int]:
    """Indexes of texts that are near-duplicates of any probe."""
    ids = clusters(list(probes) + list(texts), threshold)
    probe_clusters = set(ids[:len(probes)])
    return {i for i, c in enumerate(ids[len(probes):]) if c in probe_clusters}


# -- versioned dataset on disk ------------------------------------------------------------------------------------------
def _line(e: Example) -> str:
    messages = ([{"role": "system", "content": e.system}] if e.system else []) + [
        {"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.target}]
    return json.dumps({"messages": messages, "source": e.source, "route": e.route}, sort_keys=True, ensure_ascii=False)


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
