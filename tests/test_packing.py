"""pack_pairs layout (shifted labels, boundaries) and token-budget micro-batches."""

from __future__ import annotations

import pytest
import torch
from helpers import random_records, tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from lrdpo_fast.data import PairExample, tokenize_pairs, tokenize_record
from lrdpo_fast.data.packing import (
    PackedBatch,
    pack_pairs,
    packed_batches,
    packing_stats,
    split_pairs,
    token_budget_batches,
)

X = -100


def test_layout_by_hand():
    exs = [PairExample([1, 5], [6, 2], [7, 8, 2]), PairExample([1], [9, 2], [3, 2])]
    b = pack_pairs(exs)
    assert b.input_ids.tolist() == [1, 5, 6, 2, 1, 5, 7, 8, 2, 1, 9, 2, 1, 3, 2]
    assert b.position_ids.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2]
    assert b.labels.tolist() == [X, 6, 2, X, X, 7, 8, 2, X, 9, 2, X, 3, 2, X]
    assert b.cu_seqlens.tolist() == [0, 4, 9, 12, 15] and b.cu_seqlens.dtype == torch.int32
    assert b.max_seqlen == 5
    assert b.response_lengths.tolist() == [2, 3, 2, 2]
    assert b.ref_logps is None and b.ref_chosen_logps is None
    assert (b.num_pairs, b.num_sequences, b.num_tokens, b.num_padding_tokens) == (2, 4, 15, 0)
    for t in (b.input_ids, b.position_ids, b.labels, b.response_lengths):
        assert t.dtype == torch.int64
    c, r = split_pairs(b.response_lengths)
    assert c.tolist() == [2, 2] and r.tolist() == [3, 2]


def test_single_pair_and_refs_and_metrics():
    ex = PairExample([1, 4], [5, 2], [6, 2], num_truncated_tokens=3, ref_chosen_logps=-1.0, ref_rejected_logps=-2.5)
    b = pack_pairs([ex])
    assert b.num_pairs == 1 and b.cu_seqlens.tolist() == [0, 4, 8]
    assert b.ref_logps.dtype == torch.float32 and b.ref_logps.tolist() == [-1.0, -2.5]
    assert b.ref_chosen_logps.tolist() == [-1.0] and b.ref_rejected_logps.tolist() == [-2.5]
    m = b.metrics()
    assert m["batch/truncated_tokens"] == 3 and m["batch/truncated_pairs"] == 1 and m["batch/padding_tokens"] == 0
    moved = b.to("cpu")
    assert isinstance(moved, PackedBatch) and moved is not b and torch.equal(moved.labels, b.labels)
    assert moved.max_seqlen == b.max_seqlen and moved.num_truncated_tokens == 3
    meta = b.to("meta")
    assert meta.input_ids.device.type == "meta" and meta.ref_logps.device.type == "meta"


def test_pack_errors():
    with pytest.raises(ValueError, match="examples"):
        pack_pairs([])
    with pytest.raises(ValueError, match="examples"):
        pack_pairs([{"prompt": [1]}])
    a = PairExample([1], [2], [3], ref_chosen_logps=0.0, ref_rejected_logps=0.0)
    with pytest.raises(ValueError, match="examples"):
        pack_pairs([a, PairExample([1], [2], [3])])
    with pytest.raises(ValueError, match="values"):
        split_pairs(torch.zeros(3))


pairs = st.lists(
    st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9), st.integers(0, 50)), min_size=1, max_size=6
)


def make(spec):
    return [
        PairExample([s + i for i in range(p)], [100 + s + i for i in range(c)], [200 + s + i for i in range(r)])
        for p, c, r, s in spec
    ]


@settings(max_examples=30, deadline=None)
@given(spec=pairs)
def test_packing_invariants(spec):
    exs = make(spec)
    b = pack_pairs(exs)
    cu = b.cu_seqlens.tolist()
    seqs = [(ex.prompt_ids, resp) for ex in exs for resp in (ex.chosen_ids, ex.rejected_ids)]
    assert len(cu) == 2 * len(exs) + 1 and cu[-1] == b.num_tokens
    for (prompt, resp), a, e, n in zip(seqs, cu[:-1], cu[1:], b.response_lengths.tolist()):
        assert b.input_ids[a:e].tolist() == prompt + resp
        assert b.position_ids[a:e].tolist() == list(range(e - a))
        lab = b.labels[a:e]
        assert lab[-1] == X  # nothing crosses a boundary
        scored = torch.nonzero(lab != X).flatten()
        # R scored labels at positions P-1 ... L-2, each the next token of the same sequence
        assert scored.tolist() == list(range(len(prompt) - 1, e - a - 1)) and n == len(resp)
        assert torch.equal(lab[scored], b.input_ids[a:e][scored + 1])
    assert b.max_seqlen == max(e - a for a, e in zip(cu[:-1], cu[1:]))


