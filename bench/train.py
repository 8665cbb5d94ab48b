"""Training throughput: driftwatch's trainer against a bare LoRA training loop on the same model and batches,
in one run, plus tokens/s, estimated MFU (on a known GPU) and wall time.

Models are built here with random weights in the shape of real ones (no model hub): ``tiny`` (the test Llama),
``smollm2-135m`` (SmolLM2-135M's config) and ``1b`` (Llama-3.2-1B's shape). The anchor is a plain loop over the
same peft model — forward, backward, AdamW step, no evaluation or checkpointing — so the ratio is the trainer's
overhead (batching, loss masking, evaluation every --eval-every steps, best-checkpoint saves).

    python bench/train.py [--model smollm2-135m] [--steps 30] [--batch 8] [--seq 256] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

SHAPES = {
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}


def build(shape: str, root: Path, dtype) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from driftwatch.dev.models import build_tiny_llama

    out = build_tiny_llama(root / "model")  # tokenizer + chat template; the weights are replaced below
    if shape != "tiny":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(out)
        spec = {"vocab_size": len(tok), **SHAPES[shape]}
        config = LlamaConfig(**spec, max_position_embeddings=2048, tie_word_embeddings=True,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = LlamaForCausalLM(config).to(dtype)
        model.save_pretrained(out, safe_serialization=True)
    return out


def dataset(root: Path, n: int, words: int) -> Path:
    from driftwatch.dev.models import corpus

    rng = random.Random(0)
    lines = corpus(n * 2, seed=1)
    d = root / "data"
    d.mkdir()
    for name, count in (("train", n), ("validation", max(8, n // 10))):
        rows = [{"messages": [{"role": "user", "content": " ".join(rng.choices(lines, k=max(1, words // 24)))},
                              {"role": "assistant", "content": " ".join(rng.choices(lines, k=max(1, words // 12)))}]}
                for _ in range(count)]
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def bare_loop(base: Path, data: Path, steps: int, batch: int, seq: int, device, dtype, targets) -> tuple[float, int]:
    """tokens/s of forward + backward + AdamW on the same LoRA model and similar batches (the anchor)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device),
                           LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules=targets))
    rows = [json.loads(line)["messages"] for line in (data / "train.jsonl").read_text().splitlines()]
    ids = [list(tok.apply_chat_template(m, tokenize=True)["input_ids"])[:seq] for m in rows]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens, t0 = 0, None
    for step in range(steps + 2):
        chunk = ids[(step * batch) % len(ids):][:batch] or ids[:batch]
        width = max(map(len, chunk))
        x = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        for i, row in enumerate(chunk):
            x[i, :len(row)] = torch.tensor(row)
        x = x.to(device)
        loss = model(input_ids=x, attention_mask=(x != tok.pad_token_id).long(), labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == 1:  # two warm-up steps
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        elif step > 1:
            tokens += int((x != tok.pad_token_id).sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - t0), tokens


def main() -> None:
    import torch

    from driftwatch.retrain.trainer import TrainSpec, train

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(SHAPES), default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        base = build(args.model, root, dtype)
        data = dataset(root, n=args.steps * args.batch + args.batch, words=args.seq // 2)
        print(f"model {args.model} built in {time.perf_counter() - t:.1f}s on {device} ({str(dtype)[6:]})")
        anchor, _ = bare_loop(base, data, min(args.steps, 10), args.batch, args.seq, device, dtype, targets)
        m = train(TrainSpec(base_model=str(base), dataset=str(data), output=str(root / "run"), max_steps=args.steps,
                            batch_size=args.batch, max_length=args.seq, eval_every=args.eval_every, patience=100,
                            target_modules=targets, device=args.device, progress=False))
    print(f"parameters: {m['parameters']['total'] / 1e6:.1f}M total, {m['parameters']['trainable'] / 1e6:.2f}M trainable (LoRA r=8)")
    print(f"bare LoRA loop (anchor): {anchor:,.0f} tokens/s")
    print(f"driftwatch trainer:      {m['tokens_per_s']:,.0f} tokens/s in its training steps: ratio "
          f"{m['tokens_per_s'] / anchor:.2f}; over the whole run (load, {m['steps'] // args.eval_every + 1} evaluations, "
          f"checkpoints) {m['tokens_seen'] / m['wall_s']:,.0f} tokens/s")
    mfu = f"{m['mfu'] * 100:.1f} %" if m["mfu"] is not None else "n/a (no known GPU peak)"
    print(f"wall {m['wall_s']:.1f}s, {m['tokens_seen']:,} tokens, {m['steps']} steps, device {m['device']}, MFU {mfu}, "
          f"GPU-seconds {m['gpu_seconds']:.1f}")


if __name__ == "__main__":
    main()
