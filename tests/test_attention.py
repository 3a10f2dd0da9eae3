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


def reference(q, k, v, lens, window=None):
    """Naive softmax attention, one sequence at a time, in float64."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    outs, a = [], 0
    for n in lens:
        qs, ks, vs = (t[a:a + n].double().transpose(0, 1) for t in (q, k, v))
        s = qs @ ks.transpose(1, 2) / math.sqrt(q.shape[-1])
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
)
def test_varlen_matches_reference(lens, heads, window):
    h, hkv = heads
    T, D = sum(lens), 32
    g = torch.Generator().manual_seed(sum(lens))
    q, k, v = (torch.randn(T, n, D, generator=g) for n in (h, hkv, hkv))
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    out = varlen_attention(q, k, v, cu, max(lens), sliding_window=window)
    assert out.shape == (T, h, D) and out.dtype == q.dtype
    torch.testing.assert_close(out, reference(q, k, v, lens, window), rtol=1e-5, atol=1e-5)


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
    with pytest.raises(ValueError, match="softcap"):
        varlen_attention_forward(torch.nn.Module(), q, q, q, None, softcap=30.0)
    with pytest.raises(ValueError, match="s_aux"):
        varlen_attention_forward(torch.nn.Module(), q, q, q, None, s_aux=torch.zeros(2))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_model_without_cu_seqlens(kind):
    """With lrdpo_varlen set, ordinary calls still work: padded batches (mask honoured) and
    packed position_ids alone (sequences derived from the restarts)."""
    sdpa = tiny_model(kind)
    ours = tiny_model(kind)
    enable_varlen_attention(ours)
    ids = torch.randint(3, 300, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, attention_mask=mask).logits[mask.bool()],
                                   sdpa(ids, attention_mask=mask).logits[mask.bool()], rtol=1e-5, atol=1e-5)
        a, b = ids[0, :5], ids[1, :4]
        packed = ours(torch.cat([a, b])[None], position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])).logits[0]
        torch.testing.assert_close(packed[:5], sdpa(a[None]).logits[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed[5:], sdpa(b[None]).logits[0], rtol=1e-5, atol=1e-5)


def test_generate_with_varlen_attention():
    sdpa = tiny_model("llama")
    ours = tiny_model("llama")
    enable_varlen_attention(ours)
    ids = torch.randint(3, 300, (1, 5))
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(ids, **kw), sdpa.generate(ids, **kw))
