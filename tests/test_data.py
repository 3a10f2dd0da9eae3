"""tokenize_pair and the loaders: string, chat and pre-tokenized records, truncation, errors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_records, tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from lrdpo_fast.data import (
    PairExample,
    load_hf_dataset,
    load_jsonl,
    read_jsonl,
    save_jsonl,
    tokenize_pairs,
    tokenize_record,
)

BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_string_record(tok):
    ex = tokenize_record({"prompt": "What is the capital?", "chosen": "Paris.", "rejected": "No idea at all"}, tok)
    assert ex.prompt_ids == [BOS] + enc(tok, "What is the capital?")
    assert ex.chosen_ids == enc(tok, "Paris.") + [EOS]
    assert ex.rejected_ids == enc(tok, "No idea at all") + [EOS]
    assert ex.num_truncated_tokens == 0 and not ex.has_ref
    assert ex.chosen_length == len(ex.chosen_ids)
    assert ex.num_tokens == 2 * len(ex.prompt_ids) + len(ex.chosen_ids) + len(ex.rejected_ids)


def test_add_bos_false_and_no_double_eos(tok):
    ex = tokenize_record({"prompt": "hi", "chosen": "yes", "rejected": "no"}, tok, add_bos=False)
    assert ex.prompt_ids == enc(tok, "hi")
    ex = tokenize_record({"prompt": [BOS, 5], "chosen": [7, EOS], "rejected": [8]}, tok)
    assert ex.chosen_ids == [7, EOS] and ex.rejected_ids == [8, EOS] and ex.prompt_ids == [BOS, 5]


def test_chat_messages(tok):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]
    rec = {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": "Paris."}],
        "rejected": "I do not know",  # a bare string is one assistant turn
    }
    ex = tokenize_record(rec, tok)
    head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert ex.prompt_ids == enc(tok, head)  # no extra BOS: the template decides
    assert tok.decode(ex.chosen_ids) == "Paris.<|im_end|>\n</s>"
    assert tok.decode(ex.rejected_ids) == "I do not know<|im_end|>\n</s>"
    # chosen/rejected as whole conversations without "prompt": the shared prefix is the prompt
    implicit = tokenize_record(
        {
            "chosen": prompt + [{"role": "assistant", "content": "Paris."}],
            "rejected": prompt + [{"role": "assistant", "content": "I do not know"}],
        },
        tok,
    )
    assert implicit == ex


def test_chat_turn_is_cut_after_eos(tok):
    # A ChatML-style model whose EOS is <|im_end|>: the template's trailing newline is dropped.
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    ex = tokenize_record(
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": "yes", "rejected": "no"}, tok, eos_token_id=im_end
    )
    assert ex.chosen_ids[-1] == im_end and tok.decode(ex.chosen_ids) == "yes<|im_end|>"


def test_pretokenized_records(tok):
    ex = tokenize_record({"prompt": [1, 10, 11], "chosen": [20, 21], "rejected": [30]}, eos_token_id=EOS)
    assert ex == PairExample([1, 10, 11], [20, 21, EOS], [30, EOS])
    # TRL's column names, refs carried along, no tokenizer and no EOS: nothing appended
    ex = tokenize_record(
        {
            "prompt_input_ids": [1, 10],
            "chosen_input_ids": [20],
            "rejected_input_ids": [30, 31],
            "ref_chosen_logps": -1.5,
            "ref_rejected_logps": -2.0,
        }
    )
    assert ex.chosen_ids == [20] and ex.rejected_ids == [30, 31]
    assert ex.has_ref and ex.ref_chosen_logps == -1.5 and ex.ref_rejected_logps == -2.0


@pytest.mark.parametrize("field", ["chosen", "rejected"])
@pytest.mark.parametrize("empty", ["", [], [EOS], [{"role": "assistant", "content": ""}]])
def test_empty_response_raises_naming_it(tok, field, empty):
    rec = {"prompt": "hello", "chosen": "yes", "rejected": "no"}
    rec[field] = empty
    with pytest.raises(ValueError, match=field):
        tokenize_record(rec, tok)


def test_bad_records(tok):
    with pytest.raises(ValueError, match="rejected"):
        tokenize_record({"prompt": "a", "chosen": "b"}, tok)
    with pytest.raises(ValueError, match="prompt"):
        tokenize_record({"prompt": [], "chosen": [5], "rejected": [6]}, eos_token_id=EOS)
    with pytest.raises(ValueError, match="tokenizer"):
        tokenize_record({"prompt": "a", "chosen": "b", "rejected": "c"}, None)
    with pytest.raises(ValueError, match="chosen"):
        tokenize_record({"prompt": "a", "chosen": 3.5, "rejected": "c"}, tok)
    with pytest.raises(ValueError, match="max_length"):
        tokenize_record({"prompt": "a", "chosen": "b", "rejected": "c"}, tok, max_length=1)
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        tokenize_record({"prompt": [1], "chosen": [5], "rejected": [6], "ref_chosen_logps": float("nan")})
    with pytest.raises(ValueError, match="record 1"):
        tokenize_pairs(
            [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "", "rejected": "c"}], tok
        )


def test_truncation_keeps_prompt_end_and_response_start():
    rec = {"prompt": list(range(10, 20)), "chosen": list(range(30, 38)), "rejected": [40, 41]}
    ex = tokenize_record(rec, eos_token_id=EOS, max_prompt_length=4, max_length=7)
    assert ex.prompt_ids == [16, 17, 18, 19]
    assert ex.chosen_ids == [30, 31, 32]  # EOS cut off: a truncated response does not end
    assert ex.rejected_ids == [40, 41, EOS]
    assert ex.num_truncated_tokens == 6 + (9 - 3)
    # A prompt longer than max_length leaves room for one response token
    ex = tokenize_record(rec, eos_token_id=EOS, max_length=5)
    assert ex.prompt_ids == [16, 17, 18, 19] and ex.chosen_ids == [30] and ex.rejected_ids == [40]


@settings(max_examples=25, deadline=None)
@given(
    p=st.integers(1, 12),
    c=st.integers(1, 12),
    r=st.integers(1, 12),
    max_length=st.one_of(st.none(), st.integers(2, 20)),
    max_prompt=st.one_of(st.none(), st.integers(1, 12)),
)
def test_truncation_invariants(p, c, r, max_length, max_prompt):
    prompt, chosen, rejected = list(range(100, 100 + p)), list(range(200, 200 + c)), list(range(300, 300 + r))
    ex = tokenize_record(
        {"prompt": prompt, "chosen": chosen, "rejected": rejected},
        eos_token_id=EOS,
        max_length=max_length,
        max_prompt_length=max_prompt,
    )
    full_c, full_r = chosen + [EOS], rejected + [EOS]
    assert prompt[len(prompt) - len(ex.prompt_ids) :] == ex.prompt_ids  # a suffix
    assert full_c[: len(ex.chosen_ids)] == ex.chosen_ids and len(ex.chosen_ids) >= 1  # a prefix
    assert full_r[: len(ex.rejected_ids)] == ex.rejected_ids and len(ex.rejected_ids) >= 1
    if max_length is not None:
        assert len(ex.prompt_ids) + max(len(ex.chosen_ids), len(ex.rejected_ids)) <= max_length
    if max_prompt is not None:
        assert len(ex.prompt_ids) <= max_prompt
    dropped = (p - len(ex.prompt_ids)) + (c + 1 - len(ex.chosen_ids)) + (r + 1 - len(ex.rejected_ids))
    assert ex.num_truncated_tokens == dropped


def test_jsonl_roundtrip(tmp_path, tok):
    recs = random_records(5, seed=1)
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    exs = load_jsonl(path, tok, max_length=12)
    assert exs == tokenize_pairs(recs, tok, max_length=12)
    stored = [ex.with_ref(-1.0 - i, -2.0 - i) for i, ex in enumerate(exs)]
    out = tmp_path / "tokenized.jsonl"
    save_jsonl(stored, out)
    assert load_jsonl(out) == stored  # pre-tokenized, refs and truncation counts kept


def test_jsonl_errors(tmp_path):
    with pytest.raises(ValueError, match="path"):
        read_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": [1], "chosen": [2], "rejected": [3]}\n{not json\n')
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(bad)
    bad.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match="line 1"):
        read_jsonl(bad)


def test_datasets_loading(tmp_path, tok):
    datasets = pytest.importorskip("datasets")
    recs = random_records(4, seed=2)
    want = tokenize_pairs(recs, tok)
    ds = datasets.Dataset.from_list(recs)
    assert load_hf_dataset(ds, tok) == want
    assert load_hf_dataset(datasets.DatasetDict({"test": ds}), tok, split="test") == want
    path = tmp_path / "pairs.json"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    assert load_hf_dataset(str(path), tok) == want
    ds.save_to_disk(str(tmp_path / "saved"))
    assert load_hf_dataset(str(tmp_path / "saved"), tok) == want
    # chat-message columns survive the Arrow round trip
    chat = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in recs
    ]
    assert load_hf_dataset(datasets.Dataset.from_list(chat), tok) == tokenize_pairs(chat, tok)
    with pytest.raises(ValueError, match="split"):
        load_hf_dataset(datasets.DatasetDict({"test": ds}), tok, split="train")
    with pytest.raises(ValueError, match="dataset"):
        load_hf_dataset(str(tmp_path / "nope.json"), tok)


def test_tokenize_pair_contract_signature():
    # lf.tokenize_pair(tokenizer, prompt, chosen, rejected, *, max_length, max_prompt_length)
    import lrdpo_fast as lf

    tok = tiny_tokenizer()
    rec = {"prompt": "What is the capital?", "chosen": "Paris.", "rejected": "No idea at all"}
    ex = lf.tokenize_pair(tok, rec["prompt"], rec["chosen"], rec["rejected"])
    assert ex == tokenize_record(rec, tok)
    short = lf.tokenize_pair(tok, rec["prompt"], rec["chosen"], rec["rejected"], max_length=6, max_prompt_length=3)
    assert short == tokenize_record(rec, tok, max_length=6, max_prompt_length=3) and short.num_truncated_tokens > 0
    chat = [{"role": "user", "content": "hi"}]
    assert lf.tokenize_pair(tok, chat, "yes", "no").chosen_ids[-1] == tok.eos_token_id
    with pytest.raises(ValueError, match="chosen"):
        lf.tokenize_pair(tok, "hi", "", "no")
    batch = lf.pack_pairs([ex, short])
    assert batch.num_pairs == 2 and batch.cu_seqlens.dtype == torch.int32


def test_truncated_flags_suppress_the_appended_eos():
    tok = tiny_tokenizer()
    rec = {"prompt": [1, 5, 6], "chosen": [7, 8], "rejected": [9]}
    plain = tokenize_record(rec, tok)
    assert plain.chosen_ids == [7, 8, tok.eos_token_id] and plain.rejected_ids == [9, tok.eos_token_id]
    cut = tokenize_record({**rec, "chosen_truncated": True}, tok)
    assert cut.chosen_ids == [7, 8] and cut.rejected_ids == [9, tok.eos_token_id]
    cut = tokenize_record({**rec, "chosen_truncated": False, "rejected_truncated": True}, tok)
    assert cut.chosen_ids == [7, 8, tok.eos_token_id] and cut.rejected_ids == [9]
    for bad in (1, "yes", None):
        with pytest.raises(ValueError, match="rejected_truncated must be a bool"):
            tokenize_record({**rec, "rejected_truncated": bad}, tok)
