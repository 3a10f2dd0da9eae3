"""Rewards: RewardModel against a direct transformers forward, CallableReward specs and output
checks, ImplicitReward against a float64 materialized-logits reference and the Trainer's metric."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import tiny_config, tiny_model, tiny_tokenizer

from lrdpo_fast.data.records import tokenize_record
from lrdpo_fast.loop.rewards import CallableReward, ImplicitReward, RewardModel, check_scores

PROMPTS = [
    "What is the capital of France?",
    [{"role": "user", "content": "Write a short poem about the sea."}],
    "Hello world",
    [{"role": "system", "content": "Answer: yes."}, {"role": "user", "content": "Maybe, maybe not?"}],
    "Explain length regularized preference optimization.",
]
RESPONSES = [
    "The capital of France is Paris.",
    "Waves roll softly under the moon.",
    "this is a small test of a tiny tokenizer",
    "no",
    "The quick brown fox jumps over the lazy dog. Numbers 0 1 2 3 4 5 6 7 8 9.",
]


# ---- RewardModel ---------------------------------------------------------------------------------
def _save_reward_model(path, *, pad_is_eos=False, chat=True):
    from transformers import LlamaForSequenceClassification

    cfg = tiny_config("llama", num_labels=1)
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg)
    torch.random.set_rng_state(state)
    with torch.no_grad():  # a score head large enough that scores differ visibly
        model.score.weight.mul_(20.0)
    tok = copy.deepcopy(tiny_tokenizer())
    if pad_is_eos:
        tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.eos_token_id
    if not chat:
        tok.chat_template = None
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return _save_reward_model(tmp_path_factory.mktemp("rm"))


def _last_token_score(model, ids):
    """Direct transformers forward of ONE unpadded sequence; pad_token_id=None makes
    transformers pool the last position."""
    m = copy.deepcopy(model)
    m.config.pad_token_id = None
    with torch.no_grad():
        return m(input_ids=torch.tensor([ids])).logits[0, 0].item()


def test_reward_model_equals_direct_forward_on_rendered_text(rm_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rm = RewardModel(rm_dir, batch_size=2, device="cpu")
    scores = rm(PROMPTS, RESPONSES)
    tok = AutoTokenizer.from_pretrained(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32).eval()
    expected = []
    for p, r in zip(PROMPTS, RESPONSES):
        msgs = ([{"role": "user", "content": p}] if isinstance(p, str) else list(p)) + [
            {"role": "assistant", "content": r}
        ]
        text = tok.apply_chat_template(msgs, tokenize=False)
        assert text.endswith("<|im_start|>assistant\n" + r + "<|im_end|>\n")
        expected.append(_last_token_score(model, tok(text, add_special_tokens=False)["input_ids"]))
    assert scores == pytest.approx(expected, abs=1e-5)
    assert max(expected) - min(expected) > 1e-2  # the scores do tell responses apart


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_reward_model_batched_equals_one_at_a_time_left_and_right(tmp_path, pad_is_eos):
    path = _save_reward_model(tmp_path / "rm", pad_is_eos=pad_is_eos, chat=False)
    prompts = [p for p in PROMPTS if isinstance(p, str)]
    responses = [r + " </s>" for r in RESPONSES[: len(prompts)]]  # text that ends with the EOS token
    one = RewardModel(path, batch_size=1)
    assert not one.has_chat_template
    ref = one(prompts, responses)
    for side in ("right", "left"):
        rm = RewardModel(path, batch_size=3)
        rm.tokenizer.padding_side = side
        assert rm(prompts, responses) == pytest.approx(ref, abs=1e-5), side
    # plain concatenation, special tokens of the tokenizer added: the last token is the EOS (and,
    # with pad_is_eos, the pad id too: pooling on "the last non-pad token" would miss it)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    direct = [_last_token_score(model, tok(p + r)["input_ids"]) for p, r in zip(prompts, responses)]
    assert tok(prompts[0] + responses[0])["input_ids"][-1] == tok.eos_token_id
    assert ref == pytest.approx(direct, abs=1e-5)


def test_reward_model_max_length_keeps_the_end(rm_dir):
    rm = RewardModel(rm_dir, max_length=12)
    full = rm.encode(PROMPTS[0], RESPONSES[0])
    assert len(full) > 12
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32).eval()
    assert rm([PROMPTS[0]], [RESPONSES[0]]) == pytest.approx([_last_token_score(model, full[-12:])], abs=1e-5)
    assert rm.num_truncated == 1


def test_reward_model_refuses_bad_folders_and_args(tmp_path, rm_dir):
    with pytest.raises(ValueError, match="path"):
        RewardModel(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="safetensors"):
        RewardModel(tmp_path / "empty")
    with pytest.raises(ValueError, match="batch_size"):
        RewardModel(rm_dir, batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        RewardModel(rm_dir, dtype="fp8")
    from transformers import LlamaForSequenceClassification

    two = tmp_path / "two_labels"
    LlamaForSequenceClassification(tiny_config("llama", num_labels=2)).save_pretrained(two)
    tiny_tokenizer().save_pretrained(two)
    with pytest.raises(ValueError, match="num_labels"):
        RewardModel(two)
    rm = RewardModel(rm_dir)
    with pytest.raises(ValueError, match=r"responses\[1\]"):
        rm(["a", "b"], ["x", [1, 2]])
    with pytest.raises(ValueError, match="same length"):
        rm(["a", "b"], ["x"])
    assert rm([], []) == []


# ---- CallableReward and the shared output check ---------------------------------------------------
def length_rule(prompts, responses):
    """A rule used by spec below: characters of the response."""
    return [float(len(r)) for r in responses]


def test_callable_reward_from_function_and_spec():
    by_fn = CallableReward(length_rule)
    spec = f"{__name__}:length_rule"  # this test module, however pytest imported it
    by_spec = CallableReward(spec)
    assert by_fn(["p", "q"], ["ab", "abcd"]) == [2.0, 4.0]
    assert by_spec(["p", "q"], ["ab", "abcd"]) == [2.0, 4.0]
    assert by_spec.name == spec
    # numpy arrays, tensors and bools are accepted
    assert CallableReward(lambda p, r: torch.tensor([1.0, 2.0]))(["a", "b"], ["c", "d"]) == [1.0, 2.0]
    assert CallableReward(lambda p, r: [True, False])(["a", "b"], ["c", "d"]) == [1.0, 0.0]


@pytest.mark.parametrize(
    "spec, match",
    [
        ("no_such_pkg.rules:score", "cannot import module 'no_such_pkg.rules'"),
        ("math:no_such_function", "has no attribute 'no_such_function'"),
        ("math:pi", "not a callable"),
        ("math.sqrt", "package.module:function"),
        ("math:", "package.module:function"),
    ],
)
def test_callable_reward_bad_spec_names_it(spec, match):
    with pytest.raises(ValueError, match=match) as e:
        CallableReward(spec)
    assert repr(spec) in str(e.value)


def _boom(prompts, responses):
    raise RuntimeError("judge offline")


@pytest.mark.parametrize(
    "fn, match",
    [
        (_boom, "raised RuntimeError: judge offline"),
        (lambda p, r: [1.0, 2.0], "returned 2 scores for 3 responses"),
        (lambda p, r: [1.0, None, 2.0], "non-number at index 1"),
        (lambda p, r: [1.0, 2.0, "3"], "non-number at index 2"),
        (lambda p, r: [1.0, float("nan"), float("nan")], "nan at index 1"),
        (lambda p, r: [float("-inf"), 0.0, 0.0], "-inf at index 0"),
        (lambda p, r: 3.0, "returned float"),
    ],
)
def test_bad_reward_output_names_the_reward_and_index(fn, match):
    reward = CallableReward(fn)
    with pytest.raises(ValueError, match=match) as e:
        reward(["a", "b", "c"], ["x", "y", "z"])
    assert reward.name in str(e.value)


def test_check_scores_directly():
    assert check_scores((1, 2.5), 2, "r") == [1.0, 2.5]
    with pytest.raises(ValueError, match=r"reward r returned inf at index 1"):
        check_scores([0.0, math.inf], 2, "r")


# ---- ImplicitReward --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    return tiny_model("llama", seed=0), tiny_model("llama", seed=1), tiny_tokenizer()


def _reference_logp(m, prompt_ids, response_ids):
    """float64 model ``m``, materialized logits: sum of log p(response token | prefix)."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(m(input_ids=ids).logits[0].double(), -1)
    P = len(prompt_ids)
    return sum(logp[t - 1, ids[0, t]].item() for t in range(P, ids.shape[1]))


