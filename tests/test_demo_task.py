"""The demo's task, judge, prompt splits, tokenizer and shipped start policy (lrdpo_fast.demo)."""

from __future__ import annotations

import json

import pytest

from lrdpo_fast.demo import task
from lrdpo_fast.demo.policy import BOS_ID, EOS_ID, MODEL_KWARGS, VOCAB, make_tokenizer, start_policy_path

P = "4817="
RIGHT = "7184"
LONG = "Let me reverse the digits of 4817 one by one. The reversed number is 7184."


# ---- truth --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "response, ok",
    [
        ("7184", True),
        ("The answer is 7184.", True),
        (LONG, True),
        ("7148", False),  # two digits swapped
        ("The answer is 4817.", False),  # copied, not reversed
        ("Let me reverse the digits of 4817 one by one. The reversed number is 7194.", False),
        ("Let me reverse the digits of 4817 one by one. The reversed number is", False),  # cut: last number is 4817
        ("71845", False),  # an extra digit
        ("0718", False),
        ("", False),
        ("The answer is", False),
        ("zzzz .. ,", False),
        ("7184 7184", False),  # garbage around the right number
        ("1 7184", False),
        ("7184 1", False),
        ("The reversed ne.e ssss 7184.", False),  # garbled words, right digits
        ("Let me reverse the digits of 4817 one by one. The reversed ne.e 7184.", False),
        ("Let me reverse the digits of 1234 one by one. The reversed number is 7184.", False),  # another number
        ("The answer is 7184", False),  # cut before the full stop
        (" 7184", False),
    ],
)
def test_is_correct_hand_made(response, ok):
    assert task.is_correct(P, response) is ok


def test_parse_response_styles():
    assert task.parse_response(P, "7148") == ("short", "7148")
    assert task.parse_response(P, "The answer is 0000.") == ("medium", "0000")
    assert task.parse_response(P, LONG) == ("long", RIGHT)
    assert task.parse_response(P, "x7184") is None
    with pytest.raises(ValueError, match="prompt"):
        task.parse_response("48=", "84")
    with pytest.raises(ValueError, match="response"):
        task.parse_response(P, 7184)


def test_leading_zero_kept():
    assert task.target("1230=") == "0321"
    assert task.is_correct("1230=", "The answer is 0321.")
    assert not task.is_correct("1230=", "321")


def test_format_answer_styles_are_checked_by_the_rule():
    lengths = {}
    for style in task.STYLES:
        right = task.format_answer(P, style)
        wrong = task.format_answer(P, style, answer="7148")
        assert task.is_correct(P, right) and not task.is_correct(P, wrong)
        lengths[style] = len(right)
    assert lengths == {"short": 4, "medium": 19, "long": 74}
    assert task.format_answer(P, "long") == LONG


def test_judge_is_correctness_plus_capped_length_bonus():
    responses = ["7184", "The answer is 7184.", LONG, "7148", "The answer is 7148.", "x" * 200, ""]
    got = task.judge([P] * len(responses), responses)
    want = [1 + 0.02, 1 + 0.095, 1 + 0.37, 0.02, 0.095, 0.4, 0.0]
    assert got == pytest.approx(want, abs=1e-12)
    assert all(isinstance(x, float) for x in got)
    # the bias the demo is about: a wrong long answer beats a wrong short one, and a right long
    # answer beats a right short one; correctness still dominates
    assert got[2] > got[1] > got[0] > got[5] > got[4] > got[3]


