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


def kl_to_base(base, adapter, dataset, source):
    """Mean KL(base || adapter) per answer token of one source's validation lines, computed apart from the trainer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    total, count = 0.0, 0
    for line in map(json.loads, (dataset / "validation.jsonl").read_text().splitlines()):
        if line.get("source") != source:
            continue
        prompt = len(tok.apply_chat_template(line["messages"][:-1], add_generation_prompt=True, tokenize=True)["input_ids"])
        ids = torch.tensor([tok.apply_chat_template(line["messages"], tokenize=True)["input_ids"]])
        with torch.no_grad():
            tuned = torch.log_softmax(model(input_ids=ids).logits[0, prompt - 1:-1], -1)
            with model.disable_adapter():
                ref = torch.log_softmax(model(input_ids=ids).logits[0, prompt - 1:-1], -1)
        total, count = total + float((ref.exp() * (ref - tuned)).sum()), count + len(ref)
    return total / count


def kl_dataset(path):
    """Task lines that pull the model to a new frame, and anchor lines (their own source) to keep where the base is."""
    rng = random.Random(1)
    rows = [({"messages": [{"role": "user", "content": f"Which word is {w}?"},
                           {"role": "assistant", "content": f"The word is {w}."}], "source": "correction"})
            for w in rng.choices(WORDS, k=48)]
    rows += [({"messages": [{"role": "user", "content": f"Say {a} {b}."}, {"role": "assistant", "content": f"{b} {a}"}],
               "source": "anchor"}) for a, b in zip(rng.choices(WORDS, k=48), rng.choices(WORDS, k=48))]
    rng.shuffle(rows)
    path.mkdir(parents=True, exist_ok=True)
    (path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:80]))
    (path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[80:]))
    return path


def test_kl_terms_vanish_against_an_identical_reference_and_grow_as_the_adapter_moves(tiny_model, tmp_path):
    """A new LoRA is the base (B = 0): every KL term is 0 and the loss is the cross-entropy alone; once the adapter
    moves, an anchor or replay line's loss grows by its weighted KL and a task line's does not."""
    import torch

    from driftwatch.retrain.trainer import _Fit, _model, _splits

    data = kl_dataset(tmp_path / "data")
    spec = TrainSpec(base_model=str(tiny_model), dataset=str(data), output=str(tmp_path / "o"), kl_anchor=2.0,
                     kl_replay=3.0, target_modules=ALL, dropout=0.0, progress=False)
    tok, model = _model(spec, torch.device("cpu"), torch.float32)
    rows = _splits(spec, tok)[0][:3]
    rows = [(ids, labels, g) for (ids, labels, _), g in zip(rows, ["task", "anchor", "replay"])]
    fit = _Fit(spec, model, tok.pad_token_id, torch.device("cpu"), tmp_path / "w")
    ids, labels, mask, groups = next(fit.batches(rows, False, random.Random(0)))
    with torch.no_grad():
        plain, _ = fit.line_losses(ids, labels, mask)
        same, _ = fit.line_losses(ids, labels, mask, groups)
        assert torch.allclose(plain, same, atol=1e-5)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
        moved, _ = fit.line_losses(ids, labels, mask)
        with_kl, counts = fit.line_losses(ids, labels, mask, groups)
    assert with_kl[0] == pytest.approx(float(moved[0]), rel=1e-5)  # the task line: no reference
    assert with_kl[1] > moved[1] and with_kl[2] > moved[2]  # the replay's reference is the base: no incumbent given


def test_a_kl_weight_on_the_anchors_keeps_them_on_the_base_distribution(tiny_model, tmp_path):
    data = kl_dataset(tmp_path / "data")
    kls = {}
    for weight in (0.0, 20.0):
        out = tmp_path / f"run-{weight}"
        m = train(TrainSpec(base_model=str(tiny_model), dataset=str(data), output=str(out), max_steps=20, batch_size=8,
                            learning_rate=1e-2, eval_every=20, target_modules=ALL, progress=False, kl_anchor=weight))
        assert m["best_step"] == 20  # trained: not the untouched step 0, whose KL is 0
        kls[weight] = kl_to_base(tiny_model, out / "adapter", data, "anchor")
    assert kls[20.0] < 0.5 * kls[0.0], kls


def test_the_replay_reference_is_the_frozen_incumbent_and_only_the_trained_adapter_is_saved(tiny_model, tmp_path):
    import torch

    from driftwatch.retrain.trainer import INCUMBENT, _Fit, _model, _splits

    data = kl_dataset(tmp_path / "data")
    incumbent = tmp_path / "incumbent"
    train(TrainSpec(base_model=str(tiny_model), dataset=str(data), output=str(incumbent), max_steps=5, batch_size=8,
                    learning_rate=1e-2, eval_every=5, target_modules=ALL, progress=False))
    spec = TrainSpec(base_model=str(tiny_model), dataset=str(data), output=str(tmp_path / "o"), kl_replay=1.0,
                     init_adapter=str(incumbent / "adapter"), incumbent_adapter=str(incumbent / "adapter"),
                     max_steps=3, eval_every=3, progress=False)
    tok, model = _model(spec, torch.device("cpu"), torch.float32)
    assert model.active_adapter == "default" and not any(p.requires_grad for n, p in model.named_parameters()
                                                         if INCUMBENT in n)
    fit = _Fit(spec, model, tok.pad_token_id, torch.device("cpu"), tmp_path / "w")
    rows = [(ids, labels, "replay") for ids, labels, _ in _splits(spec, tok)[0][:2]]
    ids, labels, mask, groups = next(fit.batches(rows, False, random.Random(0)))
    plain, _ = fit.line_losses(ids, labels, mask)
    warm, _ = fit.line_losses(ids, labels, mask, groups)  # warm-started from the incumbent: no distance yet
    assert torch.allclose(plain, warm, atol=1e-5) and warm.requires_grad
    assert any(p.requires_grad for n, p in model.named_parameters() if "lora_" in n and INCUMBENT not in n)
    m = train(spec)
    saved = sorted(p.name for p in (tmp_path / "o" / "adapter").iterdir())
    assert saved == ["README.md", "adapter_config.json", "adapter_model.safetensors"] and m["status"] == "succeeded"


def lora_deltas(adapter):
    """Each module's update B·A·(alpha/r), read from the saved files (not through peft)."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    weights = load_file(adapter / "adapter_model.safetensors")
    scale = cfg["lora_alpha"] / cfg["r"]
    return {k.replace(".lora_A.weight", ""): weights[k.replace("lora_A", "lora_B")] @ weights[k] * scale
            for k in weights if k.endswith("lora_A.weight")}, cfg["r"]


