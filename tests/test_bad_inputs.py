"""Bad input, everywhere a user can hand it over: every case asserts the exception TYPE and the WORDS
of its message (the argument, config key, or file and line it names). The CLI cases check the
contract of issue 14: one ``lrdpo-fast: error: ...`` line on stderr, exit code 2, no traceback.

Groups: kernels and losses, data files and records, packing, TrainConfig, IterateConfig, the
Trainer (and its checkpoints), the sampler (the session's engine), the rewards, build_pairs, the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import random_records, tiny_model, tiny_tokenizer

import lrdpo_fast as lf
from lrdpo_fast.data.files import load_hf_dataset, load_jsonl, load_pairs, read_jsonl
from lrdpo_fast.data.packing import pack_pairs, split_pairs, token_budget_batches
from lrdpo_fast.data.records import PairExample, tokenize_pairs, tokenize_record
from lrdpo_fast.ops.validation import NonFiniteInputError
from lrdpo_fast.train.config import TrainConfig

NAN, INF = float("nan"), float("inf")


# ================================================================================================
# kernels and losses
# ================================================================================================
N, D, V = 8, 16, 37


def _lin(**over):
    g = torch.Generator().manual_seed(0)
    args = dict(
        hidden=torch.randn(N, D, generator=g),
        weight=torch.randn(V, D, generator=g),
        labels=torch.randint(0, V, (N,), generator=g),
        cu_seqlens=torch.tensor([0, 2, 4, 6, 8], dtype=torch.int32),
    )
    args["labels"][[0, 2, 4, 6]] = -100
    args.update(over)
    return args


def _poke(t, value, idx=(1, 3)):
    t = t.clone()
    t[idx] = value
    return t


def _fused(**over):
    a = _lin()
    kw = dict(ref_logps=torch.zeros(4), beta=0.1)
    kw.update({k: v for k, v in over.items() if k not in a})
    a.update({k: v for k, v in over.items() if k in a})
    return lf.fused_lrdpo_loss(a["hidden"], a["weight"], a["labels"], a["cu_seqlens"], **kw)


def _seq(**over):
    a = _lin(**{k: v for k, v in over.items() if k in ("hidden", "weight", "labels", "cu_seqlens")})
    kw = {k: v for k, v in over.items() if k not in a}
    return lf.sequence_logprobs(a["hidden"], a["weight"], a["labels"], a["cu_seqlens"], **kw)


def _pair(**over):
    t = dict(
        chosen_logps=torch.tensor([-3.0, -4.0]),
        rejected_logps=torch.tensor([-5.0, -6.0]),
        ref_chosen_logps=torch.tensor([-3.5, -4.0]),
        ref_rejected_logps=torch.tensor([-5.0, -5.5]),
        chosen_lengths=torch.tensor([3, 4]),
        rejected_lengths=torch.tensor([5, 6]),
    )
    kw = {k: v for k, v in over.items() if k not in t}
    t.update({k: v for k, v in over.items() if k in t})
    return lf.lrdpo_loss(*t.values(), **kw)


W = _lin()["weight"]
H = _lin()["hidden"]

KERNEL_CASES = [
    ("label_out_of_vocab", lambda: _seq(labels=torch.full((N,), V)), ValueError, ["labels must lie in [0, 37)", "37"]),
    ("negative_label", lambda: _seq(labels=torch.full((N,), -5)), ValueError, ["labels must lie in", "-5"]),
    ("hidden_nan", lambda: _seq(hidden=_poke(H, NAN)), NonFiniteInputError, ["hidden contains non-finite values"]),
    ("hidden_inf", lambda: _seq(hidden=_poke(H, INF)), NonFiniteInputError, ["hidden contains non-finite values"]),
    ("weight_nan", lambda: _seq(weight=_poke(W, NAN)), NonFiniteInputError, ["weight contains non-finite values"]),
    ("weight_inf", lambda: _seq(weight=_poke(W, -INF)), NonFiniteInputError, ["weight contains non-finite values"]),
    ("bias_nan", lambda: _seq(bias=_poke(torch.zeros(V), NAN, 5)), NonFiniteInputError, ["bias contains non-finite"]),
    ("fused_weight_nan", lambda: _fused(weight=_poke(W, NAN)), NonFiniteInputError, ["weight contains non-finite"]),
    (
        "fused_bias_inf",
        lambda: _fused(bias=_poke(torch.zeros(V), INF, 0)),
        NonFiniteInputError,
        ["bias contains non-finite"],
    ),
    (
        "fused_ref_weight_nan",
        lambda: _fused(ref_logps=None, ref_hidden=H, ref_weight=_poke(W, NAN)),
        NonFiniteInputError,
        ["ref_weight contains non-finite"],
    ),
    (
        "fused_ref_hidden_nan",
        lambda: _fused(ref_logps=None, ref_hidden=_poke(H, NAN)),
        NonFiniteInputError,
        ["ref_hidden contains non-finite"],
    ),
    ("weight_dtype_mismatch", lambda: _seq(weight=W.half()), ValueError, ["weight dtype", "does not match hidden"]),
    ("weight_width", lambda: _seq(weight=torch.randn(V, D + 1)), ValueError, ["weight has shape", "hidden size 16"]),
    ("hidden_1d", lambda: _seq(hidden=torch.randn(N)), ValueError, ["hidden must have 2 dimensions"]),
    ("hidden_int", lambda: _seq(hidden=torch.ones(N, D, dtype=torch.int64)), ValueError, ["hidden must be float32"]),
    ("hidden_not_tensor", lambda: _seq(hidden=[[0.0] * D] * N), ValueError, ["hidden must be a torch.Tensor", "list"]),
    ("labels_float", lambda: _seq(labels=torch.zeros(N)), ValueError, ["labels must be int32 or int64"]),
    (
        "labels_length",
        lambda: _seq(labels=torch.zeros(N - 1, dtype=torch.long)),
        ValueError,
        ["labels has 7 entries", "8 rows"],
    ),
    ("bias_length", lambda: _seq(bias=torch.zeros(V - 1)), ValueError, ["bias has 36 entries"]),
    ("cu_not_from_0", lambda: _seq(cu_seqlens=torch.tensor([1, 4, 8])), ValueError, ["cu_seqlens must start at 0"]),
    (
        "cu_decreasing",
        lambda: _seq(cu_seqlens=torch.tensor([0, 5, 3, 8])),
        ValueError,
        ["cu_seqlens must be non-decreasing"],
    ),
    ("cu_wrong_end", lambda: _seq(cu_seqlens=torch.tensor([0, 4, 7])), ValueError, ["cu_seqlens must end at", "(8)"]),
    ("cu_one_entry", lambda: _seq(cu_seqlens=torch.tensor([0])), ValueError, ["cu_seqlens must hold at least 2"]),
    (
        "odd_sequences",
        lambda: _fused(cu_seqlens=torch.tensor([0, 3, 6, 8])),
        ValueError,
        ["3 sequences", "even number"],
    ),
    ("temperature_zero", lambda: _seq(temperature=0.0), ValueError, ["temperature must be a positive finite number"]),
    ("temperature_bool", lambda: _seq(temperature=True), ValueError, ["temperature must be a positive finite number"]),
    (
        "fused_temperature_inf",
        lambda: _fused(temperature=float("inf")),
        ValueError,
        ["temperature must be a positive finite number"],
    ),
    (
        "backend_name",
        lambda: _seq(backend="cuda"),
        ValueError,
        ["backend must be 'auto', 'torch' or 'triton'", "'cuda'"],
    ),
    (
        "ref_logps_nan",
        lambda: _fused(ref_logps=torch.tensor([0.0, NAN, 0.0, 0.0])),
        ValueError,
        ["ref_logps contains non-finite values"],
    ),
    (
        "ref_logps_shape",
        lambda: _fused(ref_logps=torch.zeros(3)),
        ValueError,
        ["ref_logps must be a float tensor of shape [4]"],
    ),
    ("no_reference", lambda: _fused(ref_logps=None), ValueError, ["needs the reference", "ref_logps"]),
    ("both_references", lambda: _fused(ref_hidden=H), ValueError, ["either ref_logps or ref_hidden"]),
    (
        "simpo_empty_response",
        lambda: _fused(loss_type="simpo", ref_logps=None, labels=torch.full((N,), -100)),
        ValueError,
        ["pair 0 has no chosen response tokens", "'simpo'"],
    ),
    ("beta_zero", lambda: _pair(beta=0.0), ValueError, ["beta must be a positive finite number"]),
    ("beta_string", lambda: _pair(beta="0.1"), ValueError, ["beta must be a number, got str '0.1'"]),
    ("loss_type", lambda: _pair(loss_type="dpo"), ValueError, ["loss_type must be one of", "'dpo'"]),
    ("ipo_alpha", lambda: _pair(loss_type="ipo", alpha=0.1), ValueError, ["alpha must be 0 with loss_type='ipo'"]),
    ("gamma_not_simpo", lambda: _pair(gamma=1.0), ValueError, ["gamma is SimPO's margin"]),
    ("label_smoothing", lambda: _pair(label_smoothing=0.5), ValueError, ["label_smoothing must be in [0, 0.5)"]),
    (
        "chosen_logps_nan",
        lambda: _pair(chosen_logps=torch.tensor([NAN, -4.0])),
        ValueError,
        ["chosen_logps contains non-finite values"],
    ),
    (
        "ref_rejected_inf",
        lambda: _pair(ref_rejected_logps=torch.tensor([-INF, -4.0])),
        ValueError,
        ["ref_rejected_logps contains non-finite values"],
    ),
    (
        "lengths_shape",
        lambda: _pair(rejected_lengths=torch.tensor([5])),
        ValueError,
        ["rejected_lengths must have shape [2]"],
    ),
    (
        "lengths_negative",
        lambda: _pair(chosen_lengths=torch.tensor([-1, 4])),
        ValueError,
        ["chosen_lengths must be >= 0"],
    ),
    (
        "lengths_nan",
        lambda: _pair(chosen_lengths=torch.tensor([NAN, 4.0])),
        ValueError,
        ["chosen_lengths", "non-finite"],
    ),
    (
        "lengths_zero_normalized",
        lambda: _pair(loss_type="sigmoid_norm", rejected_lengths=torch.tensor([0, 6])),
        ValueError,
        ["rejected_lengths must be >= 0, and > 0 for the length-normalized loss"],
    ),
    (
        "logps_int",
        lambda: _pair(chosen_logps=torch.tensor([-3, -4])),
        ValueError,
        ["chosen_logps must be a floating tensor"],
    ),
]


@pytest.mark.parametrize("fn, exc, words", [c[1:] for c in KERNEL_CASES], ids=[c[0] for c in KERNEL_CASES])
def test_kernels_and_losses(fn, exc, words):
    with pytest.raises(exc) as info:
        fn()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_non_finite_weight_refused_on_the_triton_backend_too():
    pytest.importorskip("triton")
    from lrdpo_fast.ops.logprobs import triton_usable

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not triton_usable(dev):
        pytest.skip("triton cannot run here")
    a = _lin()
    with pytest.raises(NonFiniteInputError, match="weight contains non-finite values"):
        lf.sequence_logprobs(
            a["hidden"].to(dev), _poke(W, NAN).to(dev), a["labels"].to(dev), a["cu_seqlens"].to(dev), backend="triton"
        )


def test_a_huge_but_finite_weight_is_not_refused():
    """The one-sum check is confirmed before it raises: a sum that overflows is not a NaN."""
    from lrdpo_fast.ops.validation import check_linear_inputs, nonfinite_flag

    a = _lin()
    w = torch.full((V, D), 3e37)  # every value finite, their fp32 sum is inf
    assert bool(nonfinite_flag(w))
    check_linear_inputs(a["hidden"], w, a["labels"], None, -100, 1.0)  # no error


# ================================================================================================
# data: files, records, vocabulary
# ================================================================================================
GOOD = {"prompt": "Hello world", "chosen": "yes", "rejected": "no"}


def _write(tmp_path, name, content: bytes | str):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


def _lines(*recs):
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs)


DATA_CASES = [
    (
        "bad_json_line",
        lambda t: read_jsonl(_write(t, "a.jsonl", _lines(GOOD, GOOD, '{"prompt": "x",'))),
        ["a.jsonl", "line 3: invalid JSON"],
    ),
    (
        "not_an_object",
        lambda t: read_jsonl(_write(t, "a.jsonl", _lines(GOOD, "[1, 2]"))),
        ["a.jsonl", "line 2: expected a JSON object, got list"],
    ),
    (
        "latin1_bytes",
        lambda t: read_jsonl(_write(t, "a.jsonl", _lines(GOOD).encode() + b'{"prompt": "caf\xe9"}\n')),
        ["a.jsonl", "line 2: not UTF-8 text", "0xe9"],
    ),
    (
        "utf16_file",
        lambda t: read_jsonl(_write(t, "a.jsonl", _lines(GOOD).encode("utf-16"))),
        ["a.jsonl", "line 1: not UTF-8 text"],
    ),
    ("missing_file", lambda t: read_jsonl(t / "nope.jsonl"), ["nope.jsonl", "is not a file"]),
    ("folder_not_file", lambda t: read_jsonl(t), ["is not a file"]),
    (
        "record_missing_chosen",
        lambda t: load_jsonl(_write(t, "p.jsonl", _lines(GOOD, {"prompt": "a", "rejected": "b"})), tiny_tokenizer()),
        ["p.jsonl", "line 2: chosen is missing"],
    ),
    (
        "record_wrong_shape",
        lambda t: load_jsonl(_write(t, "p.jsonl", _lines({**GOOD, "chosen": 5})), tiny_tokenizer()),
        ["p.jsonl", "line 1: chosen must be a string, a list of chat messages or a list of token ids"],
    ),
    (
        "record_ids_outside_vocab",
        lambda t: load_jsonl(
            _write(t, "p.jsonl", _lines(GOOD, "", {"prompt": [1, 5], "chosen": [7, 999], "rejected": [8]})),
            tiny_tokenizer(),
        ),
        ["p.jsonl", "line 3: chosen holds token id 999 outside the tokenizer's vocabulary [0, 320)"],
    ),
    (
        "record_negative_id",
        lambda t: load_jsonl(_write(t, "p.jsonl", _lines({"prompt": [1, -3], "chosen": [7], "rejected": [8]}))),
        ["line 1: prompt holds token id -3", "must be >= 0"],
    ),
    (
        "record_ref_nan",
        lambda t: load_jsonl(_write(t, "p.jsonl", _lines({**GOOD, "ref_chosen_logps": "NaN"})), tiny_tokenizer()),
        ["line 1: ref_chosen_logps must be a finite number"],
    ),
    (
        "json_nan_ref",
        lambda t: load_jsonl(
            _write(t, "p.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c", "ref_rejected_logps": NaN}\n'),
            tiny_tokenizer(),
        ),
        ["line 1: ref_rejected_logps must be a finite number", "nan"],
    ),
    (
        "hf_unsupported_extension",
        lambda t: load_hf_dataset(_write(t, "pairs.txt", "x")),
        ["unsupported extension '.txt'"],
    ),
    ("load_pairs_missing_path", lambda t: load_pairs(t / "missing.jsonl", None), ["missing.jsonl", "does not exist"]),
]


@pytest.mark.parametrize("fn, words", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_data_files(tmp_path, fn, words):
    with pytest.raises(ValueError) as info:
        fn(tmp_path)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


EX = PairExample([1, 5], [7, 2], [8, 2])

RECORD_CASES = [
    ("not_a_mapping", lambda: tokenize_record(["a", "b"]), ["record must be a mapping", "list"]),
    ("text_without_tokenizer", lambda: tokenize_record(GOOD, None), ["prompt is text but tokenizer is None"]),
    ("empty_chosen", lambda: tokenize_record({**GOOD, "chosen": ""}, tiny_tokenizer()), ["chosen is empty"]),
    (
        "chat_without_template",
        lambda: tokenize_record(
            {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"}, _no_template()
        ),
        ["no chat_template"],
    ),
    (
        "ref_string",
        lambda: tokenize_record({**GOOD, "ref_chosen_logps": "-3"}, tiny_tokenizer()),
        ["ref_chosen_logps must be a finite number or None", "'-3'"],
    ),
    ("max_length_1", lambda: tokenize_record(GOOD, tiny_tokenizer(), max_length=1), ["max_length must be an int >= 2"]),
    (
        "vocab_size_explicit",
        lambda: tokenize_record({"prompt": [1], "chosen": [12], "rejected": [3]}, vocab_size=10),
        ["chosen holds token id 12 outside the vocabulary [0, 10)"],
    ),
    (
        "list_names_the_record",
        lambda: tokenize_pairs([GOOD, {**GOOD, "rejected": None}], tiny_tokenizer()),
        ["record 1: rejected is missing"],
    ),
    ("pairs_wrong_type", lambda: load_pairs(42, None), ["pairs must be a JSONL path", "int"]),
    ("pairs_empty", lambda: load_pairs([], None), ["pairs is empty"]),
    (
        "pair_examples_outside_vocab",
        lambda: load_pairs([EX, PairExample([1], [400], [2])], None, vocab_size=320),
        ["pairs[1]: chosen holds token id 400 outside the vocabulary [0, 320)"],
    ),
]


def _no_template():
    import copy

    t = copy.deepcopy(tiny_tokenizer())  # the cached one is read-only
    t.chat_template = None
    return t


@pytest.mark.parametrize("fn, words", [c[1:] for c in RECORD_CASES], ids=[c[0] for c in RECORD_CASES])
def test_records(fn, words):
    with pytest.raises(ValueError) as info:
        fn()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# ================================================================================================
# packing
# ================================================================================================
PACK_CASES = [
    ("empty", lambda: pack_pairs([]), ["examples is empty"]),
    ("not_examples", lambda: pack_pairs([EX, {"prompt": "a"}]), ["examples[1] must be a PairExample", "dict"]),
    ("mixed_reference", lambda: pack_pairs([EX.with_ref(-1.0, -2.0), EX]), ["1 of 2 pairs store reference log-probs"]),
    ("budget_zero", lambda: token_budget_batches([EX], 0), ["max_tokens_per_batch must be a positive int"]),
    ("budget_too_small", lambda: token_budget_batches([EX, EX], 5), ["max_tokens_per_batch=5 is smaller than pair 0"]),
    ("split_odd", lambda: split_pairs(torch.zeros(3)), ["even number of entries"]),
]


@pytest.mark.parametrize("fn, words", [c[1:] for c in PACK_CASES], ids=[c[0] for c in PACK_CASES])
def test_packing(fn, words):
    with pytest.raises(ValueError) as info:
        fn()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# ================================================================================================
# TrainConfig
# ================================================================================================
TRAIN_CONFIG_CASES = [
    ("beta_string", dict(beta="abc"), ["TrainConfig: beta must be a number", "str 'abc'"]),
    ("pairs_per_step_float", dict(pairs_per_step=1.5), ["pairs_per_step must be an int", "1.5"]),
    ("shuffle_string", dict(shuffle="yes"), ["shuffle must be true or false"]),
    ("max_steps_zero", dict(max_steps=0), ["max_steps must be an int >= 1"]),
    ("warmup_ratio_one", dict(warmup_ratio=1.0), ["warmup_ratio must be in [0, 1)"]),
    ("max_grad_norm_negative", dict(max_grad_norm=-1.0), ["TrainConfig: max_grad_norm must be in [0.0, inf]", "-1.0"]),
    ("learning_rate_nan", dict(learning_rate=NAN), ["TrainConfig: learning_rate must be a finite number", "nan"]),
    ("dtype", dict(dtype="fp16"), ["dtype must be one of", "'fp16'"]),
    ("output_dir_empty", dict(output_dir=""), ["output_dir must be a non-empty path"]),
    ("extra_list", dict(extra=[1]), ["extra must be a mapping"]),
    ("adam_beta2_one", dict(adam_beta2=1.0), ["adam_beta2 must be in [0, 1)"]),
]


@pytest.mark.parametrize("kw, words", [c[1:] for c in TRAIN_CONFIG_CASES], ids=[c[0] for c in TRAIN_CONFIG_CASES])
def test_train_config_values(kw, words):
    with pytest.raises(ValueError) as info:
        TrainConfig(**kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


YAML_FILES = [
    ("unknown_key", "beta: 0.1\nlearning_rat: 1.0e-6\n", ["unknown key(s) ['learning_rat']"]),
    ("wrong_type", 'beta: "abc"\n', ["beta must be a number, got str 'abc'"]),
    ("syntax_error", "beta: 0.1\nalpha: [0.1\nseed: 2\n", ["train.yaml", "line 3: not valid YAML"]),
    ("tab_indent", "beta: 0.1\n\talpha: 0.2\n", ["train.yaml", "line 2: not valid YAML"]),
    ("not_a_mapping", "- beta\n- alpha\n", ["train.yaml", "must hold a mapping of keys, got list"]),
    ("scalar", "0.1\n", ["train.yaml", "must hold a mapping of keys, got float"]),
    ("not_utf8", b"beta: 0.1\nnote: caf\xe9\n", ["train.yaml", "is not UTF-8 text", "0xe9"]),
]


@pytest.mark.parametrize("text, words", [c[1:] for c in YAML_FILES], ids=[c[0] for c in YAML_FILES])
def test_train_config_yaml(tmp_path, text, words):
    p = _write(tmp_path, "train.yaml", text)
    with pytest.raises(ValueError) as info:
        TrainConfig.from_yaml(p)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_train_config_yaml_missing_or_folder(tmp_path):
    with pytest.raises(ValueError, match="config path .*missing.yaml' does not exist"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="is not a file"):
        TrainConfig.from_yaml(tmp_path)
    with pytest.raises(ValueError, match="TrainConfig: expected a mapping of field -> value, got list"):
        TrainConfig.from_dict([("beta", 0.1)])


# ================================================================================================
# IterateConfig
# ================================================================================================
BASE_RUN = {"reward": {"callable": "pkg.mod:fn"}}

ITERATE_CASES = [
    ("unknown_top_key", {"iteratons": 2}, ["config has unknown key(s) ['iteratons']"]),
    ("unknown_sampler_key", {"sampler": {"nn": 4}}, ["sampler has unknown key(s) ['nn']"]),
    ("sampler_not_mapping", {"sampler": [4]}, ["sampler must be a mapping, got list"]),
    ("sampler_n_one", {"sampler": {"n": 1}}, ["sampler.n must be an int >= 2, got 1"]),
    (
        "sampler_temperature_string",
        {"sampler": {"temperature": "hot"}},
        ["sampler.temperature must be a finite number"],
    ),
    ("sampler_top_p_zero", {"sampler": {"top_p": 0}}, ["sampler.top_p must be in (0.0, 1.0]"]),
    ("sampler_dtype", {"sampler": {"dtype": "fp8"}}, ["sampler.dtype must be auto, float32, bfloat16 or float16"]),
    ("sampler_enforce_eager", {"sampler": {"enforce_eager": "yes"}}, ["sampler.enforce_eager", "true or false"]),
    ("sampler_cpu_threads", {"sampler": {"cpu_threads": 0}}, ["sampler.cpu_threads"]),
    ("reward_empty", {"reward": None}, ["reward needs exactly one of callable, reward_model, implicit; got none"]),
    (
        "reward_two_kinds",
        {"reward": {"callable": "a:b", "implicit": True, "reference": "r"}},
        ["reward needs exactly one of callable, reward_model, implicit"],
    ),
    (
        "reward_callable_spec",
        {"reward": {"callable": "pkg.fn"}},
        ["reward.callable must look like 'package.module:function'"],
    ),
    ("implicit_without_reference", {"reward": {"implicit": True}}, ["reward.reference is needed with implicit: true"]),
    ("train_output_dir", {"train": {"output_dir": "/tmp/elsewhere"}}, ["train.output_dir is set by the loop"]),
    ("train_wrong_type", {"train": {"beta": "abc"}}, ["IterateConfig: train: TrainConfig: beta must be a number"]),
    ("train_unknown_key", {"train": {"betta": 0.1}}, ["train: TrainConfig: unknown key(s) ['betta']"]),
    ("pairs_strategy", {"pairs": {"strategy": "best"}}, ["pairs.strategy must be one of"]),
    (
        "pairs_length_alpha",
        {"pairs": {"length_alpha": -1}},
        ["pairs.length_alpha must be a float >= 0 or 'auto', got -1"],
    ),
    ("iterations_zero", {"iterations": 0}, ["iterations must be an int >= 1, got 0"]),
    ("seed_bool", {"seed": True}, ["seed must be an int >= 0, got True"]),
    ("eval_without_prompts", {"eval": {"n": 2}}, ["eval is incomplete"]),
    ("policy_empty", {"policy": ""}, ["policy must be a non-empty string"]),
]


@pytest.mark.parametrize("values, words", [c[1:] for c in ITERATE_CASES], ids=[c[0] for c in ITERATE_CASES])
def test_iterate_config(values, words):
    with pytest.raises(ValueError) as info:
        lf.IterateConfig.from_dict({**BASE_RUN, **values})
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize(
    "text, words",
    [
        ("iterations: 2\nsampler: {n: 4\n", ["run.yaml", "not valid YAML"]),
        ("- policy\n", ["run.yaml", "must hold a mapping of keys, got list"]),
        (b"policy: caf\xe9\n", ["run.yaml", "not valid YAML", "utf-8"]),
    ],
    ids=["syntax", "list", "latin1"],
)
def test_iterate_config_yaml(tmp_path, text, words):
    p = _write(tmp_path, "run.yaml", text)
    with pytest.raises(ValueError) as info:
        lf.IterateConfig.from_yaml(p)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_iterate_config_without_reward():
    with pytest.raises(ValueError, match="IterateConfig: reward is missing: give"):
        lf.IterateConfig.from_dict({"iterations": 1})


def test_iterate_config_missing_yaml(tmp_path):
    with pytest.raises(ValueError, match="config path .*nope.yaml' does not exist"):
        lf.IterateConfig.from_yaml(tmp_path / "nope.yaml")


# ================================================================================================
# Trainer and checkpoints
# ================================================================================================
def _tcfg(tmp_path, **kw):
    return TrainConfig(
        **{
            **dict(output_dir=str(tmp_path / "out"), progress=False, plot=False, pairs_per_step=2, learning_rate=1e-3),
            **kw,
        }
    )


def test_trainer_refuses_ids_outside_the_models_vocabulary(tmp_path):
    model = tiny_model("llama", vocab_size=320)
    recs = [{"prompt": [1, 5], "chosen": [7, 2], "rejected": [8, 2]}, {"prompt": [1], "chosen": [320], "rejected": [9]}]
    with pytest.raises(ValueError, match=r"record 1: chosen holds token id 320 outside the vocabulary \[0, 320\)"):
        lf.Trainer(model, None, recs, _tcfg(tmp_path))
    # a model whose LM head is smaller than the tokenizer: text that encodes past it is refused
    small = tiny_model("llama", vocab_size=300)
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 300\)"):
        lf.Trainer(small, tiny_tokenizer(), [{"prompt": [1], "chosen": [310], "rejected": [9]}], _tcfg(tmp_path))


@pytest.mark.parametrize(
    "build, words",
    [
        (
            lambda t: lf.Trainer(tiny_model(), tiny_tokenizer(), random_records(2), config={"beta": 0.1}),
            ["config must be a TrainConfig, got dict"],
        ),
        (
            lambda t: lf.Trainer("model", tiny_tokenizer(), random_records(2), _tcfg(t)),
            ["model must be a torch.nn.Module"],
        ),
        (
            lambda t: lf.Trainer(tiny_model(), tiny_tokenizer(), random_records(2), _tcfg(t)).train("latest"),
            ["resume_from_checkpoint='latest' but", "has no checkpoint"],
        ),
        (
            lambda t: lf.Trainer(tiny_model(), tiny_tokenizer(), random_records(2), _tcfg(t)).train(str(t)),
            ["has no trainer_state.pt: not a trainer checkpoint"],
        ),
        (
            lambda t: lf.Trainer(tiny_model(), tiny_tokenizer(), random_records(2), _tcfg(t)).accumulate_gradients([]),
            ["step_idx is empty"],
        ),
    ],
    ids=["config_dict", "model_string", "resume_latest_none", "resume_not_a_checkpoint", "empty_step"],
)
def test_trainer_bad_arguments(tmp_path, build, words):
    with pytest.raises(ValueError) as info:
        build(tmp_path)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


class _Payload:
    """Would create a folder when unpickled (what a malicious checkpoint would do)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_checkpoint_state_is_loaded_weights_only(tmp_path):
    """A trainer_state.pt holding a pickled callable is refused, and the callable never runs."""
    from lrdpo_fast.train.checkpoint import STATE_FILE, load_trainer_state

    marker = tmp_path / "pwned"
    folder = tmp_path / "checkpoint-1"
    folder.mkdir()
    torch.save({"global_step": 1, "x": _Payload(str(marker))}, folder / STATE_FILE)
    with pytest.raises(ValueError, match="cannot be read as a trainer state .weights-only load"):
        load_trainer_state(folder)
    assert not marker.exists()
    (folder / STATE_FILE).write_bytes(b"truncated")
    with pytest.raises(ValueError, match="checkpoint file .*trainer_state.pt' cannot be read"):
        load_trainer_state(folder)