def _mixed_inputs(tok):
    """Text, chat and token-id prompts; several responses per prompt (odd counts too)."""
    ids_prompt = [tok.bos_token_id] + tok("Answer: yes. Answer: no.", add_special_tokens=False)["input_ids"]
    resp_ids = tok(" Maybe, maybe not", add_special_tokens=False)["input_ids"]
    prompts = [PROMPTS[0], PROMPTS[0], PROMPTS[0], PROMPTS[1], ids_prompt, ids_prompt, PROMPTS[2]]
    responses = [
        RESPONSES[0],
        RESPONSES[4],
        "Paris",
        RESPONSES[1],
        resp_ids + [tok.eos_token_id],
        resp_ids,
        RESPONSES[2],
    ]
    return prompts, responses


def test_implicit_reward_equals_float64_reference(models):
    policy, ref, tok = models
    prompts, responses = _mixed_inputs(tok)
    got = ImplicitReward(policy, ref, tok, max_tokens_per_batch=128)(prompts, responses)
    policy, ref = (copy.deepcopy(m).double().eval() for m in (policy, ref))
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ex = tokenize_record({"prompt": p, "chosen": r, "rejected": r}, tok)
        want = _reference_logp(policy, ex.prompt_ids, ex.chosen_ids) - _reference_logp(
            ref, ex.prompt_ids, ex.chosen_ids
        )
        assert got[i] == pytest.approx(want, abs=2e-4), i
    # id responses: the EOS is appended once (not twice) to the one that lacks it
    assert got[4] == pytest.approx(got[5], abs=1e-5)
    assert len(set(round(v, 4) for v in got)) >= 5  # the responses are told apart


