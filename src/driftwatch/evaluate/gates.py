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

    @property
    def passed(self) -> bool:
        if self.error is not None or math.isnan(self.value):
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
        return f"{verdict:4} {self.name:<22} {self.value:.4g} {self.op} {self.bound:g}  {reason}".rstrip()

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed, "verdict": self.verdict}


def all_pass(gates: list[Gate]) -> bool:
    return bool(gates) and all(g.passed for g in gates)
