"""The small, local, seeded set-up of the train-step comparison: a word-level tokenizer built with
`tokenizers` (no download), a ~20M-parameter Llama (both from lrdpo_fast.model.tiny, the one tiny
model + tokenizer factory), and long-tailed pairs."""

from __future__ import annotations

import math
import random

VOCAB = 32000
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # = lrdpo_fast.model.tiny.WORD_SPECIALS


def build_tokenizer(vocab_size: int = VOCAB):
    """PreTrainedTokenizerFast over a WordLevel model: ids 0-3 special, then words w0, w1, ...
    (``lrdpo_fast.model.tiny.word_tokenizer``)."""
    from lrdpo_fast.model.tiny import word_tokenizer

    return word_tokenizer(vocab_size, model_max_length=4096)


def build_model(vocab_size: int = VOCAB, tiny: bool = False, seed: int = 0):
    """LlamaForCausalLM, hidden 256, 4 layers (~20M parameters with the untied 32k embeddings),
    4 heads, no GQA; ``tiny``: hidden 64, 1 layer. Built by ``lrdpo_fast.model.tiny.tiny_causal_lm``
    (random weights from ``seed``, the global RNG left as it was)."""
    from lrdpo_fast.model.tiny import tiny_causal_lm

    hidden = 64 if tiny else 256
    model = tiny_causal_lm(
        "llama",
        seed=seed,
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=128 if tiny else 688,
        num_hidden_layers=1 if tiny else 4,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=hidden // 4,
        max_position_embeddings=4096,
    )
    model.config.use_cache = False
    return model


def _words(rng: random.Random, n: int, vocab_size: int) -> str:
    """n Zipf-distributed words (text-like token frequencies)."""
    words = vocab_size - len(SPECIALS)
    return " ".join(f"w{min(words - 1, int(rng.paretovariate(1.1)) - 1)}" for _ in range(n))


def _long_tailed(rng: random.Random, median: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(round(median * math.exp(rng.gauss(0.0, 0.7))))))


def build_pairs(n_pairs: int, seed: int = 0, tiny: bool = False, vocab_size: int = VOCAB) -> list[dict]:
    """Prompt/chosen/rejected strings; lengths log-normal (median prompt 48, responses 96 words,
    capped at 512), the rejected a bit longer on average as in length-exploiting data."""
    rng = random.Random(seed)
    scale = 0.125 if tiny else 1.0
    pairs = []
    for _ in range(n_pairs):
        p = _long_tailed(rng, 48 * scale, 2, 256)
        c = _long_tailed(rng, 96 * scale, 2, 512)
        r = _long_tailed(rng, 110 * scale, 2, 512)
        pairs.append(
            {
                "prompt": _words(rng, p, vocab_size),
                "chosen": _words(rng, c, vocab_size),
                "rejected": _words(rng, r, vocab_size),
            }
        )
    return pairs


def pair_tokens(pairs: list[dict]) -> int:
    """Tokens the model runs per epoch: (BOS + prompt + response + EOS) for chosen and rejected."""
    total = 0
    for rec in pairs:
        p = len(rec["prompt"].split()) + 1
        total += 2 * p + len(rec["chosen"].split()) + len(rec["rejected"].split()) + 2
    return total
