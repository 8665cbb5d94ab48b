"""The data gates against crafted bad data, and the versioned, cluster-split dataset."""

import json
import random
from pathlib import Path

import pytest

import driftwatch
from driftwatch.errors import DataError, GateFailure
from driftwatch.evaluate.golden import GoldenItem, read_golden
from driftwatch.retrain.dataset import (
    Example, GateSettings, bad_target, clusters, curate, mask_pii, read_examples, write_dataset,
)

EXAMPLES = Path(driftwatch.__file__).parent / "defaults" / "examples"
TOPICS = [f"{verb} the {thing} {part}" for verb in ("reset", "update", "cancel", "renew") for thing in
          ("account", "router", "billing", "email", "vpn", "printer", "laptop") for part in ("password", "plan", "pin", "token")]
TEMPLATES = ["How do I {q}?", "Can you tell me how to {q}?", "What's the best way to {q}?", "Please explain how to {q}.",
             "I need to {q} - how?", "how can i {q}", "Steps to {q}?", "Could you help me {q}?",
             "Quick question: how to {q}?", "What is the way to {q}?"]


def good(n=120, source="correction", route="qa"):
    rng = random.Random(n)
    return [Example(f"Which warehouse ships item {i} of batch {rng.randrange(10**6)} to {city}?",
                    f"Item {i} ships from the {city} warehouse.", source, route)
            for i, city in enumerate(rng.choice(["Oslo", "Lima", "Pune", "Kyiv", "Reno"]) for _ in range(n))]


def gate(report, name):
    return next(g for g in report if g.name == name)


def test_clean_data_passes_every_gate_and_splits_by_cluster(tmp_path):
    cur = curate(good(), [GoldenItem("What is the capital of Peru?", "Lima")])
    assert all(g.passed for g in cur.report) and len(cur.report) == 8
    assert cur.counts["train"] + cur.counts["validation"] == 120 and cur.counts["validation"] > 0
    # near-duplicate variants of the same prompt never end up on both sides
    ids = clusters([e.prompt for e in cur.train + cur.validation])
    assert not set(ids[:len(cur.train)]) & set(ids[len(cur.train):])


def test_a_small_set_whose_hashes_draw_no_validation_example_still_gets_one():
    """Early stopping needs a validation split: 19 examples at 0.1 draw none 13 % of the time (a SmolLM2 demo run
    trained nothing for it). The lowest hash goes to validation; the split stays deterministic."""
    settings = GateSettings(validation_fraction=0.0001, min_unique_prompts=10)
    cur = curate(good(19), [], settings=settings)
    assert (cur.counts["train"], cur.counts["validation"]) == (18, 1)
    again = curate(good(19), [], settings=settings)
    assert again.validation == cur.validation
    default = curate(good(120), [])  # a set that draws validation examples by hash keeps exactly those
    assert 0 < default.counts["validation"] < 30


def test_the_rephrased_hundred_times_case_is_refused():
    """A team's "11,200 examples" that are 112 questions rephrased 10 ways, 10 times each."""
    data = [Example(t.format(q=q), f"Open settings, choose '{q}', confirm.", "replay", "qa")
            for q in TOPICS for t in TEMPLATES for _ in range(10)]
    with pytest.raises(GateFailure) as exc:
        curate(data, [], settings=GateSettings(replay_fraction=0.0))
    dup = gate(exc.value.report, "duplicate_share")
    assert not dup.passed and dup.value > 0.98 and "duplicate_share" in str(exc.value)
    assert gate(exc.value.report, "unique_prompts").value == pytest.approx(len(TOPICS), abs=3)  # 112 questions


def test_contradicting_labels_are_left_out_and_too_many_refuse():
    data = good(100)
    flips = [Example("Is the Oslo warehouse open on Sunday?", "Yes, from 10 to 16.", "correction"),
             Example("Is the Oslo warehouse open on Sundays?", "No, it is closed on Sundays.", "correction")]
    cur = curate(data + flips, [])
    assert cur.counts["contradicting_clusters"] == 1
    assert not any("Sunday" in e.prompt for e in cur.train + cur.validation)
    # slot variants are not contradictions: the answer differs where the prompt does
    slots = [Example(f"Extract the order id: my lamp from order ORD-{n} broke", f"ORD-{n}", "correction")
             for n in (1111, 2222, 3333)]
    assert curate(data + slots, []).counts["contradicting_clusters"] == 0
    many = [Example(f"Is warehouse {c} open on holiday {d}?", answer, "correction")
            for c in "ABCDEFGH" for d in range(2) for answer in ("Yes it is open all day.", "No, closed.")]
    with pytest.raises(GateFailure, match="contradictions"):
        curate(data + many, [])


