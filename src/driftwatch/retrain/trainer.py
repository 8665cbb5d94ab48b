"""LoRA training with transformers + peft — the only module that imports torch (lazily, inside functions).

``train(spec)`` reads a dataset written by retrain/dataset.py (a chat's messages, or a completion's prompt and
completion, per line), renders each as vLLM does when serving it (:func:`prompt_ids`), trains a LoRA adapter with
the loss on the answer's tokens only (an anchor or replay line's with, when weighted, its KL to the base model or
the incumbent), evaluates on the validation split every ``eval_every`` steps, keeps the best
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
    loss_per: str = "token"  # token | example: how answer tokens are weighed, in training and validation
    select_by: str = "all"  # all | task: the validation loss the best checkpoint is chosen by (see selection)
    anchor_max_rise: float | None = None  # with select_by task: the anchors' loss may rise this share above step 0
    chat_template: str | None = None  # a Jinja file: the template vLLM serves with, when not the base model's own
    kl_anchor: float = 4.0  # weight of KL(base || tuned) on the anchor lines' answer tokens (the base: adapter disabled)
    kl_replay: float = 0.0  # weight of KL(incumbent || tuned) on the replay lines' answer tokens
    incumbent_adapter: str | None = None  # the adapter served now, frozen: replay's reference (None: the base serves)
    candidates: int = 1  # adapters the run offers the gate's review: the best checkpoint, then interpolations, then
    interpolate: list[float] = field(default_factory=lambda: [0.75, 0.5, 0.25])  # α: α·best + (1-α)·incumbent
    keep_checkpoints: int = 1  # earlier best checkpoints offered too, after the interpolations
    max_rank: int = 32  # vLLM's --max-lora-rank: an interpolation of a larger concatenated rank is SVD-truncated

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


INCUMBENT = "incumbent"  # the frozen incumbent's adapter name, beside the trained one ("default")
TASK = "task"  # a dataset line's group when harvested (correction, positive) or unnamed; else its source


def _read(path: Path) -> list[tuple[dict, str]]:
    """(line, group) per line: ``replay`` and ``anchor`` lines are their own groups, every other line the task."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            rows.append((obj, obj.get("source") if obj.get("source") in ("replay", "anchor") else TASK))
    return rows


def prompt_ids(tokenizer, line: dict) -> list[int]:
    """The prompt's token ids as vLLM tokenizes the request: a completion's prompt with the tokenizer's special tokens
    (BOS); a chat's messages through the chat template, with the generation prompt."""
    if "prompt" in line:
        return list(tokenizer(line["prompt"])["input_ids"])
    ids = tokenizer.apply_chat_template(line["messages"][:-1], add_generation_prompt=True, tokenize=True)
    return list(getattr(ids, "input_ids", ids))


def _encode(tokenizer, line: dict, max_length: int) -> tuple[list[int], list[int]] | None:
    """Token ids and labels with the loss on the answer only (prompt tokens are -100): a completion's text and EOS
    after its prompt, or a chat's last assistant turn as the template renders it."""
    prompt = prompt_ids(tokenizer, line)
    if "prompt" in line:
        full = prompt + list(tokenizer(line["completion"], add_special_tokens=False)["input_ids"]) + [
            tokenizer.eos_token_id]
    else:
        ids = tokenizer.apply_chat_template(line["messages"], tokenize=True)
        full = list(getattr(ids, "input_ids", ids))
        if full[:len(prompt)] != prompt:  # a template that renders the prompt differently inside the conversation
            raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
    full = full[:max_length]
    labels = [-100] * min(len(prompt), len(full)) + full[len(prompt):]
    return (full, labels) if any(t != -100 for t in labels) else None


def aggregate(sums: list[float], counts: list[int], groups: list[str], per: str) -> dict[str, float]:
    """Validation losses from each line's summed answer-token loss and its token count: ``all`` and one per group.
    ``per`` token: every answer token weighs the same (a 170-character anchor outweighs an 8-character label ~20
    times); per example: every line does."""
    out: dict[str, float] = {}
    for group in ["all", *sorted(set(groups))]:
        rows = [(s, n) for s, n, g in zip(sums, counts, groups) if group in ("all", g) and n]
        if rows:
            out[group] = (sum(s for s, _ in rows) / sum(n for _, n in rows) if per == "token"
                          else sum(s / n for s, n in rows) / len(rows))
    return out


