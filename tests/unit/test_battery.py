"""The large general-knowledge battery: the default battery's questions, then what driftwatch/dev/battery.py
generates; no question is asked twice (a duplicate would count its flip twice at the forgetting gates)."""

import json

import pytest

from driftwatch.dev import battery
from driftwatch.evaluate.evaluator import parts, shipped
from driftwatch.evaluate.golden import read_golden


def test_the_large_battery_is_the_default_one_then_the_generated_questions():
    hand = [json.loads(line) for line in shipped("battery.jsonl").read_text().splitlines()]
    large = [json.loads(line) for line in shipped(battery.LARGE).read_text().splitlines()]
    assert large == hand + battery.questions(hand)
    # the review gates on the held-out part: at 300 questions it refuses a 5-point loss 4 times in 5 (gate_power.py)
    _, held_out = parts({"golden": [], "battery": read_golden(shipped(battery.LARGE)), "probes": []})
    assert len(held_out["battery"]) >= 300


@pytest.mark.parametrize("name", ["battery.jsonl", battery.LARGE])
def test_every_question_is_asked_once_and_has_an_answer(name):
    items = read_golden(shipped(name))
    prompts = [it.prompt.lower() for it in items]
    assert len(set(prompts)) == len(prompts)
    assert all(it.answers and all(a.strip() for a in it.answers) for it in items)
