"""Anchors: the base model's own answers to prompts outside the task, replayed against forgetting.

An adapter trained on its task alone learns to answer everything like the task. Measured by ``make efficacy``
(docs/evaluation.md): an incumbent trained on one-word ticket routing answered 0 of 39 general-knowledge questions
(the base model: 0.615) and a third of the off-task probes with a queue name. Training on the base model's answers
to general prompts (self-distillation) teaches the adapter to leave those alone: its task answers change, the rest
stays the base model's.

``driftwatch anchors --out FILE`` asks the served base model (``gateway.base_model``) the shipped prompts
(``defaults/anchors.jsonl``, none of them a near-duplicate of the battery's or the probes': those measure what the
anchors protect) and writes base-training-set lines, route ``general``. Put them in ``retrain.base_training_set``
(and in the incumbent's first training set): replay carries them into every retrain.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

from driftwatch.errors import ServingError
from driftwatch.evaluate.golden import records, text_field
from driftwatch.retrain.dataset import Example

log = logging.getLogger(__name__)
ROUTE = "general"
_SENTENCE = re.compile(r".+?[.!?][\"')\]*]*(?=\s|$)", re.S)  # a closing quote, bracket or bold ends it too


def prompts(path: Path | None = None) -> list[str]:
    """The anchor prompts: ``path`` (JSONL {prompt}), else the shipped ones."""
    path = path or Path(str(resources.files("driftwatch") / "defaults" / "anchors.jsonl"))
    return [text_field(obj, "prompt", f"{path}:{n}") for n, obj in records(path)]


def complete(text: str, max_chars: int = 240, *, cut: bool = False) -> str | None:
    """The longest run of whole sentences that opens ``text`` and fits ``max_chars``; None when none does (an answer
    cut mid-sentence would teach the adapter to stop mid-sentence). ``cut``: the text stopped at the token limit, so
    its end is no sentence's end ("about 3." of "about 3.5")."""
    text, out = text.strip(), ""
    for m in _SENTENCE.finditer(text):
        if m.end() > max_chars or (cut and m.end() == len(text)):
            break
        out = text[:m.end()]
    return out if len(out.split()) >= 3 else None  # "1." opens a list: no sentence


def self_distill(client, base: str, questions: list[str], *, max_tokens: int = 64, concurrency: int = 4,
                 system: str | None = None) -> list[Example]:
    """The base model's greedy answers, cut to whole sentences; a prompt with none, or that failed, is left out."""
    def ask(prompt: str) -> str | None:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        try:
            g = client.chat(base, messages, max_tokens=max_tokens, temperature=0.0)
        except ServingError as exc:
            log.warning("anchor prompt %r: %s", prompt[:60], exc)
            return None
        return complete(g.text, cut=g.finish_reason == "length")

    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(ask, questions))
    return [Example(q, a, "anchor", ROUTE, system, f"anchor:{i}") for i, (q, a) in enumerate(zip(questions, answers)) if a]


def write(examples: list[Example], path: Path) -> Path:
    """Base-training-set lines (docs/training-data.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": e.prompt, "response": e.target, "route": e.route, "source": e.source,
                                        **({"system": e.system} if e.system else {})}) + "\n" for e in examples))
    return path