def test_implicit_reward_scores_a_truncated_sample_without_an_eos(models):
    """As training does (pair records' *_truncated): a response cut by the token budget is scored
    on exactly its tokens; one that ended is scored with its EOS."""
    policy, ref, tok = models
    prompt = [tok.bos_token_id] + tok("Answer: yes.", add_special_tokens=False)["input_ids"]
    resp = tok(" Maybe, maybe not", add_special_tokens=False)["input_ids"]
    reward = ImplicitReward(policy, ref, tok)
    got = reward([prompt, prompt], [resp, resp], truncated=[True, False])
    assert got[1] == pytest.approx(reward([prompt], [resp])[0], abs=1e-6)  # the default: not truncated
    p64, r64 = (copy.deepcopy(m).double().eval() for m in (policy, ref))
    exact = _reference_logp(p64, prompt, resp) - _reference_logp(r64, prompt, resp)
    with_eos = _reference_logp(p64, prompt, resp + [tok.eos_token_id]) - _reference_logp(
        r64, prompt, resp + [tok.eos_token_id]
    )
    assert got[0] == pytest.approx(exact, abs=2e-4) and got[1] == pytest.approx(with_eos, abs=2e-4)
    assert abs(exact - with_eos) > 1e-2  # the EOS term is not negligible here
    with pytest.raises(ValueError, match="truncated must be a list of 2 bools"):
        reward([prompt, prompt], [resp, resp], truncated=[True])


