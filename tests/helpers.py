"""Tiny local models and tokenizers for tests and benchmarks (no model hub, CPU-sized).

``tiny_tokenizer()``: a byte-level BPE trained on a few lines, with <s>/</s>/<pad> and a ChatML
chat template. ``tiny_model(kind)``: a random-weight causal LM ("llama", "qwen2", "mistral")
with hidden 64, 2 heads of dim 32, 1 KV head (GQA), 2 layers, fp32.
"""
from __future__ import annotations

import functools

import torch

TRAIN_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, this is a small test of a tiny tokenizer.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea. Waves roll softly under the moon.",
    "Explain length regularized preference optimization in one sentence.",
    "Answer: yes. Answer: no. Maybe, maybe not; numbers 0 1 2 3 4 5 6 7 8 9.",
]

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 320):
    """A transformers fast tokenizer trained locally (byte-level BPE, ``vocab_size`` entries).

    bos "<s>" (id 1), eos "</s>" (id 2), pad "<pad>" (id 0), ChatML chat template.
    Cached: treat it as read-only.
    """
    from lrdpo_fast.example import train_bpe_tokenizer

    return train_bpe_tokenizer(TRAIN_LINES * 4, vocab_size, special_tokens=SPECIAL_TOKENS, chat_template=CHATML_TEMPLATE)


def tiny_config(kind: str = "llama", *, vocab_size: int = 320, tie_word_embeddings: bool = False, **overrides):
    """A transformers config for a tiny decoder: hidden 64, 2 heads x 32, 1 KV head, 2 layers."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        num_hidden_layers=2,
        intermediate_size=128,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    common.update(overrides)
    if kind == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if kind == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    if kind == "mistral":
        from transformers import MistralConfig

        common.setdefault("sliding_window", 4096)
        return MistralConfig(**common)
    raise ValueError(f"kind must be 'llama', 'qwen2' or 'mistral', got {kind!r}")


def tiny_model(kind: str = "llama", *, seed: int = 0, dtype=torch.float32, **config_kwargs):
    """A random-weight causal LM from ``tiny_config`` (eval mode, ``attn_implementation='sdpa'``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(kind, **config_kwargs)
    cfg._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    if kind == "qwen2":
        # Qwen2 has q/k/v biases: make them non-zero so the test covers them.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0, 0.1)
    return model.eval()


def random_records(n: int, *, seed: int = 0, min_words: int = 1, max_words: int = 12) -> list[dict]:
    """``n`` string preference records built from TRAIN_LINES words, deterministic by seed."""
    import random

    rng = random.Random(seed)
    words = " ".join(TRAIN_LINES).split()

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    return [
        {"prompt": text(min_words, max_words), "chosen": text(min_words, max_words), "rejected": text(min_words, max_words)}
        for _ in range(n)
    ]