def selection(val: dict[str, float], first: dict[str, float], by: str, anchor_max_rise: float | None) -> float:
    """The loss a checkpoint is chosen (and early stopping decided) by: ``all``, or with ``by`` task the task's, where
    a checkpoint whose anchor loss rose more than ``anchor_max_rise`` (a share) above its step-0 value is not a
    candidate (inf)."""
    if by != TASK or TASK not in val:
        return val["all"]
    if anchor_max_rise is not None and "anchor" in val and val["anchor"] > first["anchor"] * (1 + anchor_max_rise):
        return math.inf
    return val[TASK]


def train(spec: TrainSpec) -> dict:
    """Set up, encode the splits, fit with early stopping, describe, publish: a run's steps."""
    t0 = time.monotonic()
    device, dtype = _device(spec)
    tokenizer, model = _model(spec, device, dtype)
    train_set, val_set = _splits(spec, tokenizer)
    out = Path(spec.output)
    fit = _Fit(spec, model, tokenizer.pad_token_id, device, out / ".work").run(train_set, val_set)
    offered = _candidates(spec, model, fit, out / ".work")
    manifest = _manifest(spec, model, fit, device, dtype, len(train_set), len(val_set), time.monotonic() - t0)
    _publish(out, manifest | {"candidates": offered})
    return manifest | {"candidates": offered}


def _device(spec: TrainSpec):
    import torch

    random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    cuda = torch.cuda.is_available() and spec.device in ("auto", "cuda")
    if spec.device == "cuda" and not cuda:
        raise RuntimeError("device 'cuda' asked for, but torch sees no CUDA device")
    device = torch.device("cuda" if cuda else "cpu")
    return device, torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32


def _model(spec: TrainSpec, device, dtype):
    """The tokenizer, and the base model with a new LoRA (or the adapter it continues from) on ``device``."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = Path(spec.base_model)
    tokenizer = load_tokenizer(base, spec.chat_template)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device)
    model.config.use_cache = False
    if spec.init_adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, spec.init_adapter, is_trainable=True)
    else:
        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=spec.r, lora_alpha=spec.alpha,
                                                 lora_dropout=spec.dropout, target_modules=list(spec.target_modules)))
    if spec.kl_replay and spec.incumbent_adapter:  # a second, frozen adapter: the replay's reference distribution
        model.load_adapter(spec.incumbent_adapter, adapter_name=INCUMBENT, is_trainable=False)
        model.set_adapter("default")
    return tokenizer, model


def load_tokenizer(base: Path, chat_template: str | None = None):
    """The base model's tokenizer, with the chat template vLLM serves with (its --chat-template) when given."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if chat_template:
        tokenizer.chat_template = Path(chat_template).read_text(encoding="utf-8")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _splits(spec: TrainSpec, tokenizer) -> tuple[list[tuple], list[tuple]]:
    """Both splits as (ids, labels, group); each needs a line (early stopping needs a validation split)."""
    data = Path(spec.dataset)

    def encoded(name: str) -> list[tuple]:
        rows = ((_encode(tokenizer, m, spec.max_length), g) for m, g in _read(data / name))
        return [(*x, g) for x, g in rows if x]

    train_set, val_set = encoded("train.jsonl"), encoded("validation.jsonl")
    if not train_set or not val_set:
        raise ValueError(f"dataset {data}: {len(train_set)} train / {len(val_set)} validation examples after "
                         "tokenizing; both splits need at least one (early stopping needs a validation split)")
    return train_set, val_set


@dataclass
class _Result:
    curves: dict
    steps: int
    planned_steps: int
    best_step: int
    best_loss: float
    initial_loss: float
    early_stopped: bool
    tokens_seen: int
    step_s: float  # time in training steps only (no evaluation, no checkpoints): for tokens/s and MFU


