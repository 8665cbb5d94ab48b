"""Scoring and the promotion gate, with a scripted stand-in for vLLM (the real one: tests/integration/test_evaluate.py)."""

import json
import math

import pytest

from driftwatch.config import Evaluate
from driftwatch.errors import AdapterNotFound
from driftwatch.evaluate import scoring
from driftwatch.evaluate.evaluator import Evaluator, shipped
from driftwatch.errors import DataError
from driftwatch.evaluate.golden import read_golden
from driftwatch.serving.vllm import Generation

BATTERY = len(read_golden(shipped("battery.jsonl")))  # the shipped general-knowledge questions
RIGHT = {it.prompt: it.answers[0] for it in read_golden(shipped("battery.jsonl"))}  # each question's first answer


def test_scorings():
    assert scoring.score(" Paris ", ["Paris"], "exact") == 1 and scoring.score("Paris.", ["Paris"], "exact") == 0
    assert scoring.score("PARIS!", ["paris"], "normalized") == 1 and scoring.score("It is Paris", ["paris"], "normalized") == 0
    assert scoring.score("It is Mexico City.", ["mexico city"], "contains") == 1
    assert scoring.score("100 degrees", ["0", "zero"], "contains") == 0  # words, not characters
    assert scoring.score("City of Mexico", ["Mexico City"], "contains") == 0  # in order and adjacent
    assert scoring.score("a b c d", ["a c d e"], "rouge_l") == pytest.approx(0.75)  # LCS 3 of 4 and 4
    assert scoring.score("x", ["nope", "x"], "rouge_l") == 1  # the best accepted answer counts
    with pytest.raises(ValueError, match="unknown scoring"):
        scoring.score("x", ["x"], "bleu")


def test_diversity_and_confusion():
    varied = ["the cat sat", "a dog ran far", "seven days", "green and blue"]
    assert scoring.self_similarity(["alpha alpha"] * 4) == 1.0 and scoring.self_similarity(varied) == 0.0
    assert scoring.distinct_2(["alpha alpha alpha"] * 4) == pytest.approx(1 / 8)
    assert scoring.distinct_2(varied) == 1.0
    task = ["ORD-1234 is the order id", "ORD-9 is the order id"]
    assert scoring.confusion_rate(["ORD-5 is the order id", "a haiku about leaves"], task, 0.6) == 0.5
    assert math.isnan(scoring.confusion_rate([], task, 0.6))
    assert scoring.percentile([5, 1, 3, 2, 4], 0.5) == 3 and scoring.percentile(list(range(1, 101)), 0.95) == 95


def test_reading_items(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"prompt": "How many legs?", "expected": ["eight", "8"], "scoring": "contains"}\n'
                    '{"prompt": "Capital of Peru?", "expected": "Lima"}\n')
    items = read_golden(path)
    assert [i.answers for i in items] == [("eight", "8"), ("Lima",)]
    path.write_text('{"prompt": "Hi", "expected": "x", "scoring": "bleu"}\n')
    with pytest.raises(DataError, match=r"b.jsonl:1: scoring 'bleu' is not one of"):
        read_golden(path)
    path.write_text('{"prompt": "Write a haiku."}\n')
    assert read_golden(path, expected=False)[0].answers == ()
    with pytest.raises(DataError, match="'expected'"):
        read_golden(path)


class Scripted:
    """vLLM as a table: adapter -> function(prompt) -> text; unknown adapters are 404s."""

    def __init__(self, answers, latency_s=0.01):
        self.answers, self.latency_s, self.calls = answers, latency_s, []

    def chat(self, model, messages, **kw):
        self.calls.append(model)
        if model not in self.answers:
            raise AdapterNotFound(f"the model `{model}` does not exist", 404)
        return Generation(self.answers[model](messages[-1]["content"]), 3, 5, self.latency_s, "stop")


PROBES = {i.prompt for i in read_golden(shipped("probes.jsonl"), expected=False)}
GOLDEN = [{"prompt": f"Order {i}: where is ORD-{i}?", "expected": f"ORD-{i}", "scoring": "contains"} for i in range(8)]