def test_a_poisoned_harvest_is_judged_on_its_own_not_diluted_by_the_replay():
    """The efficacy study's poisoned harvest passed the data gates: 20 % contradicting corrections, shared with
    hundreds of replayed clusters, came to under the 5 % limit. The duplicate and contradiction shares are of what
    was harvested; the replay was judged when it was harvested."""
    harvest = good(100)
    flips = [Example(e.prompt, f"Item {i} is out of stock this week.", "correction", "qa")
             for i, e in enumerate(harvest[:20])]
    repeats = harvest[20:60]  # (this data is so uniform that a paraphrase is a length outlier)
    replay = [Example(e.prompt.replace("Which warehouse ships", "Which depot stocks"), e.target, "replay", "qa")
              for e in good(400)]
    replay += replay[:84]
    with pytest.raises(GateFailure) as exc:
        curate(harvest + flips + repeats + replay, [], settings=GateSettings(replay_fraction=0.5))
    contra = gate(exc.value.report, "contradictions")
    assert not contra.passed and contra.value == pytest.approx(20 / 100)  # was 20 / 500: 4 %, passed
    dup = gate(exc.value.report, "duplicate_share")
    assert dup.value == pytest.approx(40 / 160)  # the replay's own 84 repeats are not the harvest's duplicates
    assert "of 100 harvested" in contra.detail
    # the same replay with a clean harvest passes
    assert curate(harvest + replay, [], settings=GateSettings(replay_fraction=0.5)).counts["contradicting_clusters"] == 0


def test_a_trusted_correction_wins_over_a_replayed_answer():
    data = good(80) + [Example("Where is the returns desk?", "Gate 4, second floor.", "correction"),
                       Example("Can you tell me where the returns desk is?", "Gate 9.", "replay")]
    cur = curate(data, [], settings=GateSettings(replay_fraction=0.5))
    kept = [e for e in cur.train + cur.validation if "returns desk" in e.prompt]
    assert [(e.target, e.source) for e in kept] == [("Gate 4, second floor.", "correction")]
    assert cur.counts["contradicting_clusters"] == 0


def test_golden_prompts_are_never_trained_on_and_a_leaky_source_is_refused():
    golden = [GoldenItem(f"Which warehouse ships item {i} of the spring batch?", "Oslo") for i in range(60)]
    data = good(100) + [Example("which warehouse ships item 3 of the spring batch", "Oslo.", "correction")]
    cur = curate(data, golden)
    assert cur.counts["golden_leaked"] == 1 and not any("spring" in e.prompt for e in cur.train + cur.validation)
    leaky = good(100) + [Example(g.prompt, g.expected + ".", "replay") for g in golden[:10]]
    with pytest.raises(GateFailure, match="golden_leakage"):
        curate(leaky, golden)


@pytest.mark.parametrize("target, why", [("", "empty"), ("   ", "empty"), ("The refund is processed within the", "truncated"),
                                         ("Here is the code:\n```python\ndef f(", "truncated"), ("It ships from Oslo...", "truncated"),
                                         ("!!!! ###### $$$$ %%%%", "garbage"), ("aaaaaaaaaaaaaaaaaaa", "garbage"),
                                         ("Item 4 ships from Oslo", None), ("Paris", None), ("ORD-1234", None)])
def test_bad_targets(target, why):
    assert bad_target(target, 8000) == why


def test_bad_targets_and_length_outliers_are_removed_then_refused_above_the_bound():
    data = good(100) + [Example(f"What does code {i} mean?", "", "correction") for i in range(5)]
    data += [Example("Summarize the manual: " + "word " * 3000, "A long manual.", "replay", "qa")]  # an outlier of qa
    cur = curate(data, [], settings=GateSettings(replay_fraction=0.5))
    assert cur.counts["bad_empty"] == 5 and cur.counts["length_outliers"] == 1
    with pytest.raises(GateFailure, match="bad_targets"):
        curate(good(100) + [Example(f"What does code {i} mean?", "", "correction") for i in range(30)], [])


def test_a_route_whose_prompts_are_long_is_not_an_outlier_of_the_others():
    """Traffic drifts to summaries, whose prompts are long by nature: its corrections are what the retrain must learn,
    not outliers against the short replayed answers (lengths are judged per route)."""
    rng = random.Random(5)
    summaries = [Example(f"Summarize report {i}: " + " ".join(rng.choice(["revenue", "team", "quarter", "churn", "plan"])
                                                                for _ in range(400)), f"Summary: report {i}.",
                         "correction", "summarize") for i in range(30)]
    cur = curate(good(100, source="replay") + summaries, [], ("summarize",),
                 GateSettings(replay_fraction=0.5, min_unique_prompts=30))
    assert cur.counts["length_outliers"] == 0
    assert sum(e.route == "summarize" for e in cur.train + cur.validation) == 30