class _Fit:
    """The training loop: steps of ``grad_accum`` micro-batches, an evaluation every ``eval_every`` steps, the best
    checkpoint (by :func:`selection`) saved to ``<work>/best``, early stopping after ``patience`` evaluations
    without improvement."""

    def __init__(self, spec: TrainSpec, model, pad_id: int, device, work: Path) -> None:
        self.spec, self.model, self.pad_id, self.device, self.work = spec, model, pad_id, device, work
        self.cuda, self.best_step = device.type == "cuda", 0

    def batches(self, rows, shuffle: bool, rng: random.Random):
        import torch

        order = list(range(len(rows)))
        if shuffle:
            rng.shuffle(order)
        for i in range(0, len(order), self.spec.batch_size):
            chunk = [rows[j] for j in order[i:i + self.spec.batch_size]]
            width = max(len(ids) for ids, _, _ in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for k, (x, y, _) in enumerate(chunk):
                ids[k, :len(x)], labels[k, :len(y)], mask[k, :len(x)] = torch.tensor(x), torch.tensor(y), 1
            yield ids.to(self.device), labels.to(self.device), mask.to(self.device), [g for _, _, g in chunk]

    def line_losses(self, ids, labels, mask, groups: list[str] | None = None):
        """Each line's summed answer-token loss (a tensor) and its answer-token count. With ``groups`` (training), an
        anchor or replay line's loss adds its weighted KL to its reference (:meth:`references`)."""
        import torch

        target = labels[:, 1:]
        refs = self.references(ids, mask, target, groups) if groups else []  # first: they toggle adapters
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=-100,
                                                 reduction="none")
        sums = loss.sum(dim=1)
        for at, weight, log_p in refs:  # at: (batch, position) of each of those lines' answer tokens
            log_q = torch.log_softmax(logits[at].float(), -1)
            per_token = (log_p.exp() * (log_p - log_q)).sum(-1)  # KL(reference || tuned) at each answer token
            sums = sums.index_add(0, at.nonzero()[:, 0], weight * per_token)
        return sums, (target != -100).sum(dim=1)

    def references(self, ids, mask, target, groups: list[str]) -> list[tuple]:
        """(where, weight, reference log-probabilities at the answer tokens there) for a batch's anchor lines (the
        base model: the adapter disabled, peft's ``disable_adapter``) and its replay lines (the incumbent: its frozen
        adapter, or the base when none serves; not the base when one does, which scores 0 on the traffic it was
        trained for). Only the answer positions are kept: a vocabulary-wide copy of every position is not."""
        import torch

        out, training = [], self.model.training
        self.model.eval()  # no dropout in a reference
        try:
            for group, weight in (("anchor", self.spec.kl_anchor), ("replay", self.spec.kl_replay)):
                rows = [k for k, g in enumerate(groups) if g == group]
                if not weight or not rows:
                    continue
                picked = torch.zeros(len(groups), dtype=torch.bool, device=ids.device)
                picked[rows] = True
                at = picked[:, None] & (target != -100)
                idx = torch.tensor(rows, device=ids.device)
                with torch.no_grad():
                    if group == "replay" and self.spec.incumbent_adapter:
                        self.model.set_adapter(INCUMBENT, inference_mode=True)
                        try:
                            ref = self.model(input_ids=ids[idx], attention_mask=mask[idx]).logits[:, :-1]
                        finally:
                            self.model.set_adapter("default")  # trainable again
                    else:
                        with self.model.disable_adapter():
                            ref = self.model(input_ids=ids[idx], attention_mask=mask[idx]).logits[:, :-1]
                    out.append((at, weight, torch.log_softmax(ref[at[idx]].float(), -1)))
        finally:
            self.model.train(training)
        return out

    def evaluate(self, val_set) -> dict[str, float]:
        import torch

        self.model.eval()
        sums, counts, groups = [], [], []
        with torch.no_grad():
            for ids, labels, mask, g in self.batches(val_set, False, random.Random(0)):
                s, n = self.line_losses(ids, labels, mask)
                sums += s.tolist()
                counts += n.tolist()
                groups += g
        self.model.train()
        return aggregate(sums, counts, groups, self.spec.loss_per)

    def step(self, micro) -> tuple[float, int]:
        """One optimizer step over ``micro``: the loss (with its KL terms) per answer token (or per line, ``loss_per``
        example) of the whole step, back-propagated; returns the step's loss and how many tokens it saw."""
        import torch

        lines = sum(len(b[3]) for b in micro)
        answer_tokens = sum(int((b[1][:, 1:] != -100).sum()) for b in micro)
        step_loss, tokens = 0.0, 0
        for ids, labels, mask, groups in micro:
            sums, counts = self.line_losses(ids, labels, mask, groups)
            if self.spec.loss_per == "token":
                loss = sums.sum() / max(1, answer_tokens)
            else:
                loss = (sums / counts.clamp(min=1)).sum() / max(1, lines)
            loss.backward()
            step_loss += float(loss.detach())
            tokens += int(mask.sum())
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        return step_loss, tokens

    def save_best(self, step: int) -> None:
        """The new best checkpoint; the one it replaces is kept as ``step-<n>`` while ``keep_checkpoints`` allow."""
        best = self.work / "best"
        if best.exists() and self.best_step > 0 and self.spec.candidates > 1 and self.spec.keep_checkpoints:
            kept = sorted(self.work.glob("step-*"), key=lambda d: int(d.name[5:]))
            for old in kept[:max(0, len(kept) - self.spec.keep_checkpoints + 1)]:
                shutil.rmtree(old)
            best.rename(self.work / f"step-{self.best_step}")
        else:
            shutil.rmtree(best, ignore_errors=True)
        self.model.save_pretrained(best, selected_adapters=["default"])  # not the frozen incumbent
        self.best_step = step

    def run(self, train_set, val_set) -> _Result:
        import torch
        from transformers import get_scheduler

        spec, model = self.spec, self.model
        per_epoch = math.ceil(len(train_set) / spec.batch_size / spec.grad_accum)
        total_steps = spec.max_steps or max(1, math.ceil(per_epoch * spec.epochs))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.learning_rate)
        scheduler = get_scheduler(spec.schedule, optimizer, num_warmup_steps=int(total_steps * spec.warmup_ratio),
                                  num_training_steps=total_steps)
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        first = self.evaluate(val_set)
        if spec.select_by == TASK and spec.anchor_max_rise is not None and "anchor" not in first:
            print("anchor_max_rise: no validation line has source 'anchor' (anchor files written before anchors had "
                  "their own source replay as 'replay'): the anchors are not guarded", file=sys.stderr)
        pick = lambda val: selection(val, first, spec.select_by, spec.anchor_max_rise)  # noqa: E731
        curves: dict[str, list] = {"train": [], "validation": [[0, pick(first)]], "validation_by_source": [[0, first]]}
        best_loss = initial = pick(first)
        best_step, bad_evals, step, tokens_seen, early_stopped, step_s = 0, 0, 0, 0, False, 0.0
        self.save_best(0)  # step 0 (the adapter it starts from) until something beats it
        rng = random.Random(spec.seed)
        bar = _progress(total_steps, spec.progress)
        model.train()
        stream = iter(())
        while step < total_steps and not early_stopped:
            t_step = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            micro = []
            for _ in range(spec.grad_accum):
                batch = next(stream, None)
                if batch is None:
                    stream = self.batches(train_set, True, rng)
                    batch = next(stream)
                micro.append(batch)
            step_loss, tokens = self.step(micro)
            optimizer.step()
            scheduler.step()
            if self.cuda:
                torch.cuda.synchronize()
            step_s += time.perf_counter() - t_step
            step, tokens_seen = step + 1, tokens_seen + tokens
            curves["train"].append([step, step_loss])
            if step % spec.eval_every == 0 or step == total_steps:
                val = self.evaluate(val_set)
                loss = pick(val)
                curves["validation"].append([step, loss if math.isfinite(loss) else None])  # None: not a candidate
                curves["validation_by_source"].append([step, val])
                if loss < best_loss - spec.min_delta:
                    best_loss, best_step, bad_evals = loss, step, 0
                    self.save_best(step)
                else:
                    bad_evals += 1
                    early_stopped = bad_evals >= spec.patience
                bar.set_postfix(train=f"{step_loss:.3f}", val=f"{loss:.3f}", best=best_step)
            bar.update(1)
        bar.close()
        if self.cuda:
            torch.cuda.synchronize()
        return _Result(curves, step, total_steps, best_step, best_loss, initial, early_stopped, tokens_seen, step_s)


