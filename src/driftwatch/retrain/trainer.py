"""LoRA training with transformers + peft — the only module that imports torch (lazily, inside functions).

``train(spec)`` reads a dataset written by retrain/dataset.py (chat messages per line), trains a LoRA adapter with
the loss on assistant tokens only, evaluates on the validation split every ``eval_every`` steps, keeps the best
adapter and stops early after ``patience`` evaluations without improvement. It writes ``<output>/adapter/`` and,
last, ``<output>/manifest.json`` (status "succeeded"): a run without that manifest produced nothing to promote.

Runners start it as ``python -m driftwatch.retrain.trainer SPEC.json`` (the spec is a JSON of TrainSpec).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# peak dense bf16 FLOP/s by device name, for the MFU estimate (vendor data sheets)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}


@dataclass
class TrainSpec:
    base_model: str  # a local directory (transformers format)
    dataset: str  # a dataset directory: train.jsonl, validation.jsonl, manifest.json
    output: str  # where the adapter and the manifest go
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    learning_rate: float = 2e-4
    schedule: str = "linear"  # linear | cosine | constant
    warmup_ratio: float = 0.05
    epochs: float = 3.0
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    eval_every: int = 10  # optimizer steps
    patience: int = 3  # evaluations without improvement before stopping
    min_delta: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    price_per_gpu_hour: float = 0.0
    progress: bool = True
    init_adapter: str | None = None  # an adapter directory to continue from (its own r and modules), else a new one

    @classmethod
    def load(cls, path: Path) -> TrainSpec:
        return cls(**json.loads(Path(path).read_text()))


def _sha256_files(root: Path, patterns: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for pattern in patterns:
        for f in sorted(root.glob(pattern)):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


def _read(path: Path) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _encode(tokenizer, messages: list[dict], max_length: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels with the loss on the assistant's answer only (prompt tokens are -100)."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)
    full = tokenizer.apply_chat_template(messages, tokenize=True)
    prompt, full = list(getattr(prompt, "input_ids", prompt)), list(getattr(full, "input_ids", full))
    if full[:len(prompt)] != prompt:  # a template that renders the prompt differently inside the conversation
        raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
    full = full[:max_length]
    labels = [-100] * min(len(prompt), len(full)) + full[len(prompt):]
    return (full, labels) if any(t != -100 for t in labels) else None


def train(spec: TrainSpec) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    t0 = time.monotonic()
    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    cuda = torch.cuda.is_available() and spec.device in ("auto", "cuda")
    if spec.device == "cuda" and not cuda:
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32

    base, data, out = Path(spec.base_model), Path(spec.dataset), Path(spec.output)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device)
    model.config.use_cache = False
    if spec.init_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, spec.init_adapter, is_trainable=True)
    else:
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=spec.r, lora_alpha=spec.alpha,
                                                 lora_dropout=spec.dropout, target_modules=list(spec.target_modules)))
    total_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    train_set = [x for x in (_encode(tokenizer, m, spec.max_length) for m in _read(data / "train.jsonl")) if x]
    val_set = [x for x in (_encode(tokenizer, m, spec.max_length) for m in _read(data / "validation.jsonl")) if x]
    if not train_set or not val_set:
        raise ValueError(f"dataset {data}: {len(train_set)} train / {len(val_set)} validation examples after "
                         "tokenizing; both splits need at least one (early stopping needs a validation split)")

    def batches(rows, shuffle: bool, rng: random.Random):
        order = list(range(len(rows)))
        if shuffle:
            rng.shuffle(order)
        for i in range(0, len(order), spec.batch_size):
            chunk = [rows[j] for j in order[i:i + spec.batch_size]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for k, (x, y) in enumerate(chunk):
                ids[k, :len(x)], labels[k, :len(y)], mask[k, :len(x)] = torch.tensor(x), torch.tensor(y), 1
            yield ids.to(device), labels.to(device), mask.to(device)

    def loss_of(ids, labels, mask):  # mean over answer tokens, and how many there were
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        n = int((target != -100).sum())
        return loss, n

    def evaluate() -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for ids, labels, mask in batches(val_set, False, random.Random(0)):
                loss, n = loss_of(ids, labels, mask)
                total, count = total + float(loss), count + n
        model.train()
        return total / max(1, count)

    per_epoch = math.ceil(len(train_set) / spec.batch_size / spec.grad_accum)
    total_steps = spec.max_steps or max(1, math.ceil(per_epoch * spec.epochs))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate)
    scheduler = get_scheduler(spec.schedule, optimizer, num_warmup_steps=int(total_steps * spec.warmup_ratio),
                              num_training_steps=total_steps)
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    curves: dict[str, list] = {"train": [], "validation": [[0, evaluate()]]}
    best_loss, best_step, bad_evals, step, tokens_seen, early_stopped = curves["validation"][0][1], 0, 0, 0, 0, False
    model.save_pretrained(work / "best")  # step 0 (the adapter it starts from) until something beats it
    rng = random.Random(spec.seed)
    bar = _progress(total_steps, spec.progress)
    model.train()
    stream = iter(())
    step_s = 0.0  # time in training steps only (no evaluation, no checkpoints): for tokens/s and MFU
    while step < total_steps and not early_stopped:
        t_step = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step_loss, step_tokens = 0.0, 0
        micro = []
        for _ in range(spec.grad_accum):
            batch = next(stream, None)
            if batch is None:
                stream = batches(train_set, True, rng)
                batch = next(stream)
            micro.append(batch)
        answer_tokens = sum(int((b[1][:, 1:] != -100).sum()) for b in micro)
        for ids, labels, mask in micro:
            loss, n = loss_of(ids, labels, mask)
            (loss / max(1, answer_tokens)).backward()
            step_loss += float(loss.detach())
            step_tokens += n
            tokens_seen += int(mask.sum())
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        scheduler.step()
        if cuda:
            torch.cuda.synchronize()
        step_s += time.perf_counter() - t_step
        step += 1
        curves["train"].append([step, step_loss / max(1, step_tokens)])
        if step % spec.eval_every == 0 or step == total_steps:
            val = evaluate()
            curves["validation"].append([step, val])
            if val < best_loss - spec.min_delta:
                best_loss, best_step, bad_evals = val, step, 0
                model.save_pretrained(work / "best")
            else:
                bad_evals += 1
                early_stopped = bad_evals >= spec.patience
            bar.set_postfix(train=f"{curves['train'][-1][1]:.3f}", val=f"{val:.3f}", best=best_step)
        bar.update(1)
    bar.close()
    if cuda:
        torch.cuda.synchronize()
    wall = time.monotonic() - t0
    gpu_name = torch.cuda.get_device_name(0) if cuda else None
    peak = next((v for k, v in PEAK_BF16.items() if gpu_name and k in gpu_name), None)
    flops = 6.0 * total_params * tokens_seen  # forward + backward, dense estimate
    dataset_manifest = json.loads((data / "manifest.json").read_text()) if (data / "manifest.json").exists() else {}
    manifest = {
        "status": "succeeded",
        "base_model": {"path": str(base.resolve()), "name": getattr(model.config, "_name_or_path", str(base)),
                       "architecture": (model.config.architectures or ["?"])[0],
                       "sha256": _sha256_files(base, ("config.json", "*.safetensors", "*.bin"))},
        "dataset": {"path": str(data.resolve()), "version": dataset_manifest.get("version"),
                    "train_examples": len(train_set), "validation_examples": len(val_set)},
        "hyperparameters": {k: v for k, v in asdict(spec).items() if k not in ("base_model", "dataset", "output", "progress")}
        | ({"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,  # a warm start's: the adapter's own
            "target_modules": sorted(lora.target_modules)} if (lora := model.peft_config.get("default")) else {}),
        "parameters": {"total": total_params, "trainable": trainable},
        "curves": curves, "steps": step, "planned_steps": total_steps, "best_step": best_step,
        "best_validation_loss": best_loss, "initial_validation_loss": curves["validation"][0][1],
        "early_stopped": early_stopped, "tokens_seen": tokens_seen, "wall_s": wall, "train_step_s": step_s,
        "tokens_per_s": tokens_seen / step_s if step_s else None,  # while training (evaluation excluded)
        "device": str(device) + (f" ({gpu_name})" if gpu_name else ""), "dtype": str(dtype).replace("torch.", ""),
        "gpu_seconds": wall if cuda else 0.0,
        "cost": (wall / 3600 * spec.price_per_gpu_hour) if cuda else 0.0,
        "mfu": flops / step_s / peak if peak and step_s else None,
        "finished_at": time.time(),
    }
    shutil.rmtree(out / "adapter", ignore_errors=True)
    (work / "best").rename(out / "adapter")
    shutil.rmtree(work, ignore_errors=True)
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "manifest.json")  # last: its presence means the run succeeded
    return manifest


def _progress(total: int, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm comes with transformers; this is for a stripped environment
        enabled = False
    if not enabled:
        class _Quiet:
            def update(self, n): ...
            def set_postfix(self, **kw): ...
            def close(self): ...
        return _Quiet()
    return tqdm(total=total, desc="lora", unit="step", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m driftwatch.retrain.trainer SPEC.json", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    manifest = train(TrainSpec.load(Path(args[0])))
    print(json.dumps({k: manifest[k] for k in ("status", "steps", "best_step", "best_validation_loss", "wall_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
