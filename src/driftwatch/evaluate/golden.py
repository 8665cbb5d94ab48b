"""The golden set and the evaluation's battery and probes: what a candidate is judged on, and what training must
never see (retrain/dataset.py drops any example whose prompt matches one). JSONL, one object per line; a bad line
is a :class:`~driftwatch.errors.DataError` naming the file, line and field."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from driftwatch.errors import DataError

SCORINGS = ("exact", "normalized", "contains", "rouge_l")  # how a golden item's answer is scored
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class GoldenItem:
    prompt: str
    expected: str | tuple[str, ...]  # one answer, or accepted alternatives (empty for probes: no answer expected)
    route: str | None = None
    scoring: str | None = None  # exact | normalized | contains | rouge_l (evaluate/scoring.py)

    @property
    def answers(self) -> tuple[str, ...]:
        return (self.expected,) if isinstance(self.expected, str) else self.expected


def records(path: Path) -> Iterable[tuple[int, dict]]:
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path}:{line_no}: not JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object")
            yield line_no, obj


def text_field(obj: dict, name: str, where: str, required: bool = True) -> str | None:
    value = obj.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}' must be a string" + ("" if name in obj else " (missing)"))
    return value


def read_golden(path: Path, expected: bool = True) -> list[GoldenItem]:
    """The golden set (and the evaluation's battery and probes): one {"prompt", "expected" (a string or a list of
    accepted answers), "route"?, "scoring"?} per line. Never trained on. Probes (``expected=False``) need no answer."""
    out = []
    for line_no, obj in records(path):
        where = f"{path}:{line_no}"
        answers = obj.get("expected")
        if isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers):
            answers = tuple(answers)
        elif expected or answers is not None:
            answers = text_field(obj, "expected", where)
        scoring = text_field(obj, "scoring", where, False)
        if scoring is not None and scoring not in SCORINGS:
            raise DataError(f"{where}: scoring {scoring!r} is not one of {', '.join(SCORINGS)}")
        out.append(GoldenItem(text_field(obj, "prompt", where), answers or (), text_field(obj, "route", where, False), scoring))
    return out


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_WORD.findall(text))