def _candidates(spec: TrainSpec, model, fit: _Result, work: Path) -> list[dict]:
    """What the run offers the gate besides its best checkpoint (``<work>/best``), at most ``candidates - 1``, each in
    ``<work>/candidates/<name>``: the best interpolated toward the incumbent (``a<α·100>``: α·best + (1-α)·incumbent,
    the base model's 0 when none serves), then the earlier best checkpoints kept (``step-<n>``), latest first. No
    candidate when the run never beat its start (step 0 is the adapter it started from)."""
    if spec.candidates <= 1 or fit.best_step == 0:
        return []
    offered: list[dict] = []
    for alpha in sorted(spec.interpolate, reverse=True)[:spec.candidates - 1]:
        try:
            offered.append(interpolate(model, work / "best", spec.incumbent_adapter, alpha, work / "candidates",
                                       f"a{round(alpha * 100)}", spec.max_rank))
        except Exception as exc:  # noqa: BLE001 - the run's best is still good: it is offered without this one
            print(f"interpolation at α {alpha} left out: {type(exc).__name__}: {exc}", file=sys.stderr)
            for name in (f"a{round(alpha * 100)}", "best", "toward"):
                if name in model.peft_config:
                    model.delete_adapter(name)
    kept = [d for d in sorted(work.glob("step-*"), key=lambda d: -int(d.name[5:]))
            if int(d.name[5:]) > 0]  # step 0 is the adapter it started from: never a candidate
    for d in kept[:spec.candidates - 1 - len(offered)]:
        (work / "candidates").mkdir(exist_ok=True)
        d.rename(work / "candidates" / d.name)
        offered.append({"name": d.name, "kind": "checkpoint", "step": int(d.name[5:])})
    return offered