def test_implicit_reward_truncates_as_the_trainer_does(models):
    """With the Trainer's max_length / max_prompt_length, a long response is scored on the tokens
    training sees (prompt end kept, response start kept, the cut-off EOS gone)."""
    policy, ref, tok = models
    prompt = [tok.bos_token_id] + tok("Answer: yes. Answer: no. Answer: maybe.", add_special_tokens=False)["input_ids"]
    resp = tok(" Maybe, maybe not, or maybe yes", add_special_tokens=False)["input_ids"]
    full = ImplicitReward(policy, ref, tok)([prompt], [resp])[0]
    cut = ImplicitReward(policy, ref, tok, max_length=12, max_prompt_length=5)([prompt], [resp])[0]
    ex = tokenize_record({"prompt": prompt, "chosen": resp, "rejected": resp}, tok, max_length=12, max_prompt_length=5)
    assert len(ex.prompt_ids) == 5 and len(ex.chosen_ids) == 7 and ex.chosen_ids[-1] != tok.eos_token_id
    p64, r64 = (copy.deepcopy(m).double().eval() for m in (policy, ref))
    want = _reference_logp(p64, ex.prompt_ids, ex.chosen_ids) - _reference_logp(r64, ex.prompt_ids, ex.chosen_ids)
    assert cut == pytest.approx(want, abs=2e-4) and abs(cut - full) > 1e-2
    for bad in (1, 0.5, True):
        with pytest.raises(ValueError, match="max_length"):
            ImplicitReward(policy, ref, tok, max_length=bad)


def test_implicit_reward_scores_empty_responses(models):
    """A sampler's empty answer (EOS at once) gets the score of its EOS instead of stopping the
    loop (build_pairs drops it later); with no EOS known there is no token to score: 0."""
    policy, ref, tok = models
    prompt = [tok.bos_token_id] + tok("Answer: yes.", add_special_tokens=False)["input_ids"]
    eos = [tok.eos_token_id]
    got = ImplicitReward(policy, ref, tok)([prompt, prompt, "Answer: yes.", prompt], [eos, [], "", [5, 6]])
    p64, r64 = (copy.deepcopy(m).double().eval() for m in (policy, ref))
    want = _reference_logp(p64, prompt, eos) - _reference_logp(r64, prompt, eos)
    assert got[0] == pytest.approx(want, abs=2e-4) and got[1] == got[0] and got[2] == pytest.approx(want, abs=2e-4)
    assert abs(want) > 1e-3 and got[3] != got[0]  # a real score, and the other response still scored

    class NoEos:
        eos_token_id = None
        bos_token_id = None

    assert ImplicitReward(policy, ref, NoEos())([prompt, prompt], [[], [5, 6]])[0] == 0.0


def test_implicit_reward_independent_of_batching_and_order(models):
    policy, ref, tok = models
    prompts, responses = _mixed_inputs(tok)
    a = ImplicitReward(policy, ref, tok, max_tokens_per_batch=8192)(prompts, responses)
    b = ImplicitReward(policy, ref, tok, max_tokens_per_batch=120)(prompts, responses)
    perm = [6, 2, 4, 0, 5, 3, 1]
    c = ImplicitReward(policy, ref, tok, max_tokens_per_batch=100)(
        [prompts[i] for i in perm], [responses[i] for i in perm]
    )
    assert b == pytest.approx(a, abs=1e-4)
    assert c == pytest.approx([a[i] for i in perm], abs=1e-4)
    assert ImplicitReward(policy, policy, tok)(prompts, responses) == [0.0] * len(prompts)