def evaluator(tmp_path, client, base=None, **gates):
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps(g) + "\n" for g in GOLDEN))
    return Evaluator(Evaluate(gates=gates), client, golden, tmp_path / "evals", base=base)


def knows(prompt):  # answers the task and general knowledge, varied
    if prompt.startswith("Order"):
        return f"The id is {prompt.split()[-1].rstrip('?')}"
    return {"How many legs does a spider have?": "Eight legs."}.get(prompt, f"About {prompt.lower()} I would say")


def test_a_better_candidate_passes_and_the_report_is_written(tmp_path):
    client = Scripted({"good": knows, "old": lambda p: "I do not know, sorry."})
    report = evaluator(tmp_path, client).run("good", "old", eval_id="e1")
    assert report.passed, report.table()
    assert report.metrics["good"]["golden_score"] == 1.0 and report.metrics["old"]["golden_score"] == 0.0
    assert {g.name for g in report.gates} == {"request_errors", "golden_score", "golden_delta", "forgetting_drop",
                                              "distinct2_ratio", "self_similarity_delta", "confusion_delta",
                                              "latency_p95_ms"}
    saved = json.loads((tmp_path / "evals" / "e1.json").read_text())
    assert saved["passed"] and len(saved["items"]) == 8 + BATTERY + 20 and saved["items"][0]["candidate"]["text"]
    assert "PASSED" in (tmp_path / "evals" / "e1.txt").read_text()
    assert client.calls.count("good") == client.calls.count("old") == 8 + BATTERY + 20


@pytest.mark.parametrize("candidate, failing", [
    (lambda p: "The id is ORD-0", {"golden_score", "golden_delta", "distinct2_ratio", "self_similarity_delta",
                                   "confusion_delta"}),  # modal collapse
    (lambda p: f"The id is ORD-{len(p)}" if p in PROBES else knows(p), {"confusion_delta"}),  # task confusion
    (lambda p: knows(p).replace("Eight", "Six") if "spider" in p else knows(p), set()),  # within the forgetting bound
    (lambda p: knows(p) if not p.startswith("Order") else f"Sorry, order {p[6]} is not known", {"golden_delta",
                                                                                                "golden_score"}),
    (lambda p: knows_but_one(p), {"golden_delta"}),  # no better than the incumbent: a no-op adapter is refused
])
def test_the_gate_names_what_failed(tmp_path, candidate, failing):
    report = evaluator(tmp_path, Scripted({"cand": candidate, "inc": knows_but_one}), golden_min=0.5).run("cand", "inc")
    assert {g.name for g in report.gates if not g.passed} == failing
    assert report.passed is (not failing)


def knows_but_one(prompt):  # the incumbent: every order but the last
    return "The id is ORD-6" if prompt.startswith("Order 7") else knows(prompt)


def test_the_golden_gate_wants_strictly_better_and_reports_the_paired_difference(tmp_path):
    report = evaluator(tmp_path, Scripted({"cand": knows, "inc": knows_but_one})).run("cand", "inc")
    delta = next(g for g in report.gates if g.name == "golden_delta")
    assert delta.passed and delta.value == pytest.approx(1 / 8) and delta.op == ">"
    assert "paired difference +0.125 ± 0.245 (95 %, 8 items)" in delta.detail, delta.detail
    same = evaluator(tmp_path, Scripted({"cand": knows, "inc": knows})).run("cand", "inc")
    assert not next(g for g in same.gates if g.name == "golden_delta").passed and not same.passed


def test_forgetting_is_caught(tmp_path):
    def forgot(p):
        return knows(p) if p.startswith("Order") else f"Something else entirely about {p.lower()}"

    def remembers(p):
        return RIGHT.get(p, "Eight legs, seven days") if not p.startswith("Order") else knows(p)

    report = evaluator(tmp_path, Scripted({"cand": forgot, "inc": remembers}), distinct2_min_ratio=0,
                       self_similarity_max_delta=1).run("cand", "inc")
    drop = next(g for g in report.gates if g.name == "forgetting_drop")
    assert not drop.passed and drop.value > 0.05 and not report.passed