def interpolate(model, best: Path, incumbent: str | None, alpha: float, out: Path, name: str, max_rank: int) -> dict:
    """α·best + (1-α)·incumbent as one LoRA in ``out/name`` (weight interpolation, model averaging in arXiv
    2309.06256; a LoRA's update is linear in B·A, so the sum is exact as a LoRA of the concatenated rank: peft's
    ``add_weighted_adapter(combination_type="cat")``). Above ``max_rank`` (vLLM's --max-lora-rank) it is truncated
    by SVD to that rank, and says so. Without an incumbent (the base model serves) it is α·best."""
    names, weights = ["best"], [alpha]
    model.load_adapter(str(best), adapter_name="best")
    if incumbent:
        model.load_adapter(incumbent, adapter_name="toward")
        names, weights = ["best", "toward"], [alpha, 1 - alpha]
    rank = sum(model.peft_config[n].r for n in names)
    exact = rank <= max_rank
    model.add_weighted_adapter(names, weights, name, combination_type="cat" if exact else "svd",
                               **({} if exact else {"svd_rank": max_rank}))
    model.save_pretrained(out, selected_adapters=[name])  # peft writes a named adapter to out/name
    for n in (name, *names):
        model.delete_adapter(n)
    return {"name": name, "kind": "interpolation", "alpha": alpha, "rank": min(rank, max_rank), "exact": exact,
            "toward": "incumbent" if incumbent else "base model"}


def _manifest(spec: TrainSpec, model, fit: _Result, device, dtype, n_train: int, n_val: int, wall: float) -> dict:
    """What the run was and did: base model (hashed), dataset version, hyperparameters (a warm start's LoRA shape
    is the adapter's own), curves, the chosen step, throughput, cost."""
    import torch

    base, data = Path(spec.base_model), Path(spec.dataset)
    cuda = device.type == "cuda"
    total_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gpu_name = torch.cuda.get_device_name(0) if cuda else None
    peak = next((v for k, v in PEAK_BF16.items() if gpu_name and k in gpu_name), None)
    flops = 6.0 * total_params * fit.tokens_seen  # forward + backward, dense estimate
    dataset_manifest = json.loads((data / "manifest.json").read_text()) if (data / "manifest.json").exists() else {}
    return {
        "status": "succeeded",
        "base_model": {"path": str(base.resolve()), "name": getattr(model.config, "_name_or_path", str(base)),
                       "architecture": (model.config.architectures or ["?"])[0],
                       "sha256": _sha256_files(base, ("config.json", "*.safetensors", "*.bin"))},
        "dataset": {"path": str(data.resolve()), "version": dataset_manifest.get("version"),
                    "train_examples": n_train, "validation_examples": n_val},
        "hyperparameters": {k: v for k, v in asdict(spec).items() if k not in ("base_model", "dataset", "output", "progress")}
        | ({"r": lora.r, "alpha": lora.lora_alpha, "dropout": lora.lora_dropout,  # a warm start's: the adapter's own
            "target_modules": sorted(lora.target_modules)} if (lora := model.peft_config.get("default")) else {}),
        "parameters": {"total": total_params, "trainable": trainable},
        "curves": fit.curves, "steps": fit.steps, "planned_steps": fit.planned_steps, "best_step": fit.best_step,
        "best_validation_loss": fit.best_loss, "initial_validation_loss": fit.initial_loss,
        "early_stopped": fit.early_stopped, "tokens_seen": fit.tokens_seen, "wall_s": wall, "train_step_s": fit.step_s,
        "tokens_per_s": fit.tokens_seen / fit.step_s if fit.step_s else None,  # while training (evaluation excluded)
        "device": str(device) + (f" ({gpu_name})" if gpu_name else ""), "dtype": str(dtype).replace("torch.", ""),
        "gpu_seconds": wall if cuda else 0.0,
        "cost": (wall / 3600 * spec.price_per_gpu_hour) if cuda else 0.0,
        "mfu": flops / fit.step_s / peak if peak and fit.step_s else None,
        "finished_at": time.time(),
    }


def _publish(out: Path, manifest: dict) -> None:
    """The best checkpoint becomes ``<out>/adapter``, the other candidates ``<out>/candidates/<name>``; the manifest
    is written last: its presence means success."""
    work = out / ".work"
    shutil.rmtree(out / "adapter", ignore_errors=True)
    shutil.rmtree(out / "candidates", ignore_errors=True)
    (work / "best").rename(out / "adapter")
    if (work / "candidates").is_dir():
        (work / "candidates").rename(out / "candidates")
    shutil.rmtree(work, ignore_errors=True)
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "manifest.json")


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
