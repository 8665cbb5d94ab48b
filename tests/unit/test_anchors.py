"""Anchors: the base model's answers to general prompts, cut to whole sentences (a real model: test_efficacy.py)."""

import json

from driftwatch.errors import ServingError
from driftwatch.evaluate.evaluator import shipped
from driftwatch.evaluate.golden import read_golden
from driftwatch.retrain import anchors
from driftwatch.retrain.dataset import jaccard, read_examples, shingles
from driftwatch.serving.vllm import Generation


def test_answers_are_cut_to_whole_sentences():
    assert anchors.complete("The sky is blue. It scatters light and") == "The sky is blue."
    assert anchors.complete("Paris is the capital. It is in France! More") == "Paris is the capital. It is in France!"
    assert anchors.complete("A week has seven days.", max_chars=10) is None  # no whole sentence fits
    assert anchors.complete("1. **Avoid caffeine before bed**: it") is None  # a list marker is no sentence
    assert anchors.complete("no ending at all") is None and anchors.complete("") is None
    assert anchors.complete('He said "stop." Then he left and') == 'He said "stop."'  # a closing quote
    assert anchors.complete("Pi is about 3. It is about 3.", cut=True) == "Pi is about 3."  # cut at the token limit


def test_no_shipped_anchor_is_a_near_duplicate_of_what_measures_forgetting():
    held = [i.prompt for i in read_golden(shipped("battery.jsonl"))] + [
        i.prompt for i in read_golden(shipped("probes.jsonl"), expected=False)]
    prompts = anchors.prompts()
    assert len(prompts) >= 60 and len(set(prompts)) == len(prompts)
    worst = max((jaccard(shingles(a), shingles(b)), a, b) for a in prompts for b in held)
    assert worst[0] < 0.4, worst


def test_self_distilled_examples_are_replay_lines(tmp_path):
    class Base:
        def __init__(self):
            self.asked = []

        def chat(self, model, messages, **kw):
            self.asked.append((model, messages[0]["role"]))
            text = messages[-1]["content"]
            if "fail" in text:
                raise ServingError("vLLM answered 500")
            if "cut" in text:
                return Generation("It is so. And then it is 3.", 3, 5, 0.1, "length")
            return Generation(f"About {text} I would say this.", 3, 5, 0.1, "stop")

    base = Base()
    out = anchors.self_distill(base, "base", ["what is up?", "cut me", "fail me"], system="Be brief.")
    assert [(e.prompt, e.target, e.source, e.route, e.system) for e in out] == [
        ("what is up?", "About what is up? I would say this.", "anchor", "general", "Be brief."),
        ("cut me", "It is so.", "anchor", "general", "Be brief.")]  # one failed request leaves its prompt out
    assert base.asked == [("base", "system")] * 3
    path = anchors.write(out, tmp_path / "a" / "anchors.jsonl")
    assert [json.loads(line)["route"] for line in path.read_text().splitlines()] == ["general", "general"]
    assert [(e.prompt, e.target, e.route, e.system, e.source) for e in read_examples(path)] == [
        (e.prompt, e.target, e.route, e.system, "anchor") for e in out]  # their own source, replayed as the rest