def test_resume_with_other_pairs_is_refused(tmp_path):
    tr = lf.Trainer(tiny_model(), tiny_tokenizer(), random_records(4), _tcfg(tmp_path, max_steps=1, save_final=True))
    tr.train()
    other = lf.Trainer(tiny_model(), tiny_tokenizer(), random_records(6), _tcfg(tmp_path, max_steps=2))
    with pytest.raises(ValueError, match="was trained on 4 pairs, this trainer has 6: resume needs the same pairs"):
        other.train("latest")


# ================================================================================================
# the sampler (the session's engine: no second engine is started)
# ================================================================================================
SAMPLER_CASES = [
    ("prompts_string", dict(prompts="hello"), ["prompts must be a list of prompts, got str"]),
    ("prompts_empty", dict(prompts=[]), ["prompts is empty"]),
    ("n_zero", dict(n=0), ["n must be an int >= 1, got 0"]),
    ("temperature_negative", dict(temperature=-0.5), ["temperature must be a finite number >= 0"]),
    ("temperature_nan", dict(temperature=NAN), ["temperature must be a finite number >= 0"]),
    ("top_p_zero", dict(top_p=0.0), ["top_p must be in (0.0, 1.0]"]),
    ("max_new_tokens_zero", dict(max_new_tokens=0), ["max_new_tokens must be an int >= 1"]),
    ("stop_empty", dict(stop=[""]), ["stop must be a non-empty string or a list of them"]),
    ("logprobs_string", dict(logprobs="yes"), ["logprobs must be a bool"]),
    ("prompt_empty_string", dict(prompts=["ok", ""]), ["prompts[1] is an empty string"]),
    ("prompt_ids_outside_vocab", dict(prompts=[[1, 2, 99999]]), ["prompts[0] holds token ids outside [0, 320)"]),
    (
        "prompt_single_message",
        dict(prompts=[{"role": "user", "content": "hi"}]),
        ["prompts[0] is a single chat message"],
    ),
    ("prompt_too_long", dict(prompts=[[5] * 300]), ["prompts[0] has 300 tokens", "max_model_len=256"]),
    (
        "prompt_wrong_type",
        dict(prompts=[3.5]),
        ["prompts[0] must be a str, a list of chat messages or a list of token ids"],
    ),
]


