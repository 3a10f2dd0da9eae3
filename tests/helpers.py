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


@functools.cache
def tiny_tokenizer(vocab_size: int = 320):
    """A transformers fast tokenizer trained locally (byte-level BPE, ``vocab_size`` entries).

    bos "<s>" (id 1), eos "</s>" (id 2), pad "<pad>" (id 0), ChatML chat template.
    Cached: treat it as read-only.
    """
    from lrdpo_fast.model.tiny import train_bpe_tokenizer

    return train_bpe_tokenizer(
        TRAIN_LINES * 4, vocab_size, special_tokens=SPECIAL_TOKENS, chat_template=CHATML_TEMPLATE
    )


def tiny_config(kind: str = "llama", *, vocab_size: int = 320, tie_word_embeddings: bool = False, **overrides):
    """A transformers config for a tiny decoder: hidden 64, 2 heads x 32, 1 KV head, 2 layers
    (``lrdpo_fast.model.tiny.tiny_config``)."""
    from lrdpo_fast.model.tiny import tiny_config as config

    return config(kind, vocab_size=vocab_size, tie_word_embeddings=tie_word_embeddings, **overrides)


def tiny_model(kind: str = "llama", *, seed: int = 0, dtype=torch.float32, **config_kwargs):
    """A random-weight causal LM from ``tiny_config`` (eval mode, ``attn_implementation='sdpa'``)."""
    from lrdpo_fast.model.tiny import tiny_causal_lm

    config_kwargs.setdefault("vocab_size", 320)
    model = tiny_causal_lm(kind, seed=seed, dtype=dtype, **config_kwargs)
    if kind == "qwen2":
        # Qwen2 has q/k/v biases: make them non-zero so the test covers them.
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return model.eval()


def random_records(n: int, *, seed: int = 0, min_words: int = 1, max_words: int = 12) -> list[dict]:
    """``n`` string preference records built from TRAIN_LINES words, deterministic by seed."""
    import random

    rng = random.Random(seed)
    words = " ".join(TRAIN_LINES).split()

    def text(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    return [
        {
            "prompt": text(min_words, max_words),
            "chosen": text(min_words, max_words),
            "rejected": text(min_words, max_words),
        }
        for _ in range(n)
    ]
