"""A tiny Llama built locally in seconds (no model hub): a byte-level BPE tokenizer with a ChatML template and
a 4-layer, 256-wide Llama with random weights (~3.3M parameters). Tests, the demo and vLLM on CPU use it."""

from __future__ import annotations

import random
from pathlib import Path

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def corpus(n: int = 4000, seed: int = 0) -> list[str]:
    from driftwatch.simulate import _POOL, _WORDS

    rng = random.Random(seed)
    words = [w for ws in _WORDS.values() for w in ws] + _POOL + (
        "the a is of to and in what how why capital france paris answer question user assistant yes no "
        "password reset account order refund shipping invoice weather today thanks please help").split()
    return [" ".join(rng.choices(words, k=rng.randint(4, 20))).capitalize() + rng.choice(".?!") for _ in range(n)]


def build_tiny_llama(out: Path, *, seed: int = 0, vocab_size: int = 2048, hidden: int = 256, layers: int = 4) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(corpus(seed=seed), trainers.BpeTrainer(
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
    model.save_pretrained(out, safe_serialization=True)
    return out