@pytest.mark.parametrize("kw, words", [c[1:] for c in SAMPLER_CASES], ids=[c[0] for c in SAMPLER_CASES])
def test_sampler_generate(vllm_sampler, kw, words):
    kw = {"prompts": ["Hello world"], "n": 1, "max_new_tokens": 2, **kw}
    prompts = kw.pop("prompts")
    with pytest.raises(ValueError) as info:
        vllm_sampler.generate(prompts, **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_sampler_load_weights_refuses_bad_tensors_and_keeps_serving(vllm_sampler):
    good = tiny_model("llama", seed=0).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    with pytest.raises(ValueError, match=rf"weights\['{name}'\] holds NaN or infinite values"):
        vllm_sampler.load_weights({**good, name: _poke(good[name], NAN, (0, 0))})
    with pytest.raises(ValueError, match=rf"weights\['{name}'\] has shape \(3, 3\)"):
        vllm_sampler.load_weights({**good, name: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="weights: missing tensor"):
        vllm_sampler.load_weights({k: v for k, v in good.items() if k != name})
    out = vllm_sampler.generate(["Hello world"], n=1, temperature=0.0, max_new_tokens=2)
    assert len(out[0][0].response_ids) >= 1


@pytest.mark.parametrize(
    "kw, words",
    [
        (dict(model="MISSING", seed=-1), ["seed must be an int >= 0"]),
        (dict(model="MISSING", gpu_memory_utilization=1.5), ["gpu_memory_utilization must be in (0, 1]"]),
        (dict(model="MISSING", max_model_len=1), ["max_model_len must be an int >= 2"]),
        (dict(model="MISSING"), ["model must be a local save_pretrained folder with a config.json", "MISSING"]),
    ],
    ids=["seed", "gpu_memory_utilization", "max_model_len", "missing_folder"],
)
def test_sampler_constructor(tmp_path, kw, words):
    pytest.importorskip("vllm")
    from lrdpo_fast.loop.sampler import VLLMSampler

    kw["model"] = str(tmp_path / kw["model"])
    with pytest.raises(ValueError) as info:
        VLLMSampler(**kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# ================================================================================================
# rewards
# ================================================================================================
def _scores_nan(prompts, responses):
    return [0.0, NAN][: len(responses)]


def _scores_short(prompts, responses):
    return [1.0]


def _scores_text(prompts, responses):
    return ["good"] * len(responses)


def _scores_raise(prompts, responses):
    return 1 / 0


def _reward(spec_or_fn):
    from lrdpo_fast.loop.rewards import CallableReward

    return CallableReward(spec_or_fn)


REWARD_CASES = [
    ("spec_without_colon", lambda: _reward("pkg.module.fn"), ["must look like 'package.module:function'"]),
    ("spec_module_missing", lambda: _reward("no_such_module_xyz:fn"), ["cannot import module 'no_such_module_xyz'"]),
    ("spec_attribute_missing", lambda: _reward("os.path:no_such_fn"), ["'os.path' has no attribute 'no_such_fn'"]),
    ("spec_not_callable", lambda: _reward("os:sep"), ["'sep' is a str, not a callable"]),
    ("not_callable", lambda: _reward(42), ["fn_or_spec must be a callable or a 'package.module:function' string"]),
    (
        "returns_nan",
        lambda: _reward(_scores_nan)(["a", "b"], ["x", "y"]),
        ["returned nan at index 1", "scores must be finite"],
    ),
    ("returns_too_few", lambda: _reward(_scores_short)(["a", "b"], ["x", "y"]), ["returned 1 scores for 2 responses"]),
    ("returns_text", lambda: _reward(_scores_text)(["a"], ["x"]), ["returned a non-number at index 0: 'good'"]),
    ("raises", lambda: _reward(_scores_raise)(["a"], ["x"]), ["raised ZeroDivisionError"]),
    (
        "length_mismatch",
        lambda: _reward(_scores_short)(["a", "b"], ["x"]),
        ["prompts and responses must have the same length"],
    ),
    ("response_not_text", lambda: _reward(_scores_short)(["a"], [3]), ["responses[0] must be"]),
]


@pytest.mark.parametrize("fn, words", [c[1:] for c in REWARD_CASES], ids=[c[0] for c in REWARD_CASES])
def test_rewards(fn, words):
    with pytest.raises(ValueError) as info:
        fn()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_reward_model_folders(tmp_path):
    from lrdpo_fast.loop.rewards import ImplicitReward, RewardModel

    with pytest.raises(ValueError, match="is not a local folder"):
        RewardModel(tmp_path / "nope")
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="holds no .safetensors weights .only safetensors are loaded"):
        RewardModel(tmp_path / "rm")
    with pytest.raises(ValueError, match="policy must be a torch.nn.Module"):
        ImplicitReward("policy", tiny_model(), tiny_tokenizer())


# ================================================================================================
# build_pairs
# ================================================================================================
def _sample(ids, finish="stop"):
    from lrdpo_fast.loop.samples import Sample

    return Sample(prompt_ids=[1, 5], response_ids=ids, text="t", finish_reason=finish, truncated=finish == "length")


PAIRS_CASES = [
    ("strategy", dict(strategy="best"), ["strategy must be one of"]),
    ("length_alpha_negative", dict(length_alpha=-0.1), ["length_alpha must be a float >= 0 or 'auto'"]),
    ("length_alpha_word", dict(length_alpha="dice"), ["length_alpha must be a float >= 0 or 'auto', got 'dice'"]),
    ("drop_truncated_string", dict(drop_truncated="yes"), ["drop_truncated must be a bool"]),
    ("min_score_gap_nan", dict(min_score_gap=NAN), ["min_score_gap must be a finite float >= 0"]),
    ("groups_mapping", dict(groups={"a": 1}), ["groups must be a list of ScoredGroup"]),
    (
        "score_nan",
        dict(groups=[("p", [_sample([3, 2]), _sample([4, 2])], [1.0, NAN])]),
        ["groups[0].scores[1] must be a finite number"],
    ),
    (
        "score_count",
        dict(groups=[("p", [_sample([3, 2]), _sample([4, 2])], [1.0])]),
        ["groups[0].scores has 1 values for 2 samples"],
    ),
    ("group_not_tuple", dict(groups=["p"]), ["groups[0] must be a ScoredGroup or a (prompt, samples, scores) tuple"]),
]


@pytest.mark.parametrize("kw, words", [c[1:] for c in PAIRS_CASES], ids=[c[0] for c in PAIRS_CASES])
def test_build_pairs(kw, words):
    from lrdpo_fast.loop.pairs import build_pairs

    groups = kw.pop("groups", [("p", [_sample([3, 2]), _sample([4, 4, 2])], [1.0, 0.0])])
    with pytest.raises(ValueError) as info:
        build_pairs(groups, **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# ================================================================================================
# the CLI: one error line, exit code 2, never a traceback
# ================================================================================================
def _cli_error(capsys, argv, words):
    from lrdpo_fast import cli

    rc = cli.main([str(a) for a in argv])  # an uncaught exception here = a traceback for the user
    err = capsys.readouterr().err
    assert rc == 2, err
    ours = [line for line in err.splitlines() if line.startswith("lrdpo-fast")]
    assert len(ours) == 1 and ours[0].startswith("lrdpo-fast: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in ours[0], (w, ours[0])


def _train_yaml(tmp_path, body):
    return _write(tmp_path, "cfg.yaml", body)


CLI_TRAIN_CASES = [
    ("missing_config", lambda t: t / "nope.yaml", ["nope.yaml", "does not exist"]),
    ("config_is_folder", lambda t: t, ["is not a file"]),
    (
        "yaml_syntax",
        lambda t: _train_yaml(t, "model: example\ndata: example\nbeta: [0.1\n  alpha: 2\n"),
        ["cfg.yaml", "line 4: not valid YAML"],
    ),
    (
        "yaml_wrong_type",
        lambda t: _train_yaml(t, 'model: example\ndata: example\nbeta: "abc"\n'),
        ["TrainConfig: beta must be a number, got str 'abc'"],
    ),
    ("yaml_unknown_key", lambda t: _train_yaml(t, "model: example\ndata: example\nbetaa: 0.1\n"), ["['betaa']"]),
    ("yaml_list", lambda t: _train_yaml(t, "- model\n"), ["must hold a mapping of keys, got list"]),
    ("yaml_latin1", lambda t: _train_yaml(t, b"model: example\ndata: caf\xe9\n"), ["cfg.yaml", "is not UTF-8 text"]),
    ("no_model_key", lambda t: _train_yaml(t, "data: example\n"), ["needs a 'model' key"]),
    (
        "model_folder_missing",
        lambda t: _train_yaml(t, "model: no_model_here\ntokenizer: example\ndata: example\n"),
        ["model folder", "no_model_here' does not exist"],
    ),
    (
        "model_folder_without_config",
        lambda t: (t / "empty").mkdir() or _train_yaml(t, "model: empty\ntokenizer: example\ndata: example\n"),
        ["model folder", "has no config.json"],
    ),
    (
        "tokenizer_folder_missing",
        lambda t: _train_yaml(t, "model: example\ntokenizer: tok\ndata: example\n"),
        ["tokenizer folder", "tok' does not exist"],
    ),
    (
        "ref_model_folder_missing",
        lambda t: _train_yaml(t, "model: example\ntokenizer: example\ndata: example\nref_model: ref\n"),
        ["ref_model folder", "does not exist"],
    ),
    (
        "data_missing",
        lambda t: _train_yaml(t, "model: example\ntokenizer: example\ndata: pairs.jsonl\n"),
        ["pairs.jsonl", "does not exist"],
    ),
    (
        "data_latin1_line",
        lambda t: (
            _write(t, "pairs.jsonl", _lines(GOOD).encode() + b'{"prompt": "\xe9"}\n'),
            _train_yaml(t, "model: example\ntokenizer: example\ndata: pairs.jsonl\n"),
        )[1],
        ["pairs.jsonl", "line 2: not UTF-8 text"],
    ),
    (
        "data_bad_record",
        lambda t: (
            _write(t, "pairs.jsonl", _lines(GOOD, {"prompt": "x", "chosen": "y"})),
            _train_yaml(t, "model: example\ntokenizer: example\ndata: pairs.jsonl\n"),
        )[1],
        ["pairs.jsonl", "line 2: rejected is missing"],
    ),
    (
        "trust_remote_code_string",
        lambda t: _train_yaml(t, "model: example\ndata: example\ntrust_remote_code: yes-please\n"),
        ["trust_remote_code must be true or false"],
    ),
    ("data_not_a_string", lambda t: _train_yaml(t, "model: example\ndata: [1, 2]\n"), ["data must be a path string"]),
]


@pytest.mark.parametrize("make, words", [c[1:] for c in CLI_TRAIN_CASES], ids=[c[0] for c in CLI_TRAIN_CASES])
def test_cli_train(tmp_path, capsys, make, words):
    _cli_error(capsys, ["train", make(tmp_path), "--no-progress", "--output-dir", tmp_path / "out"], words)


def test_cli_train_resume_errors(tmp_path, capsys):
    _cli_error(
        capsys,
        ["train", "--example", "--resume", tmp_path / "nockpt", "--output-dir", tmp_path / "o", "--no-progress"],
        ["nockpt' has no trainer_state.pt"],
    )
    _cli_error(
        capsys,
        ["train", "--example", "--resume", "--output-dir", tmp_path / "o2", "--no-progress"],
        ["resume_from_checkpoint='latest' but", "has no checkpoint"],
    )
    _cli_error(capsys, ["train"], ["give a CONFIG.yaml or --example (exactly one)"])


RUN_YAML = "policy: example\nprompts: example\nreward: {callable: 'lrdpo_fast.demo.task:reward'}\n"

CLI_ITERATE_CASES = [
    ("set_without_equals", ["iterate", "RUN", "--set", "sampler.n"], ["--set expects key=value", "'sampler.n'"]),
    ("set_unknown_key", ["iterate", "RUN", "--set", "sampler.nn=3"], ["sampler has unknown key(s) ['nn']"]),
    ("set_wrong_type", ["iterate", "RUN", "--set", "sampler.n=abc"], ["sampler.n must be an int >= 2, got 'abc'"]),
    ("set_bad_yaml", ["iterate", "RUN", "--set", "train={beta: [1"], ["--set train: value", "is not valid YAML"]),
    (
        "set_train_output_dir",
        ["iterate", "RUN", "--set", "train.output_dir=/tmp/x"],
        ["train.output_dir is set by the loop"],
    ),
    ("missing_run_yaml", ["iterate", "MISSING"], ["missing.yaml' does not exist"]),
    ("run_yaml_syntax", ["iterate", "SYNTAX"], ["syntax.yaml' line 3: not valid YAML"]),
    (
        "phase_bad_set",
        ["sample", "RUN", "--iteration", "0", "--set", "iterations=0"],
        ["iterations must be an int >= 1, got 0"],
    ),
    ("report_missing_run_dir", ["report", "NODIR"], ["has no summary.jsonl"]),
]


@pytest.mark.parametrize("argv, words", [c[1:] for c in CLI_ITERATE_CASES], ids=[c[0] for c in CLI_ITERATE_CASES])
def test_cli_iterate(tmp_path, capsys, argv, words):
    run = _write(tmp_path, "run.yaml", RUN_YAML + f"run_dir: {tmp_path / 'run'}\n")
    _write(tmp_path, "syntax.yaml", "policy: example\nsampler: {n: 4\n")
    subst = {
        "RUN": run,
        "MISSING": tmp_path / "missing.yaml",
        "SYNTAX": tmp_path / "syntax.yaml",
        "NODIR": tmp_path / "nodir",
    }
    _cli_error(capsys, [subst.get(a, a) for a in argv], words)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "--max-steps", "abc"], ["argument --max-steps: invalid int value: 'abc'"]),
        (["train", "--example", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["sample", "run.yaml"], ["the following arguments are required: --iteration"]),
        (["nosuchcommand"], ["invalid choice: 'nosuchcommand'"]),
    ],
    ids=["int_flag", "unknown_flag", "missing_required", "unknown_command"],
)
def test_cli_bad_flags(capsys, argv, words):
    from lrdpo_fast import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err
    for w in words:
        assert w in err, (w, err)


def test_cli_errors_in_a_real_process(tmp_path):
    """What a user sees: exit code 2, exactly one stderr line, no traceback (console entry point)."""
    cfg = _train_yaml(tmp_path, "model: missing_model\ntokenizer: example\ndata: example\n")
    for argv, words in (
        [["train", str(cfg)], ["model folder", "missing_model' does not exist"]],
        [["train", str(tmp_path / "nope.yaml")], ["nope.yaml' does not exist"]],
    ):
        proc = subprocess.run([sys.executable, "-m", "lrdpo_fast", *argv], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("lrdpo-fast: error: "), proc.stderr
        for w in words:
            assert w in lines[0]