def test_pii_is_masked_or_refused():
    data = good(100) + [Example("My mail is jo.doe@example.com and phone +1 415 555 0134, order status?",
                                "We will write to jo.doe@example.com today.", "correction")]
    cur = curate(data, [])
    text = json.dumps([(e.prompt, e.target) for e in cur.train + cur.validation])
    assert "example.com" not in text and "555" not in text and "<EMAIL>" in text and "<PHONE>" in text
    assert cur.counts["pii_masked"] == 3
    with pytest.raises(GateFailure, match="pii"):
        curate(data, [], settings=GateSettings(pii="refuse"))
    assert mask_pii("call 030 1234 5678 or mail a@b.io") == ("call <PHONE> or mail <EMAIL>", 2)


def test_drifted_routes_must_be_covered():
    data = good(100) + [Example(f"Summarize ticket {i}: printer {i} jams.", f"Printer {i} jams.", "correction", "summarize")
                        for i in range(3)]
    with pytest.raises(GateFailure) as exc:
        curate(data, [], focus_routes=("summarize",))
    assert "too few for ['summarize']" in str(exc.value)
    assert curate(data, [], focus_routes=("qa",)).report


def test_same_inputs_same_version_and_retention(tmp_path):
    first = write_dataset(curate(good(), []), tmp_path, sources={"a": 1})
    again = write_dataset(curate(list(reversed(good())), []), tmp_path, sources={"a": 1})
    assert first == again  # content-addressed: the same examples give the same version, whatever their order
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["version"].startswith(first.name) and manifest["counts"]["train"] > 0
    assert {g["name"] for g in manifest["gates"]} >= {"duplicate_share", "golden_leakage", "pii"}
    lines = (first / "train.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["messages"][-1]["role"] == "assistant"
    other = write_dataset(curate(good(90), []), tmp_path, sources={}, retention_days=0)
    assert other.exists() and not first.exists()  # older datasets past the retention are deleted


def test_shipped_examples_follow_the_format_and_pass():
    base, golden = read_examples(EXAMPLES / "base.jsonl"), read_golden(EXAMPLES / "golden.jsonl")
    assert len(base) >= 200 and len(golden) >= 20
    cur = curate(base, golden, ("qa",))
    assert cur.counts["contradicting_clusters"] == 0 and cur.counts["train"] > 150


def test_malformed_files_name_the_line(tmp_path):
    bad = tmp_path / "base.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataError, match=r"base.jsonl:2: field 'response' must be a string \(missing\)"):
        read_examples(bad)
    bad.write_text("not json\n")
    with pytest.raises(DataError, match="base.jsonl:1: not JSON"):
        read_examples(bad)


def test_the_bad_target_and_outlier_shares_and_unique_prompts_count_the_harvest_not_the_replay():
    """Finding 6: a harvest with 40 % garbage targets passed beside a large replay, and 26 harvested prompts passed
    a minimum of 50."""
    replay = [Example(e.prompt.replace("Which warehouse ships", "Which depot stocks"), e.target, "replay", "qa")
              for e in good(1000)]
    garbage = [Example(f"What does error code {i} mean?", "#$%^&*()_+{}|:<>?~" * 3, "correction", "qa")
               for i in range(40)]
    with pytest.raises(GateFailure) as exc:
        curate(good(60) + garbage + replay, [], settings=GateSettings(replay_fraction=0.5))
    assert gate(exc.value.report, "bad_targets").value == pytest.approx(40 / 100)
    with pytest.raises(GateFailure) as exc:
        curate(good(26) + replay, [], settings=GateSettings(replay_fraction=0.5))
    assert gate(exc.value.report, "unique_prompts").value == 26


def test_the_split_keeps_every_variant_of_a_prompt_on_one_side():
    """Finding 7: the split was by each prompt's hash, so slot variants of one prompt cluster (kept one per distinct
    prompt) could land on both sides."""
    data = [Example(f"Extract the order id from ticket {t}: my lamp from order ORD-{t}{n} broke", f"ORD-{t}{n}",
                    "correction") for t in range(40) for n in (111, 222, 333)]
    cur = curate(data, [], settings=GateSettings(min_unique_prompts=10, validation_fraction=0.3))
    assert cur.counts["train"] + cur.counts["validation"] == 120 and cur.counts["validation"] > 0
    ids = clusters([e.prompt for e in cur.train + cur.validation])
    assert len(set(ids)) == 40  # 40 clusters of 3 variants each
    assert not set(ids[:len(cur.train)]) & set(ids[len(cur.train):])


def test_the_study_measures_what_is_served_after_the_loop_not_a_refused_candidate():
    """Issue 26: `recovered()` printed 113 % for a candidate the promotion gate refused, while production still served
    the incumbent (0 % recovered). What is served after a row is its adapter when promoted, else the incumbent."""
    from driftwatch.dev.efficacy import Accuracy, Row, recovered, served, table

    base = Row("base model", None, "baseline", "no adapter", Accuracy(10, 100), Accuracy(20, 100))
    inc = Row("no retrain (incumbent)", "v1", "baseline", "", Accuracy(10, 100), Accuracy(50, 100))
    refused = Row("loop", "v2", "refused by the promotion gate", "forgetting", Accuracy(60, 100), Accuracy(70, 100))
    rows = [base, inc, refused]
    assert served(rows, refused) is inc and recovered(rows) == 0.0
    assert recovered(rows, candidate=True) == pytest.approx(1.25)  # the candidate's own: labelled as such
    line = table(rows).splitlines()[-1]
    assert "| loop | the incumbent | 0.100 [" in line and "0.600 [" in line  # served first, the candidate's beside
    promoted = Row("loop", "v2", "promoted", "every gate passed", Accuracy(40, 100), Accuracy(50, 100))
    assert served([base, inc, promoted], promoted) is promoted and recovered([base, inc, promoted]) == pytest.approx(0.75)


def test_the_efficacy_goals_judge_what_is_served_and_fail_a_missed_requirement(tmp_path, capsys):
    """bench/efficacy_goals.py (make efficacy's verdict): a refused candidate recovers nothing, however good it was;
    the requirement is 2 of seeds 0-2 promoted with 50 % recovered on the routing shift, no poisoned promotion."""
    import importlib.util
    import json

    from driftwatch.dev.efficacy import Accuracy, Row, as_json

    spec = importlib.util.spec_from_file_location("efficacy_goals", Path(__file__).parents[2] / "bench" /
                                                  "efficacy_goals.py")
    goals = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(goals)

    def run(seed, decision, phase_b, shift="queues", poisoned="refused by the data gates"):
        rows = [Row("base model", None, "baseline", "", Accuracy(0, 100), Accuracy(0, 100), {"battery_score": 0.5}),
                Row("no retrain (incumbent)", "v1", "baseline", "", Accuracy(10, 100), Accuracy(60, 100)),
                Row("loop", "v2", decision, "why", Accuracy(phase_b, 100), Accuracy(60, 100), {"battery_score": 0.5}),
                Row("poisoned, gates off", "v3", poisoned, "")]
        path = tmp_path / f"{shift}-{seed}.json"
        path.write_text(json.dumps({"seed": seed, "shift": shift, "rows": as_json(rows)}))
        return str(path)

    met = [run(0, "promoted", 40), run(1, "promoted", 36), run(2, "refused by the promotion gate", 90)]
    assert goals.main(met) == 0 and "on 2 of 3 seeds" in capsys.readouterr().out
    missed = [run(0, "promoted", 40), run(1, "refused by the promotion gate", 90), run(2, "promoted", 20)]
    assert goals.main(missed) == 1  # 20 % recovered is not enough; the refused 90 % counts as 0
    poisoned = [run(0, "promoted", 40), run(1, "promoted", 40, poisoned="promoted")]
    capsys.readouterr()
    assert goals.main(poisoned) == 1
    out = capsys.readouterr().out
    assert "poisoned harvests promoted: ['poisoned, gates off']" in out and "MISSED" in out


def test_a_training_line_is_the_request_as_served():
    """A chat keeps its roles and earlier turns, a completion its raw prompt (no chat template), an example without
    its served request (a file's, or harvested before it was kept) is a single-turn chat; PII is masked in all."""
    from driftwatch.retrain.dataset import _line, _mask_served

    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Mail bob@example.com?"}]
    chat = Example("Be brief.\nHi\nMail bob@example.com?", "Done.", "correction", "qa", None, "r1",
                   json.dumps({"messages": turns}))
    assert json.loads(_line(chat))["messages"] == [*turns, {"role": "assistant", "content": "Done."}]
    completion = Example("Q: 2+2\nA:", " 4", "correction", "qa", None, "r2", json.dumps({"prompt": "Q: 2+2\nA:"}))
    assert {k: v for k, v in json.loads(_line(completion)).items() if k in ("prompt", "completion", "messages")} == {
        "prompt": "Q: 2+2\nA:", "completion": " 4"}
    legacy = Example("Hi", "Hello.", "correction", "qa", "Be brief.", "r3")
    assert json.loads(_line(legacy))["messages"] == [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "Hi"},
                                                     {"role": "assistant", "content": "Hello."}]
    assert "bob@example.com" not in _mask_served(chat.served) and "<EMAIL>" in _mask_served(chat.served)
