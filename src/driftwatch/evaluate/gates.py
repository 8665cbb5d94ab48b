"""A gate: one check with its value, bound, verdict and reason. The training-data gates and the promotion gate are
lists of these; a list passes only when every check does, and a check that could not be measured (``error``) fails.
Pure, no I/O."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Gate:
    name: str
    value: float
    bound: float
    op: str  # "<=", ">=" or ">" (strictly greater)
    detail: str = ""
    error: str | None = None  # why the value could not be measured: the check fails
    p_value: float | None = None  # a test of the change behind the value: significant (below alpha) fails too
    alpha: float | None = None

    @property
    def passed(self) -> bool:
        if self.error is not None or math.isnan(self.value):
            return False
        if self.p_value is not None and self.alpha is not None and self.p_value < self.alpha:
            return False
        # a value at its bound by arithmetic is at it: 63/120 - 57/120 is 0.050000000000000044 in floats
        at = math.isclose(self.value, self.bound, rel_tol=1e-9, abs_tol=1e-12)
        return {"<=": self.value <= self.bound or at, ">=": self.value >= self.bound or at,
                ">": self.value > self.bound and not at}[self.op]

    @property
    def verdict(self) -> str:
        return "error" if self.error is not None else "pass" if self.passed else "fail"

    def line(self) -> str:
        verdict = {"pass": "pass", "fail": "FAIL", "error": "ERR"}[self.verdict]
        reason = self.error if self.error is not None else self.detail
        if self.p_value is not None and self.alpha is not None and self.error is None:
            reason += f"; p={self.p_value:.3g} {'<' if self.p_value < self.alpha else '>='} {self.alpha:g}"
        return f"{verdict:4} {self.name:<22} {self.value:.4g} {self.op} {self.bound:g}  {reason}".rstrip()

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed, "verdict": self.verdict}


def all_pass(gates: list[Gate]) -> bool:
    return bool(gates) and all(g.passed for g in gates)


@dataclass(frozen=True)
class Flips:
    """Two models on the same questions, paired: how many a reference got right and the candidate wrong (``lost``),
    and the reverse (``gained``), of ``n``. A score of 0.5 or more is right (partial credit: rouge_l).

    Two accuracies on 120 questions each carry ~4.6 points of noise, their difference ~6.4; the questions that
    agree carry none, so the flips alone decide (McNemar's test)."""

    lost: int
    gained: int
    n: int

    @classmethod
    def of(cls, reference: list[float], candidate: list[float]) -> Flips:
        pairs = [(r >= 0.5, c >= 0.5) for r, c in zip(reference, candidate, strict=True)]
        return cls(sum(r and not c for r, c in pairs), sum(c and not r for r, c in pairs), len(pairs))

    @property
    def drop(self) -> float:
        """The reference's accuracy minus the candidate's."""
        return (self.lost - self.gained) / self.n if self.n else math.nan

    def p_value(self) -> float:
        """One-sided exact sign test: the chance, were the candidate no worse, that at least ``lost`` of the
        ``lost + gained`` flips would go against it."""
        m = self.lost + self.gained
        return _binomial_tail(self.lost, m, 0.5) if m else 1.0

    def interval(self, confidence: float) -> tuple[float, float]:
        """The drop's two-sided interval, given the number of flips: Clopper-Pearson on the share of them lost."""
        m = self.lost + self.gained
        if not m:
            return 0.0, 0.0
        a = (1 - confidence) / 2
        low = 0.0 if self.lost == 0 else _solve(lambda p: _binomial_tail(self.lost, m, p) - a)
        high = 1.0 if self.lost == m else _solve(lambda p: a - (1 - _binomial_tail(self.lost + 1, m, p)))
        return m / self.n * (2 * low - 1), m / self.n * (2 * high - 1)

    def describe(self, reference: str, confidence: float) -> str:
        """The counts and the drop, with the two-sided interval whose lower end is the one-sided test's bound at
        ``confidence`` (a 95 % test, a 90 % interval): the interval excludes 0 exactly when the test finds a loss."""
        level = 1 - 2 * (1 - confidence)
        low, high = self.interval(level)
        return (f"{self.lost} right for {reference} and wrong for the candidate, {self.gained} the reverse, of "
                f"{self.n}: drop {self.drop:+.3f} [{low:+.3f}, {high:+.3f}] ({level * 100:.3g} %)")


def _binomial_tail(k: int, m: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(m, p), summed in logs (m up to thousands)."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    return min(1.0, sum(math.exp(math.lgamma(m + 1) - math.lgamma(i + 1) - math.lgamma(m - i + 1) + i * lp
                                 + (m - i) * lq) for i in range(k, m + 1)))


def _solve(f, low: float = 0.0, high: float = 1.0) -> float:
    """The root of an increasing ``f`` on [low, high], by bisection (to 1e-9)."""
    for _ in range(60):
        mid = (low + high) / 2
        if f(mid) < 0:
            low = mid
        else:
            high = mid
    return (low + high) / 2
