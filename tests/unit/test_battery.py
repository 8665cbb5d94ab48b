"""The shipped general-knowledge battery: its generated part is what driftwatch/dev/battery.py makes, and no question
is asked twice (a duplicate would count its flip twice at the forgetting gates)."""

import json

from driftwatch.dev import battery
from driftwatch.evaluate.evaluator import parts, shipped
from driftwatch.evaluate.golden import read_golden


def test_the_shipped_battery_is_the_hand_written_questions_then_the_generated_ones():
    lines = [json.loads(line) for line in shipped("battery.jsonl").read_text().splitlines()]
    assert lines[battery.HAND_WRITTEN:] == battery.questions(lines[:battery.HAND_WRITTEN])
    # the review gates on the held-out part: at 300 questions it refuses a 5-point loss 4 times in 5 (gate_power.py)
    _, held_out = parts({"golden": [], "battery": read_golden(shipped("battery.jsonl")), "probes": []})
    assert len(held_out["battery"]) >= 300


def test_every_question_is_asked_once_and_has_an_answer():
    items = read_golden(shipped("battery.jsonl"))
    prompts = [it.prompt.lower() for it in items]
    assert len(set(prompts)) == len(prompts)
    assert all(it.answers and all(a.strip() for a in it.answers) for it in items)