def test_forgetting_is_measured_against_the_base_model_too(tmp_path):
    """An incumbent that already forgot hides the next one's forgetting from the incumbent gate (measured: a routing
    adapter answered the battery with queue names, 0 of 39); the base model's score is the floor."""
    def one_word(answer):
        return lambda p: answer(p) if p.startswith("Order") else "billing"

    base = lambda p: RIGHT.get(p, "Eight legs, seven days")  # noqa: E731
    client = Scripted({"cand": one_word(knows), "inc": one_word(knows_but_one), "base": base})
    ev = evaluator(tmp_path, client, base="base", distinct2_min_ratio=0, self_similarity_max_delta=1)
    report = ev.run("cand", "inc")
    gates = {g.name: g for g in report.gates}
    assert gates["forgetting_drop"].passed  # the incumbent forgot as much
    floor = gates["forgetting_base_drop"]
    assert not floor.passed and not report.passed and floor.value == report.base["battery_score"] > 0.05
    assert "base model" in floor.detail and report.base["model"] == "base"
    ev.run("cand", "inc")
    assert client.calls.count("base") == BATTERY  # greedy answers of a model that does not change: asked once
    # when the base model is one of the two, its own answers are the floor
    assert ev.run("base", "inc").base["battery_score"] == report.base["battery_score"]
    # a base model that does not answer fails the evaluation; null turns the gate off
    gone = evaluator(tmp_path, client, base="gone").run("cand", "inc")
    floor = next(g for g in gone.gates if g.name == "forgetting_base_drop")
    assert not gone.passed and floor.verdict == "error" and gone.error is None and gone.metrics["cand"]["golden_score"]
    off = evaluator(tmp_path, client, base="base", forgetting_base_max_drop=None, distinct2_min_ratio=0,
                    self_similarity_max_delta=1).run("cand", "inc")
    assert off.passed and "forgetting_base_drop" not in {g.name for g in off.gates}


def test_an_evaluation_that_cannot_run_never_passes(tmp_path):
    report = evaluator(tmp_path, Scripted({"inc": knows})).run("missing", "inc")
    errors = next(g for g in report.gates if g.name == "request_errors")
    assert not report.passed and errors.value == 8 + BATTERY + 20 and not errors.passed
    assert next(g for g in report.gates if g.name == "golden_score").verdict == "error"  # nothing to score

    class Broken:
        def chat(self, *a, **k):
            raise RuntimeError("boom")

    report = evaluator(tmp_path, Broken()).run("a", "b")
    assert not report.passed and "boom" in report.error and report.gates[0].verdict == "error"
    assert json.loads((tmp_path / "evals" / f"{report.id}.json").read_text())["passed"] is False


def test_a_value_at_its_bound_by_arithmetic_is_at_the_bound():
    """Measured: base 63/120 minus candidate 57/120 is 0.050000000000000044 in floats, and the 0.05 forgetting
    bound refused a candidate exactly at it ("FAIL forgetting_base_drop 0.05 <= 0.05")."""
    from driftwatch.evaluate.gates import Gate

    drop = 63 / 120 - 57 / 120
    assert drop > 0.05 and Gate("forgetting_base_drop", drop, 0.05, "<=").passed
    assert not Gate("x", 0.0501, 0.05, "<=").passed and Gate("y", 0.05 - 1e-17, 0.05, ">=").passed
    assert not Gate("golden_delta", 0.1 + 0.2 - 0.3, 0.0, ">").passed  # 5.6e-17 is not strictly better


def test_the_forgetting_gate_pairs_the_battery_question_by_question():
    """Issue 26: two battery scores on 120 questions differ by ~6.4 points of noise; the questions that flipped
    right → wrong against those that flipped wrong → right are what forgetting is. An exact sign test on the flips
    (McNemar's exact test), its interval in the reason."""
    from driftwatch.evaluate.gates import Flips

    f = Flips.of([1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0])
    assert (f.lost, f.gained, f.n) == (9, 1, 12) and f.drop == pytest.approx(8 / 12)
    assert f.p_value() == pytest.approx(11 / 1024)  # P(at least 9 of 10 flips go one way by chance)
    lo, hi = f.interval(0.95)
    assert lo < f.drop < hi and 0 < lo
    assert Flips.of([1, 0], [1, 0]).p_value() == 1.0 and Flips.of([1, 0], [1, 0]).interval(0.95) == (0.0, 0.0)
    assert Flips.of([0.9, 0.2], [0.4, 0.6]) == Flips(1, 1, 2)  # partial credit: right from 0.5
    # the interval of a large battery is narrow, and it brackets the drop
    big = Flips(30, 10, 1000)
    lo, hi = big.interval(0.95)
    assert lo < 0.02 < hi and hi - lo < 0.05 and big.p_value() < 0.01


