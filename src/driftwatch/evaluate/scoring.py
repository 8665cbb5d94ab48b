"""How outputs are scored: task accuracy, diversity, task confusion. Pure functions over strings, no I/O.

Texts are compared as normalised words (NFKC, case-folded, punctuation dropped), so "Paris." equals "paris".
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

from driftwatch.monitor.features import distinct_n
from driftwatch.evaluate.golden import SCORINGS, normalize


def rouge_l(a: Sequence[str], b: Sequence[str]) -> float:
    """ROUGE-L F1 of two word sequences: their longest common subsequence against both lengths."""
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))


def _contains(words: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(words[i:i + n] == needle for i in range(len(words) - n + 1))


def score(output: str, expected: Sequence[str], scoring: str) -> float:
    """An item's score in [0, 1] — the best over its accepted answers. exact: the stripped texts are equal;
    normalized: equal as normalised words; contains: an answer's words appear, in order and adjacent, among the
    output's; rouge_l: ROUGE-L F1 of the words (partial credit)."""
    if scoring == "exact":
        return float(any(output.strip() == e.strip() for e in expected))
    words = normalize(output).split()
    if scoring == "normalized":
        return float(any(words == normalize(e).split() for e in expected))
    if scoring == "contains":
        return float(any(_contains(words, normalize(e).split()) for e in expected))
    if scoring == "rouge_l":
        return max((rouge_l(words, normalize(e).split()) for e in expected), default=0.0)
    raise ValueError(f"unknown scoring {scoring!r}: one of {', '.join(SCORINGS)}")


def _grams(text: str) -> frozenset[str]:
    words = normalize(text).split()
    return frozenset(words) | frozenset(f"{a} {b}" for a, b in zip(words, words[1:]))


def self_similarity(outputs: Sequence[str]) -> float:
    """Mean pairwise Jaccard similarity of the outputs' words and word pairs: near 0 for varied answers, 1 when
    every prompt gets the same answer (modal collapse)."""
    grams = [_grams(o) for o in outputs]
    pairs = list(itertools.combinations(grams, 2))
    if not pairs:
        return math.nan
    return sum(len(a & b) / len(a | b) if a or b else 1.0 for a, b in pairs) / len(pairs)


def distinct_2(outputs: Sequence[str]) -> float:
    return distinct_n((" ".join(normalize(o).split()) for o in outputs), 2)


def confusion_rate(probe_outputs: Sequence[str], task_outputs: Sequence[str], threshold: float) -> float:
    """Share of off-task probes answered like the task: the probe's output is at least ``threshold`` similar
    (ROUGE-L) to an output the same adapter gave for a task prompt."""
    if not probe_outputs:
        return math.nan
    task = [normalize(t).split() for t in task_outputs]
    task = [t for t in task if t]
    confused = 0
    for output in probe_outputs:
        words = normalize(output).split()
        confused += any(rouge_l(words, t) >= threshold for t in task)
    return confused / len(probe_outputs)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
