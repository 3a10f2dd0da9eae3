"""Bad input on the packed model path and in the pair files: a clear ValueError naming the
argument, the field or the file, never an IndexError from deep inside a model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import tiny_model, tiny_tokenizer

import lrdpo_fast as lf
from lrdpo_fast.data.packing import PackedBatch, pack_pairs
from lrdpo_fast.data.records import PairExample
from lrdpo_fast.model.packed import model_sequence_logprobs


def _batch() -> PackedBatch:
    return pack_pairs([PairExample([1, 5, 6], [7, 2], [8, 9, 2])])


@pytest.mark.parametrize("bad_id", [320, 10_000, -1])
def test_a_token_id_outside_the_vocabulary_is_named(bad_id):
    batch = _batch()
    ids = batch.input_ids.clone()
    ids[3] = bad_id
    with pytest.raises(
        ValueError, match=rf"batch\.input_ids holds token id {bad_id}, outside the model's vocabulary \[0, 320\)"
    ):
        model_sequence_logprobs(tiny_model("llama"), dataclasses.replace(batch, input_ids=ids))


@pytest.mark.parametrize("field", ["labels", "position_ids"])
def test_a_hand_built_batch_whose_fields_disagree_is_refused(field):
    batch = _batch()
    short = getattr(batch, field)[:-1]
    with pytest.raises(ValueError, match=rf"PackedBatch: {field} has shape \({short.numel()},\)"):
        dataclasses.replace(batch, **{field: short})


def test_reference_values_for_other_sequences_are_refused():
    with pytest.raises(ValueError, match=r"PackedBatch: ref_logps has 3 values for 2 sequences"):
        dataclasses.replace(_batch(), ref_logps=torch.zeros(3))


def test_an_empty_pairs_file_is_named(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match=r"pairs is empty \('.*pairs\.jsonl' holds no records\)"):
        lf.load_pairs(str(path), tiny_tokenizer())
