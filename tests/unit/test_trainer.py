"""Real LoRA training of a tiny Llama built in the session (seconds on CPU)."""

import json
import random

import pytest

from driftwatch.retrain.trainer import TrainSpec, train

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


def write(path, rows):
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]})
                            + "\n" for p, a in rows))


@pytest.fixture
def learnable(tmp_path):
    """A task with a rule to learn: the answer repeats a word of the question in a fixed frame."""
    rng = random.Random(0)
    rows = [(f"Which word is {w}?", f"The word is {w}.") for w in rng.choices(WORDS, k=120)]
    write(tmp_path / "train.jsonl", rows[:100])
    write(tmp_path / "validation.jsonl", rows[100:])
    (tmp_path / "manifest.json").write_text(json.dumps({"version": "abc123"}))
    return tmp_path


def evaluate_adapter(base, adapter, dataset):
    """Validation loss of a saved adapter, computed independently of the trainer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    total, count = 0.0, 0
    for line in (dataset / "validation.jsonl").read_text().splitlines():
        msgs = json.loads(line)["messages"]
        prompt = list(tok.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=True)["input_ids"])
        full = list(tok.apply_chat_template(msgs, tokenize=True)["input_ids"])
        ids = torch.tensor([full])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1]
        target = torch.tensor(full[1:])
        losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")[len(prompt) - 1:]
        total, count = total + float(losses.sum()), count + len(losses)
    return total / count


def test_lora_learns_and_writes_adapter_and_manifest(tiny_model, learnable, tmp_path):
    out = tmp_path / "run"
    m = train(TrainSpec(base_model=str(tiny_model), dataset=str(learnable), output=str(out), epochs=4, batch_size=10,
                        learning_rate=5e-3, eval_every=5, warmup_ratio=0.1, progress=False, price_per_gpu_hour=3.0,
                        r=16, alpha=32, target_modules=ALL))
    assert m["status"] == "succeeded" and m["best_validation_loss"] < 0.5 * m["initial_validation_loss"], m["curves"]
    assert (out / "adapter" / "adapter_config.json").exists() and not (out / ".work").exists()
    assert m["dataset"]["version"] == "abc123" and m["base_model"]["architecture"] == "LlamaForCausalLM"
    assert len(m["base_model"]["sha256"]) == 64
    assert m["tokens_seen"] > 100 * 4 * 10 and m["device"] == "cpu" and m["dtype"] == "float32"
    assert m["gpu_seconds"] == 0.0 and m["cost"] == 0.0  # CPU: no GPU time billed
    assert m["parameters"]["trainable"] < 0.2 * m["parameters"]["total"] and m["hyperparameters"]["r"] == 16
    assert m["curves"]["validation"][0][0] == 0 and len(m["curves"]["train"]) == m["steps"] == 40
    # the adapter on disk is the best checkpoint: its loss, measured independently, is the manifest's best
    assert evaluate_adapter(tiny_model, out / "adapter", learnable) == pytest.approx(m["best_validation_loss"], rel=1e-4)


def test_early_stopping_on_a_crafted_overfitting_case(tiny_model, tmp_path):
    """Eight examples with random answers: the training loss keeps falling, validation stops improving."""
    rng = random.Random(1)
    data = tmp_path / "data"
    data.mkdir()
    write(data / "train.jsonl", [(f"Code word for ticket {i}?", " ".join(rng.choices(WORDS, k=6))) for i in range(8)])
    write(data / "validation.jsonl", [(f"Code word for ticket {i}?", " ".join(rng.choices(WORDS, k=6))) for i in range(100, 108)])
    m = train(TrainSpec(base_model=str(tiny_model), dataset=str(data), output=str(tmp_path / "run"), max_steps=300,
                        eval_every=5, patience=3, min_delta=0.02, learning_rate=5e-3, r=16, alpha=32, warmup_ratio=0,
                        target_modules=ALL, progress=False))
    assert m["early_stopped"] and m["steps"] < 300
    assert m["best_step"] == m["steps"] - 3 * 5  # three evaluations without improvement after the best
    assert m["curves"]["train"][-1][1] < m["best_validation_loss"] - 1.0  # memorising: train far below validation


def test_a_dataset_without_validation_is_refused(tiny_model, tmp_path):
    write(tmp_path / "train.jsonl", [("a?", "b.")])
    (tmp_path / "validation.jsonl").write_text("")
    with pytest.raises(ValueError, match="early stopping needs a validation split"):
        train(TrainSpec(base_model=str(tiny_model), dataset=str(tmp_path), output=str(tmp_path / "o"), progress=False))


def test_validation_loss_per_token_or_per_example_and_per_source():
    """Issue 26: per token, a 170-character anchor answer outweighed an 8-character queue name ~20 times, so the
    validation loss (and early stopping) watched the anchors, not the task."""
    from driftwatch.retrain.trainer import aggregate

    sums, counts, groups = [2.0, 40.0, 1.0], [2, 40, 1], ["task", "anchor", "task"]  # mean 1.0 / token everywhere
    assert aggregate(sums, counts, groups, "token") == {"all": 1.0, "anchor": 1.0, "task": 1.0}
    sums = [4.0, 40.0, 2.0]  # the task lines lose 2.0 a token, the long anchor 1.0
    token, example = aggregate(sums, counts, groups, "token"), aggregate(sums, counts, groups, "example")
    assert token["all"] == pytest.approx(46 / 43) and example["all"] == pytest.approx(5 / 3)
    assert token["task"] == example["task"] == 2.0 and token["anchor"] == example["anchor"] == 1.0
    assert aggregate([0.0], [0], ["task"], "example") == {}  # a line with no answer tokens weighs nothing


def test_a_checkpoint_is_chosen_by_the_task_loss_while_the_anchors_hold():
    from driftwatch.retrain.trainer import selection

    first = {"all": 1.0, "task": 2.0, "anchor": 0.5}
    assert selection({"all": 0.9, "task": 1.0, "anchor": 0.52}, first, "all", 0.1) == 0.9
    assert selection({"all": 0.9, "task": 1.0, "anchor": 0.52}, first, "task", 0.1) == 1.0
    assert selection({"all": 0.9, "task": 0.8, "anchor": 0.6}, first, "task", 0.1) == float("inf")  # anchors forgot
    assert selection({"all": 0.9, "task": 0.8, "anchor": 0.6}, first, "task", None) == 0.8
    assert selection({"all": 0.9, "anchor": 0.6}, first, "task", 0.1) == 0.9  # no task lines: the whole split


def test_the_manifest_carries_the_validation_loss_of_each_source(tiny_model, tmp_path):
    rows = [(f"Which word is {w}?", f"The word is {w}.") for w in WORDS]
    for name, part in (("train.jsonl", rows[:12]), ("validation.jsonl", rows[12:])):
        (tmp_path / name).write_text("".join(json.dumps({
            "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}],
            "source": ["correction", "replay", "anchor", "positive"][i % 4]}) + "\n" for i, (p, a) in enumerate(part)))
    m = train(TrainSpec(base_model=str(tiny_model), dataset=str(tmp_path), output=str(tmp_path / "run"), max_steps=4,
                        eval_every=2, batch_size=4, progress=False, loss_per="example", select_by="task",
                        anchor_max_rise=10.0))
    by_source = m["curves"]["validation_by_source"]
    assert [step for step, _ in by_source] == [0, 2, 4] and set(by_source[0][1]) == {"all", "task", "replay", "anchor"}
    assert m["initial_validation_loss"] == by_source[0][1]["task"]  # chosen by the task's loss
    assert m["hyperparameters"]["loss_per"] == "example" and m["steps"] == 4


def test_training_renders_a_completion_raw_and_a_chat_through_the_template(tiny_model, tmp_path):
    """What the server saw, token for token (tests/integration/test_evaluate.py checks it against vLLM's /tokenize):
    a completion's prompt with the tokenizer's special tokens, its answer then EOS; a chat through the template, or
    through retrain.chat_template when vLLM serves with --chat-template."""
    from transformers import AutoTokenizer

    from driftwatch.retrain.trainer import _encode, prompt_ids

    tok = AutoTokenizer.from_pretrained(tiny_model)
    completion = {"prompt": "Q: alpha\nA:", "completion": " bravo"}
    ids, labels = _encode(tok, completion, 512)
    prompt = list(tok("Q: alpha\nA:")["input_ids"])
    assert prompt_ids(tok, completion) == prompt and ids[:len(prompt)] == prompt and ids[-1] == tok.eos_token_id
    assert labels[:len(prompt)] == [-100] * len(prompt) and labels[len(prompt):] == ids[len(prompt):]
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "alpha?"},
                         {"role": "assistant", "content": "bravo."}]}
    rendered = list(tok.apply_chat_template(chat["messages"][:-1], add_generation_prompt=True, tokenize=True)["input_ids"])
    assert prompt_ids(tok, chat) == rendered
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    assert prompt_ids(tok, chat) != rendered  # another template, another input: retrain.chat_template must match vLLM's