def test_implicit_reward_never_calls_the_lm_head_and_restores_modes(models):
    policy, ref, tok = models
    pol, rf = copy.deepcopy(policy).train(), copy.deepcopy(ref).eval()

    def refuse(*args, **kwargs):
        raise AssertionError("the LM head module ran: [tokens x vocab] logits were materialized")

    for m in (pol, rf):
        m.lm_head.forward = refuse
    scores = ImplicitReward(pol, rf, tok)([PROMPTS[0]], [RESPONSES[0]])
    assert len(scores) == 1
    assert pol.training and not rf.training
    assert all(p.grad is None for p in pol.parameters())


@pytest.mark.parametrize("chat", [False, True])
def test_implicit_reward_equals_trainer_reward_metric(models, tmp_path, chat):
    from lrdpo_fast.train.config import TrainConfig
    from lrdpo_fast.train.trainer import Trainer

    policy, ref, tok = models
    if chat:
        record = {"prompt": PROMPTS[1], "chosen": RESPONSES[1], "rejected": RESPONSES[3]}
    else:  # the exact-ids form build_pairs writes
        ids = [tok.bos_token_id] + tok(PROMPTS[0], add_special_tokens=False)["input_ids"]
        record = {
            "prompt_input_ids": ids,
            "chosen_input_ids": tok(RESPONSES[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
            "rejected_input_ids": tok(RESPONSES[4], add_special_tokens=False)["input_ids"],
        }
    p = record.get("prompt_input_ids", record.get("prompt"))
    c = record.get("chosen_input_ids", record.get("chosen"))
    r = record.get("rejected_input_ids", record.get("rejected"))
    implicit = ImplicitReward(policy, ref, tok)([p, p], [c, r])
    beta = 0.25
    cfg = TrainConfig(
        beta=beta,
        alpha=0.0,
        learning_rate=1e-9,
        lr_scheduler="constant",
        max_steps=1,
        pairs_per_step=1,
        max_tokens_per_batch=4096,
        output_dir=str(tmp_path / "run"),
        progress=False,
        plot=False,
        save_final=False,
    )
    trainer = Trainer(copy.deepcopy(policy), tok, [record], cfg, ref_model=copy.deepcopy(ref))
    row = trainer.train_step()  # metrics of the first step are computed before the update
    assert row["rewards/chosen"] / beta == pytest.approx(implicit[0], abs=1e-4)
    assert row["rewards/rejected"] / beta == pytest.approx(implicit[1], abs=1e-4)


def test_implicit_reward_bad_input_names_the_argument(models):
    policy, ref, tok = models
    with pytest.raises(ValueError, match="ref_model"):
        ImplicitReward(policy, "ref", tok)
    with pytest.raises(ValueError, match="max_tokens_per_batch"):
        ImplicitReward(policy, ref, tok, max_tokens_per_batch=1)
    reward = ImplicitReward(policy, ref, tok, max_tokens_per_batch=16)
    with pytest.raises(ValueError, match="max_tokens_per_batch=16"):
        reward([PROMPTS[0]], [RESPONSES[4]])
    with pytest.raises(ValueError, match=r"responses\[1\]"):
        reward(["a", "b"], ["x", {"text": "y"}])
    with pytest.raises(ValueError, match="root must be None or a PolicyLoss-like module"):
        reward.through_root(policy)  # the bare policy has no sequence_logps
    with pytest.raises(ValueError, match=r"ImplicitReward: prompts\[0\] must be"):
        reward([[]], [[5, 6]])  # (an empty response is scored: test_implicit_reward_scores_empty_responses)


def test_the_loop_s_implicit_reward_takes_the_train_section_s_truncation(models, tiny_model_dir):
    from lrdpo_fast.loop.rewards import RewardSpec, build_reward

    policy, _, tok = models
    spec = RewardSpec(implicit=True, reference=str(tiny_model_dir))
    reward = build_reward(spec, policy, tok, max_length=12, max_prompt_length=5)
    assert isinstance(reward, ImplicitReward) and (reward.max_length, reward.max_prompt_length) == (12, 5)
    assert build_reward(spec, policy, tok).max_length is None