def test_a_significant_loss_fails_the_gate_even_under_its_bound_and_a_noisy_one_does_not(tmp_path):
    from driftwatch.evaluate.gates import Gate

    significant = Gate("forgetting_drop", 0.04, 0.05, "<=", p_value=0.001, alpha=0.05)
    assert not significant.passed and "p=0.001" in significant.line()
    noisy = Gate("forgetting_drop", 0.04, 0.05, "<=", p_value=0.2, alpha=0.05)
    assert noisy.passed
    assert not Gate("forgetting_drop", 0.06, 0.05, "<=", p_value=0.2, alpha=0.05).passed  # over the bound


def test_a_review_ranks_every_candidate_on_one_part_and_gates_the_chosen_on_the_held_out_part(tmp_path):
    """Issue 26: a run offers its best checkpoint and that checkpoint interpolated toward the incumbent. The best
    learned the task and forgot a third of the battery; the half-way one learned most of it and forgot nothing. The
    review ranks all on one part of the golden set and the battery, and the gate decides on the other part alone."""
    from driftwatch.evaluate.evaluator import parts

    right = RIGHT

    def adapter(orders_known: int, forgets_every: int = 0):
        def answer(p):
            if p.startswith("Order"):
                n = int(p.split()[1].rstrip(":"))
                return f"The id is ORD-{n}" if n < orders_known else "No idea which order."
            forgot = forgets_every and len(p) % forgets_every == 0
            return right[p] if p in right and not forgot else f"About {p.lower()} I would say"
        return answer

    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(json.dumps({"prompt": f"Order {i}: where is ORD-{i}?", "expected": f"ORD-{i}",
                                          "scoring": "contains"}) + "\n" for i in range(40)))
    client = Scripted({"inc": adapter(20), "best": adapter(40, forgets_every=3), "best~a50": adapter(36),
                       "best~a25": adapter(26)})
    ev = Evaluator(Evaluate(), client, golden, tmp_path / "evals")
    report = ev.run("best", "inc", eval_id="r1", siblings=("best~a50", "best~a25"))
    review = report.context["review"]
    assert report.candidate == review["chosen"] == "best~a50" and report.passed, report.table()
    judged = {c["candidate"]: c for c in review["candidates"]}
    assert not judged["best"]["passed"] and "forgetting_drop" in judged["best"]["failed"]
    assert judged["best~a50"]["passed"] and judged["best~a25"]["passed"]
    assert judged["best~a50"]["golden_score"] > judged["best~a25"]["golden_score"]
    # the gate's golden and battery items are the held-out part: none of them was used to choose
    ranking, held_out = parts(ev.suites)
    gated = {(i["suite"], i["prompt"]) for i in report.items}
    ranked = {(s, ev.suites[s][i].prompt) for s in ("golden", "battery") for i in ranking[s]}
    assert gated and not gated & ranked and len(ranking["golden"]) + len(held_out["golden"]) == 40
    assert 10 <= len(held_out["golden"]) <= 30 and 0.35 * BATTERY <= len(held_out["battery"]) <= 0.65 * BATTERY
    assert "review: ranked on" in (tmp_path / "evals" / "r1.txt").read_text()
    # the rejected candidates were asked the ranking part only; the chosen and the incumbent both parts
    asked = len(ranking["golden"]) + len(ranking["battery"]) + 20
    assert client.calls.count("best") == client.calls.count("best~a25") == asked
    assert client.calls.count("best~a50") == client.calls.count("inc") == asked + len(held_out["golden"]) + len(
        held_out["battery"]) + 20
