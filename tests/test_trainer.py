"""Trainer and TrainConfig: config round-trip, pair-weighted accumulation, learning, metrics, resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import random_records, tiny_model, tiny_tokenizer

from lrdpo_fast.train.config import TrainConfig
from lrdpo_fast.train.trainer import PAIR_METRICS, Trainer


def _cfg(tmp_path, **kw):
    base = dict(
        beta=0.1,
        alpha=0.01,
        learning_rate=1e-3,
        lr_scheduler="constant",
        pairs_per_step=4,
        max_tokens_per_batch=4096,
        output_dir=str(tmp_path / "run"),
        progress=False,
        plot=False,
        save_final=False,
        device="cpu",  # fp32 and bit-for-bit claims are CPU ones, also on a GPU machine
    )
    base.update(kw)
    return TrainConfig(**base)


def _model():
    return tiny_model("llama", seed=0).train()


# ---- config ----------------------------------------------------------------------------------
def test_config_yaml_round_trip(tmp_path):
    cfg = TrainConfig(beta=0.2, alpha=0.05, loss_type="hinge", warmup_ratio=0.1, max_steps=7, output_dir="x")
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert TrainConfig.from_yaml(path) == cfg
    assert TrainConfig.from_yaml(path, max_steps=3).max_steps == 3
    assert TrainConfig.from_yaml(path, max_steps=None).max_steps == 7  # None = no override


def test_config_unknown_key_names_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("beta: 0.1\nlearning_rat: 1.0e-6\n")
    with pytest.raises(ValueError, match="learning_rat"):
        TrainConfig.from_yaml(path)


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(beta=0.0), "beta"),
        (dict(loss_type="dpo"), "loss_type"),
        (dict(lr_scheduler="step"), "lr_scheduler"),
        (dict(warmup_steps=2, warmup_ratio=0.1), "warmup"),
        (dict(pairs_per_step=0), "pairs_per_step"),
        (dict(dtype="fp16"), "dtype"),
        (dict(max_length=10, max_prompt_length=10), "max_prompt_length"),
    ],
)
def test_config_bad_values_name_the_field(kw, name):
    with pytest.raises(ValueError, match=name):
        TrainConfig(**kw)


# ---- gradient accumulation by pairs ------------------------------------------------------------
def test_uneven_micro_batches_give_full_batch_gradient(tmp_path):
    tok = tiny_tokenizer()
    records = random_records(7, seed=3, max_words=10)
    from lrdpo_fast.data import tokenize_pairs

    sizes = sorted(ex.num_tokens for ex in tokenize_pairs(records, tok))
    grads = []
    n_micro = []
    for budget in (4096, sizes[-1] + sizes[0] // 2):  # one micro-batch vs several uneven ones
        model = _model()
        tr = Trainer(model, tok, records, _cfg(tmp_path, max_tokens_per_batch=budget, pairs_per_step=7))
        totals = tr.accumulate_gradients(list(range(7)))
        n_micro.append(totals.micro_batches)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        assert totals.pairs == 7
    assert n_micro[0] == 1 and n_micro[1] >= 3
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)


# ---- learning and metrics ----------------------------------------------------------------------
def test_loss_decreases_and_metrics_rows(tmp_path):
    tok = tiny_tokenizer()
    cfg = _cfg(tmp_path, pairs_per_step=8, max_steps=8, max_tokens_per_batch=300, lr_scheduler="cosine", warmup_steps=1)
    tr = Trainer(_model(), tok, random_records(8, seed=1, max_words=8), cfg)
    history = tr.train()
    assert [r["step"] for r in history] == list(range(1, 9))
    assert history[-1]["loss"] < history[0]["loss"] - 0.05
    assert history[-1]["rewards/margins"] > 0
    assert abs(history[0]["rewards/margins"]) < 1e-4  # reference = the initial policy
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(history))
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_s", "pairs_per_s", "peak_memory_mb", *PAIR_METRICS):
        assert key in rows[0], key
    assert rows[0]["learning_rate"] == pytest.approx(1e-3)  # warm-up of 1 step
    assert rows[-1]["learning_rate"] < 1e-3
    assert rows[0]["micro_batches"] > 1
    assert tr.summary().startswith("done: 8 steps")


def test_pairs_sources_and_bad_input(tmp_path):
    tok = tiny_tokenizer()
    recs = random_records(3, seed=2)
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    a = Trainer(_model(), tok, str(path), _cfg(tmp_path))
    b = Trainer(_model(), tok, recs, _cfg(tmp_path))
    assert a.examples == b.examples
    with pytest.raises(ValueError, match="pairs"):
        Trainer(_model(), tok, [], _cfg(tmp_path))
    with pytest.raises(ValueError, match="config"):
        Trainer(_model(), tok, recs, {"beta": 0.1})


# ---- checkpoint + resume -----------------------------------------------------------------------
def test_resume_is_bit_for_bit(tmp_path):
    tok = tiny_tokenizer()
    records = random_records(5, seed=4, max_words=8)
    # 3 pairs per step over 5 pairs: steps cross an epoch boundary (reshuffle) at step 2
    kw = dict(pairs_per_step=3, max_steps=4, max_tokens_per_batch=300, lr_scheduler="linear", warmup_steps=1)
    straight = Trainer(_model(), tok, records, _cfg(tmp_path / "a", **kw))
    h_straight = straight.train()

    first = Trainer(_model(), tok, records, _cfg(tmp_path / "b", **kw, save_steps=2))
    first.train_step(), first.train_step()
    ckpt = first.save_checkpoint()
    del first
    resumed = Trainer(_model(), tok, records, _cfg(tmp_path / "b", **kw))
    h_resumed = resumed.train(resume_from_checkpoint=ckpt)
    assert [r["loss"] for r in h_resumed[-2:]] == [r["loss"] for r in h_straight[-2:]]
    assert [r["rewards/margins"] for r in h_resumed[-2:]] == [r["rewards/margins"] for r in h_straight[-2:]]
    sd_a, sd_b = straight.model.state_dict(), resumed.model.state_dict()
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k


def test_checkpoint_loads_with_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = tiny_tokenizer()
    tr = Trainer(_model(), tok, random_records(2, seed=5), _cfg(tmp_path, max_steps=1, save_final=True))
    tr.train()
    assert tr.last_checkpoint.endswith("checkpoint-1")
    loaded = AutoModelForCausalLM.from_pretrained(tr.last_checkpoint)
    AutoTokenizer.from_pretrained(tr.last_checkpoint)
    assert loaded.config._attn_implementation != "lrdpo_varlen"
    for k, v in tr.export_state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_live_reference_matches_precomputed(tmp_path):
    tok = tiny_tokenizer()
    records = random_records(4, seed=6)
    rows = []
    for live in (False, True):
        cfg = _cfg(tmp_path / str(live), max_steps=2, live_reference=live)
        rows.append(Trainer(_model(), tok, records, cfg).train())
    for a, b in zip(*rows):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)


def test_explicit_ref_model(tmp_path):
    tok = tiny_tokenizer()
    records = random_records(3, seed=7)
    ref = tiny_model("llama", seed=1)
    tr = Trainer(_model(), tok, records, _cfg(tmp_path, max_steps=1), ref_model=copy.deepcopy(ref))
    h = tr.train()
    assert abs(h[0]["rewards/margins"]) > 1e-4  # a different reference: non-zero rewards at step 1


def test_gradient_checkpointing_and_dataset_source(tmp_path):
    from datasets import Dataset

    tok = tiny_tokenizer()
    records = random_records(4, seed=8)
    grads = []
    for gc in (False, True):
        model = _model()
        pairs = Dataset.from_list(records) if gc else records
        tr = Trainer(model, tok, pairs, _cfg(tmp_path, gradient_checkpointing=gc))
        tr.accumulate_gradients([0, 1, 2, 3])
        grads.append([p.grad.clone() for p in model.parameters()])
    assert model.is_gradient_checkpointing
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "loss_type, kw",
    [("simpo", dict(beta=2.0, gamma=0.5)), ("ipo", dict(alpha=0.0)), ("sigmoid_norm", {}), ("hinge", {})],
)
def test_other_objectives_train(tmp_path, loss_type, kw):
    tok = tiny_tokenizer()
    cfg = _cfg(tmp_path, loss_type=loss_type, max_steps=2, **kw)
    h = Trainer(_model(), tok, random_records(4, seed=9), cfg).train()
    assert len(h) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in h)


def test_iterative_reuse_reference_is_previous_policy(tmp_path):
    """Phase 2 calls Trainer once per iteration on the live policy: the reference of iteration
    i+1 is the policy trained in iteration i, so its first-step rewards are zero again."""
    tok = tiny_tokenizer()
    records = random_records(4, seed=10)
    model = _model()
    h1 = Trainer(model, tok, records, _cfg(tmp_path / "it0", max_steps=3)).train()
    assert abs(h1[-1]["rewards/margins"]) > 1e-3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr2 = Trainer(model, tok, records, _cfg(tmp_path / "it1", max_steps=1, gradient_checkpointing=True))
    h2 = tr2.train()
    assert tr2.model is model
    assert abs(h2[0]["rewards/margins"]) < 1e-4
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
