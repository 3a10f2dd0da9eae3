"""varlen attention: exactness against per-sequence references, registration, fallbacks."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from lrdpo_fast.model.attention import (
    ATTN_IMPLEMENTATION,
    enable_varlen_attention,
    register_varlen_attention,
    varlen_attention,
    varlen_attention_enabled,
    varlen_attention_forward,
)


def reference(q, k, v, lens, window=None, softcap=None):
    """Naive softmax attention, one sequence at a time, in float64 (scores soft-capped, c tanh(s / c),
    when ``softcap``)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    outs, a = [], 0
    for n in lens:
        qs, ks, vs = (t[a : a + n].double().transpose(0, 1) for t in (q, k, v))
        s = qs @ ks.transpose(1, 2) / math.sqrt(q.shape[-1])
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        i = torch.arange(n)
        allowed = i[:, None] >= i[None, :]
        if window is not None:
            allowed &= i[:, None] - i[None, :] < window
        s = s.masked_fill(~allowed, float("-inf"))
        outs.append((s.softmax(-1) @ vs).transpose(0, 1))
        a += n
    return torch.cat(outs).float()


@settings(max_examples=15, deadline=None)
@given(
    lens=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    heads=st.sampled_from([(2, 1), (4, 2), (2, 2)]),
    window=st.one_of(st.none(), st.integers(1, 6)),
    softcap=st.sampled_from([None, 0.5, 2.0]),
)
def test_varlen_matches_reference(lens, heads, window, softcap):
    h, hkv = heads
    T, D = sum(lens), 32
    g = torch.Generator().manual_seed(sum(lens))
    q, k, v = (torch.randn(T, n, D, generator=g) * 3 for n in (h, hkv, hkv))  # scores of a few units
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    out = varlen_attention(q, k, v, cu, max(lens), sliding_window=window, softcap=softcap)
    assert out.shape == (T, h, D) and out.dtype == q.dtype
    torch.testing.assert_close(out, reference(q, k, v, lens, window, softcap), rtol=1e-5, atol=1e-5)


def test_softcap_changes_attention_and_bad_values_raise():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(7, 2, 32, generator=g) * 3 for _ in range(3))
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    plain, capped = (varlen_attention(q, k, v, cu, 4, softcap=c) for c in (None, 0.5))
    assert (plain - capped).abs().max() > 0.1  # the cap is applied, not ignored
    torch.testing.assert_close(varlen_attention(q, k, v, cu, 4, softcap=1e6), plain, rtol=1e-5, atol=1e-5)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "30"):
        with pytest.raises(ValueError, match="softcap"):
            varlen_attention(q, k, v, cu, 4, softcap=bad)


def test_varlen_bad_heads():
    q, k = torch.randn(4, 3, 32), torch.randn(4, 2, 32)
    with pytest.raises(ValueError, match="heads"):
        varlen_attention(q, k, k, torch.tensor([0, 4], dtype=torch.int32), 4)


def test_register_idempotent_and_context_manager():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    assert register_varlen_attention() == ATTN_IMPLEMENTATION == register_varlen_attention()
    assert AttentionInterface()[ATTN_IMPLEMENTATION] is varlen_attention_forward
    assert ATTN_IMPLEMENTATION in ALL_MASK_ATTENTION_FUNCTIONS
    model = tiny_model("llama")
    with varlen_attention_enabled(model):
        assert model.config._attn_implementation == ATTN_IMPLEMENTATION
        with varlen_attention_enabled(model):  # nested: no change
            assert model.config._attn_implementation == ATTN_IMPLEMENTATION
        assert model.config._attn_implementation == ATTN_IMPLEMENTATION
    assert model.config._attn_implementation == "sdpa"
    assert enable_varlen_attention(model) == "sdpa"
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION


def test_unsupported_features_raise():
    q = torch.randn(1, 2, 4, 32)
    with pytest.raises(ValueError, match="s_aux"):
        varlen_attention_forward(torch.nn.Module(), q, q, q, None, s_aux=torch.zeros(2))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_model_without_cu_seqlens(kind, monkeypatch):
    """With lrdpo_varlen set, ordinary calls still work: padded batches (mask honoured) and
    packed position_ids alone (sequences derived from the restarts)."""
    sdpa = tiny_model(kind)
    ours = tiny_model(kind)
    enable_varlen_attention(ours)
    _, kernel = _spy_attention(monkeypatch)
    ids = torch.randint(3, 300, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids, attention_mask=mask).logits[mask.bool()],
            sdpa(ids, attention_mask=mask).logits[mask.bool()],
            rtol=1e-5,
            atol=1e-5,
        )
        a, b = ids[0, :5], ids[1, :4]
        kernel.clear()
        packed = ours(torch.cat([a, b])[None], position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])).logits[0]
        assert len(kernel) == ours.config.num_hidden_layers  # the varlen kernel ran, not an SDPA fallback
        torch.testing.assert_close(packed[:5], sdpa(a[None]).logits[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed[5:], sdpa(b[None]).logits[0], rtol=1e-5, atol=1e-5)


def _spy_attention(monkeypatch):
    """Route lrdpo_varlen's attention calls (and its varlen kernel) through counters; returns
    (interface calls [(q_len, kv_len)], kernel calls [n])."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from lrdpo_fast.model import attention

    register_varlen_attention()
    calls, kernel = [], []

    def spy(module, query, key, value, attention_mask, **kw):
        calls.append((query.shape[2], key.shape[2]))
        return varlen_attention_forward(module, query, key, value, attention_mask, **kw)

    def kernel_spy(*a, **kw):
        kernel.append(1)
        return varlen_attention(*a, **kw)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, ATTN_IMPLEMENTATION, spy)
    monkeypatch.setattr(attention, "varlen_attention", kernel_spy)
    return calls, kernel


def test_generate_with_varlen_attention(monkeypatch):
    """generate() on a model switched to lrdpo_varlen: every attention call, prefill and cached
    decode steps, with and without left padding, goes through lrdpo_varlen's function (its
    exact SDPA fallback: no cu_seqlens while generating), and every step's logits match
    transformers' eager attention, an independent implementation (formerly SDPA vs SDPA)."""
    eager = tiny_model("llama")
    eager.config._attn_implementation = "eager"
    ours = tiny_model("llama")
    enable_varlen_attention(ours)
    calls, _ = _spy_attention(monkeypatch)
    ids = torch.randint(3, 300, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding: the 2-D mask path
    new = 4
    kw = dict(max_new_tokens=new, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_logits=True)
    for x, m in ((ids[:1], None), (ids, mask)):
        calls.clear()
        a = ours.generate(x, attention_mask=m, **kw)
        b = eager.generate(x, attention_mask=m, **kw)
        assert len(calls) == new * ours.config.num_hidden_layers
        assert calls[0] == (6, 6) and calls[-1] == (1, 6 + new - 1)  # prefill, then cached decode steps
        assert torch.equal(a.sequences, b.sequences)
        for step, (la, lb) in enumerate(zip(a.logits, b.logits)):
            torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5, msg=f"logits of generated token {step}")
