"""Packed model path == unpadded one-at-a-time forward with materialized logits (values and grads)."""

from __future__ import annotations

import pytest
import torch
from helpers import random_records, tiny_model, tiny_tokenizer, unpacked_logps
from hypothesis import given, settings
from hypothesis import strategies as st

from lrdpo_fast.data import PairExample, tokenize_pairs
from lrdpo_fast.data.packing import pack_pairs, split_pairs
from lrdpo_fast.model.attention import ATTN_IMPLEMENTATION
from lrdpo_fast.model.packed import (
    decoder_body,
    lm_head_params,
    model_sequence_logprobs,
    packed_hidden_states,
    precompute_reference_logps,
)

TOL = dict(rtol=1e-5, atol=1e-5)
MODELS = [
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True}),
    ("qwen2", {}),
    ("mistral", {"sliding_window": 6}),  # windows shorter than the sequences
    # heads that transform their logits (model/head.py): scale, soft cap (+ attention soft cap)
    ("granite", {}),
    ("cohere", {}),
    ("gemma2", {}),
    ("gemma3", {}),
]
IDS = ["llama", "llama-tied", "qwen2", "mistral-swa", "granite-scale", "cohere-scale", "gemma2-caps", "gemma3-cap"]


@pytest.fixture(scope="module")
def examples():
    return tokenize_pairs(random_records(4, seed=7), tiny_tokenizer(), max_length=24)


def params_to_check(model):
    names = [n for n, _ in model.named_parameters()]
    pick = [
        n
        for n in names
        if n.endswith(
            (
                "embed_tokens.weight",
                "layers.0.self_attn.q_proj.weight",
                "layers.1.self_attn.k_proj.weight",
                "layers.1.mlp.down_proj.weight",
                "model.norm.weight",
                "q_proj.bias",
            )
        )
    ]
    return {n: p for n, p in model.named_parameters() if n in pick}


@pytest.mark.parametrize("kind,cfg", MODELS, ids=IDS)
def test_packed_equals_unpacked_values_and_grads(kind, cfg, examples):
    model = tiny_model(kind, **cfg)
    impl = model.config._attn_implementation  # sdpa, or eager for the soft-capped Gemmas
    batch = pack_pairs(examples)
    coef = torch.randn(batch.num_sequences)

    logps, lengths = model_sequence_logprobs(model, batch, backend="torch")
    assert logps.dtype == torch.float32 and logps.shape == (batch.num_sequences,)
    assert torch.equal(lengths, batch.response_lengths)
    params = params_to_check(model)
    got = torch.autograd.grad((logps * coef).sum(), list(params.values()))

    want_logps = unpacked_logps(model, examples)
    want = torch.autograd.grad((want_logps * coef).sum(), list(params.values()))
    torch.testing.assert_close(logps, want_logps, **TOL)
    for name, g, w in zip(params, got, want):
        torch.testing.assert_close(g, w, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    assert model.config._attn_implementation == impl  # restored


def test_tied_head_is_the_embedding():
    model = tiny_model("llama", tie_word_embeddings=True)
    weight, bias = lm_head_params(model)
    assert weight is model.get_input_embeddings().weight and bias is None
    untied = tiny_model("llama")
    assert lm_head_params(untied)[0] is untied.lm_head.weight
    assert decoder_body(untied) is untied.model
    with pytest.raises(ValueError, match="model"):
        lm_head_params(untied.model)


@settings(max_examples=6, deadline=None)
@given(
    spec=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_shapes_vary(spec, seed):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda n: torch.randint(3, 320, (n,), generator=g).tolist()  # noqa: E731
    exs = [PairExample([1] + rnd(p - 1), rnd(c), rnd(r)) for p, c, r in spec]
    model = _llama()
    with torch.no_grad():
        logps, _ = model_sequence_logprobs(model, pack_pairs(exs), backend="torch")
        torch.testing.assert_close(logps, unpacked_logps(model, exs), **TOL)


_CACHE = {}


def _llama():
    if "llama" not in _CACHE:
        _CACHE["llama"] = tiny_model("llama")
    return _CACHE["llama"]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_no_leak_across_sequence_boundaries(kind, examples):
    """Perturbing one sequence's tokens changes its log-prob and nothing else."""
    model = tiny_model(kind)
    batch = pack_pairs(examples)
    with torch.no_grad():
        base = model_sequence_logprobs(model, batch, backend="torch")[0]
        hidden = packed_hidden_states(model, batch)
        s = 2  # chosen of pair 1
        a, b = batch.cu_seqlens[s].item(), batch.cu_seqlens[s + 1].item()
        batch.input_ids[a:b] = (batch.input_ids[a:b] + 7) % 320
        batch.labels[a : b - 1] = torch.where(batch.labels[a : b - 1] == -100, -100, batch.input_ids[a + 1 : b])
        moved = model_sequence_logprobs(model, batch, backend="torch")[0]
        hidden2 = packed_hidden_states(model, batch)
    others = torch.ones_like(base, dtype=torch.bool)
    others[s] = False
    assert torch.equal(moved[others], base[others])
    assert not torch.isclose(moved[s], base[s])
    keep = torch.ones(hidden.shape[0], dtype=torch.bool)
    keep[a:b] = False
    assert torch.equal(hidden2[keep], hidden[keep])


def test_precompute_reference_logps(examples):
    model = tiny_model("qwen2").train()
    stored = precompute_reference_logps(model, examples, max_tokens_per_batch=80, progress=False, backend="torch")
    assert model.training and model.config._attn_implementation == "sdpa"
    assert len(stored) == len(examples)
    for ex, st_ in zip(examples, stored):
        assert st_.prompt_ids == ex.prompt_ids and st_.has_ref
    model.eval()
    with torch.no_grad():
        want = unpacked_logps(model, examples)
    batch = pack_pairs(stored)
    torch.testing.assert_close(batch.ref_logps, want, **TOL)
    c, r = split_pairs(want)
    torch.testing.assert_close(batch.ref_chosen_logps, c, **TOL)
    torch.testing.assert_close(batch.ref_rejected_logps, r, **TOL)
    # recomputing over already-stored examples replaces the values
    again = precompute_reference_logps(model, stored, max_tokens_per_batch=1000, progress=False, backend="torch")
    torch.testing.assert_close(pack_pairs(again).ref_logps, want, **TOL)


def test_bad_batch_and_varlen_kept_when_already_set(examples):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="batch"):
        packed_hidden_states(model, {"input_ids": torch.tensor([1])})
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    hidden = packed_hidden_states(model, pack_pairs(examples[:1]))
    assert hidden.shape == (pack_pairs(examples[:1]).num_tokens, 64)
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION


def test_gradient_checkpointing(examples):
    model = tiny_model("llama").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = pack_pairs(examples)
    params = params_to_check(model)
    with pytest.warns(UserWarning, match="gradient checkpointing"):
        logps = model_sequence_logprobs(model, batch, backend="torch")[0]
    got = torch.autograd.grad(logps.sum(), list(params.values()))
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION  # kept for the recompute
    model.gradient_checkpointing_disable()
    model.config._attn_implementation = "sdpa"
    want = torch.autograd.grad(unpacked_logps(model, examples).sum(), list(params.values()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)
