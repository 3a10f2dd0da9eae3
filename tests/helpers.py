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


def unpacked_logps(model, examples):
    """float32 [S]: each sequence alone, model(input_ids).logits -> log_softmax -> gather."""
    out = []
    for ex in examples:
        for resp in (ex.chosen_ids, ex.rejected_ids):
            ids = torch.tensor([ex.prompt_ids + resp])
            logp = model(ids).logits[0].float().log_softmax(-1)
            p = len(ex.prompt_ids)
            out.append(logp[p - 1 : -1].gather(1, ids[0, p:, None]).sum())
    return torch.stack(out)


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` with every parameter moved by 0.05 * N(0, 1) (in place; returned for chaining).
    A tied head is the embedding (one parameter): it moves with it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@torch.no_grad()
def hf_greedy_with_logprobs(model, prompt_ids: list[int], max_new_tokens: int):
    """transformers' greedy continuation and each chosen token's float64 log-prob."""
    ids = torch.tensor([prompt_ids])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=2,
        pad_token_id=0,
    )
    full = out[0]
    logits = model(full[None]).logits[0].double().log_softmax(-1)
    new = full[len(prompt_ids) :].tolist()
    lps = [float(logits[len(prompt_ids) - 1 + k, t]) for k, t in enumerate(new)]
    return new, lps


def assert_serves(sampler, model, prompts, max_new_tokens: int = 12, tol: float = 1e-4):
    """The engine's greedy tokens and their log-probs equal transformers' on ``model``."""
    groups = sampler.generate(prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens, logprobs=True)
    for prompt, group in zip(prompts, groups):
        sample = group[0]
        ids, lps = hf_greedy_with_logprobs(model, sample.prompt_ids, max_new_tokens)
        assert sample.response_ids == ids, prompt
        assert max(abs(a - b) for a, b in zip(sample.logprobs, lps)) < tol, prompt