def test_true_accuracy():
    assert task.true_accuracy([P, P, "1230="], ["7184", "7148", "0321"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("fn", [task.judge, task.true_accuracy])
def test_bad_input_names_the_argument(fn):
    with pytest.raises(ValueError, match="same length"):
        fn([P, P], ["7184"])
    with pytest.raises(ValueError, match=r"responses\[1\]"):
        fn([P, P], ["7184", 7184])
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        fn([4817], ["7184"])
    with pytest.raises(ValueError, match="prompts"):
        fn(P, "7184")
    with pytest.raises(ValueError, match="prompt"):
        fn(["4817"], ["7184"])


def test_judge_spec_resolves():
    import importlib

    module, name = "lrdpo_fast.demo.task:judge".split(":")
    assert getattr(importlib.import_module(module), name) is task.judge


# ---- prompt splits ------------------------------------------------------------------------------
def test_prompts_deterministic_distinct_and_well_formed():
    a = task.make_prompts(300, seed=7, split="train")
    assert a == task.make_prompts(300, seed=7, split="train")
    assert a != task.make_prompts(300, seed=8, split="train")
    assert len(set(a)) == 300
    for p in a:
        number = task.parse_prompt(p)
        assert number != number[::-1]  # no palindromes


def test_splits_disjoint_and_sizes():
    train = set(task.make_prompts(task.pool_size("train"), seed=0, split="train"))
    held = set(task.make_prompts(task.pool_size("eval"), seed=0, split="eval"))
    assert len(train) == 4910 and len(held) == 4000
    assert not train & held
    assert len(train | held) == 9000 - 90  # every non-palindromic 4-digit number, once


def test_make_prompts_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        task.make_prompts(3, seed=0, split="test")
    with pytest.raises(ValueError, match="n must"):
        task.make_prompts(task.pool_size("eval") + 1, seed=0, split="eval")
    with pytest.raises(ValueError, match="seed"):
        task.make_prompts(3, seed="0", split="eval")


def test_sft_recipe_deterministic_and_from_train_split():
    from lrdpo_fast.demo.sft import sft_records

    a = sft_records(500, seed=3)
    assert a == sft_records(500, seed=3)
    train = set(task.make_prompts(task.pool_size("train"), seed=0, split="train"))
    assert {r["prompt"] for r in a} <= train
    assert all(task.is_correct(r["prompt"], r["response"]) == r["correct"] for r in a)
    styles = {r["style"] for r in a}
    assert styles == set(task.STYLES)
    err = {s: [not r["correct"] for r in a if r["style"] == s] for s in task.STYLES}
    assert sum(err["long"]) / len(err["long"]) > sum(err["short"]) / len(err["short"])


# ---- tokenizer and shipped policy ----------------------------------------------------------------
def test_tokenizer_round_trip_and_bos_eos():
    tok = make_tokenizer()
    for text in ["7184", "The answer is 7184.", LONG, "a b  c,."]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)  # one token per character
        assert tok.decode(ids) == text
        assert tok.decode([BOS_ID] + ids + [EOS_ID], skip_special_tokens=True) == text
    assert tok(P)["input_ids"][0] == BOS_ID
    assert tok(P)["input_ids"][1:] == tok(P, add_special_tokens=False)["input_ids"]
    # prompt and response tokenized apart = together (what the sampler generated = what the trainer scores)
    assert tok(P + LONG)["input_ids"] == tok(P)["input_ids"] + tok(LONG, add_special_tokens=False)["input_ids"]


def test_pair_tokenization_matches_sampling_layout():
    import lrdpo_fast as lf

    tok = make_tokenizer()
    ex = lf.tokenize_record({"prompt": P, "chosen": LONG, "rejected": "7148"}, tok)
    assert ex.prompt_ids == tok(P)["input_ids"]
    assert ex.chosen_ids == tok(LONG, add_special_tokens=False)["input_ids"] + [EOS_ID]
    assert ex.rejected_ids == tok("7148", add_special_tokens=False)["input_ids"] + [EOS_ID]


def test_shipped_start_policy_loads_with_transformers():
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = start_policy_path()
    size = sum(f.stat().st_size for f in path.iterdir())
    assert size < 4 * 2**20
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["head_dim"] == 32 and cfg["vocab_size"] == len(VOCAB)
    assert cfg["hidden_size"] == MODEL_KWARGS["hidden_size"]
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.convert_ids_to_tokens(list(range(len(VOCAB)))) == VOCAB
    assert (
        tok(LONG, add_special_tokens=False)["input_ids"]
        == make_tokenizer()(LONG, add_special_tokens=False)["input_ids"]
    )
    assert tok.decode(tok(LONG)["input_ids"], skip_special_tokens=True) == LONG
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert next(model.parameters()).dtype == torch.float32
    # it has learned the task: greedy answers from held-out prompts are mostly right
    prompts = task.make_prompts(32, seed=1, split="eval")
    enc = tok(prompts, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=90, pad_token_id=0, eos_token_id=EOS_ID)
    responses = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert task.true_accuracy(prompts, responses) >= 0.75