@settings(max_examples=30, deadline=None)
@given(spec=pairs, budget=st.integers(36, 80), shuffle=st.booleans(), cap=st.one_of(st.none(), st.integers(1, 3)))
def test_token_budget_invariants(spec, budget, shuffle, cap):
    exs = make(spec)
    batches = token_budget_batches(exs, budget, shuffle=shuffle, seed=3, max_pairs_per_batch=cap)
    assert sorted(i for b in batches for i in b) == list(range(len(exs)))
    for idx in batches:
        assert sum(exs[i].num_tokens for i in idx) <= budget
        assert cap is None or len(idx) <= cap
    stats = packing_stats(exs, batches, budget)
    assert stats["padding_tokens"] == 0 and 0 < stats["fill_ratio"] <= 1
    assert stats["num_tokens"] == sum(ex.num_tokens for ex in exs)
    # best fit decreasing never needs more bins than "one batch per pair"
    assert len(batches) <= len(exs)
    if cap is None:
        # and at most one bin is less than half full (first/best-fit property)
        assert sum(sum(exs[i].num_tokens for i in b) * 2 <= budget for b in batches) <= 1


def test_token_budget_fills_and_shuffles():
    exs = make([(3, 3, 4, 0)] * 10)  # 13 tokens each
    batches = token_budget_batches(exs, 26)
    assert [len(b) for b in batches] == [2] * 5
    a = token_budget_batches(exs, 26, shuffle=True, seed=1)
    assert a == token_budget_batches(exs, 26, shuffle=True, seed=1)
    # shuffling reorders the same micro-batches (a no-op shuffle fails here), differently per seed
    assert sorted(a) == sorted(batches) and a != batches
    orders = {tuple(map(tuple, token_budget_batches(exs, 26, shuffle=True, seed=s))) for s in range(5)}
    assert len(orders) >= 4
    got = list(packed_batches(exs, 26))
    assert [idx for idx, _ in got] == batches and all(b.num_tokens == 26 for _, b in got)


def test_pair_longer_than_budget():
    tok = tiny_tokenizer()
    rec = {"prompt": "What is the capital of France?", "chosen": "The capital of France is Paris.", "rejected": "No"}
    ex = tokenize_record(rec, tok)
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        token_budget_batches([ex], ex.num_tokens - 1)
    # the truncation policy makes it fit
    short = tokenize_record(rec, tok, max_length=8)
    assert short.num_tokens <= 16 and token_budget_batches([short], 16) == [[0]]
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        token_budget_batches([ex], 0)
    with pytest.raises(ValueError, match="max_pairs_per_batch"):
        token_budget_batches([ex], 100, max_pairs_per_batch=0)


def test_shared_prompt_prefix_and_identical_responses():
    """chosen and rejected that overlap (same first tokens, or identical) stay separate sequences."""
    tok = tiny_tokenizer()
    ex = tokenize_record({"prompt": "Answer:", "chosen": "yes yes", "rejected": "yes no"}, tok)
    same = tokenize_record({"prompt": "Answer:", "chosen": "maybe", "rejected": "maybe"}, tok)
    b = pack_pairs([ex, same])
    cu = b.cu_seqlens.tolist()
    assert b.response_lengths.tolist() == [len(ex.chosen_ids), len(ex.rejected_ids)] + [len(same.chosen_ids)] * 2
    assert torch.equal(b.input_ids[cu[2] : cu[3]], b.input_ids[cu[3] : cu[4]])


def test_real_tokenized_batches():
    tok = tiny_tokenizer()
    exs = tokenize_pairs(random_records(20, seed=5), tok, max_length=24)
    batches = token_budget_batches(exs, 128, shuffle=True)
    total = sum(pack_pairs([exs[i] for i in idx]).num_tokens for idx in batches)
    assert total == sum(ex.num_tokens for ex in exs)