def test_a_run_offers_its_best_interpolated_toward_the_incumbent_and_an_earlier_checkpoint(tiny_model, tmp_path):
    """α·best + (1-α)·incumbent as one LoRA of the concatenated rank (peft's add_weighted_adapter "cat"): exact, up
    to float error; above max_rank it is an SVD truncation and says so; an earlier best checkpoint is offered too."""
    import torch

    data = kl_dataset(tmp_path / "data")
    common = dict(base_model=str(tiny_model), dataset=str(data), batch_size=8, learning_rate=1e-2, eval_every=3,
                  patience=100, target_modules=["q_proj", "v_proj"], progress=False)
    train(TrainSpec(output=str(tmp_path / "inc"), max_steps=4, **common))
    incumbent = tmp_path / "inc" / "adapter"
    m = train(TrainSpec(output=str(tmp_path / "cand"), max_steps=9, r=4, alpha=8, candidates=4, interpolate=[0.5, 0.25],
                        keep_checkpoints=1, incumbent_adapter=str(incumbent), max_rank=12, **common))
    offered = {c["name"]: c for c in m["candidates"]}
    assert [c["kind"] for c in m["candidates"]] == ["interpolation", "interpolation", "checkpoint"], offered
    assert list(offered)[:2] == ["a50", "a25"] and offered["a50"]["exact"] and offered["a50"]["rank"] == 4 + 8, offered
    run = tmp_path / "cand"
    assert json.loads((run / "manifest.json").read_text())["candidates"] == m["candidates"]
    best, _ = lora_deltas(run / "adapter")
    inc, _ = lora_deltas(incumbent)
    for name, alpha in (("a50", 0.5), ("a25", 0.25)):
        mixed, r = lora_deltas(run / "candidates" / name)
        assert r == 12 and set(mixed) == set(best)
        for k in best:
            assert torch.allclose(mixed[k], alpha * best[k] + (1 - alpha) * inc[k], atol=1e-6), (name, k)
    checkpoints = [c for c in m["candidates"] if c["kind"] == "checkpoint"]
    assert checkpoints and 0 < checkpoints[0]["step"] < m["best_step"]
    assert (run / "candidates" / checkpoints[0]["name"] / "adapter_model.safetensors").is_file()
    # above vLLM's --max-lora-rank: truncated by SVD to it, not exact
    m = train(TrainSpec(output=str(tmp_path / "svd"), max_steps=3, r=8, alpha=16, candidates=2, interpolate=[0.5],
                        incumbent_adapter=str(incumbent), max_rank=8, **common))
    assert m["best_step"] > 0 and m["candidates"][0]["exact"] is False and m["candidates"][0]["rank"] == 8
    assert lora_deltas(tmp_path / "svd" / "candidates" / "a50")[1] == 8
