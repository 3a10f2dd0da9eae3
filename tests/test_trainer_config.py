"""Trainer configuration over several steps: the per-epoch shuffle of the pairs and the learning-rate
schedule, read off the public metrics rows (``train()``'s history) and ``optim.lr_multiplier``.

(The first step's objective, weight decay and warm-up learning rate are checked against a float64
computation in test_trainer_reference.py.)
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from helpers import tiny_model

from lrdpo_fast.train.config import LR_SCHEDULES, TrainConfig
from lrdpo_fast.train.optim import lr_multiplier
from lrdpo_fast.train.trainer import Trainer

N_PAIRS, PER_STEP, EPOCHS = 6, 2, 2
LR = 1e-3


def expected_multiplier(step, total, warmup, kind):
    """The schedule as the optim module's docstring states it, written out independently."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[kind]


@pytest.mark.parametrize("kind", LR_SCHEDULES)
@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_lr_multiplier_formula(kind, warmup):
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    total = 10
    got = [lr_multiplier(s, total_steps=total, warmup=warmup, kind=kind) for s in range(total + 2)]
    assert got == pytest.approx([expected_multiplier(s, total, warmup, kind) for s in range(total + 2)], abs=1e-12)
    # after the warm-up it is transformers' schedule (whose warm-up spends step 0 at learning rate 0)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    hf = {
        "constant": lambda: get_constant_schedule_with_warmup(opt, warmup),
        "linear": lambda: get_linear_schedule_with_warmup(opt, warmup, total),
        "cosine": lambda: get_cosine_schedule_with_warmup(opt, warmup, total),
    }[kind]().lr_lambdas[0]
    for s in range(warmup, total + 1):
        assert got[s] == pytest.approx(hf(s), abs=1e-12), s
    assert got[total] == pytest.approx(1.0 if kind == "constant" else 0.0, abs=1e-12)


def distinct_length_pairs():
    """Pre-tokenized pairs whose chosen lengths 2^i + 1 identify any set of them by their sum."""
    return [{"prompt": [1, 40 + i], "chosen": [50 + i] * 2**i, "rejected": [60 + i] * 2} for i in range(N_PAIRS)]


def steps_as_pair_sets(trainer, history):
    """The set of pairs each step trained on, decoded from its length/chosen mean."""
    lengths = [ex.chosen_length for ex in trainer.examples]
    by_sum = {}
    for k in range(1, PER_STEP + 1):
        for combo in itertools.combinations(range(N_PAIRS), k):
            by_sum[(k, sum(lengths[i] for i in combo))] = frozenset(combo)
    assert len(by_sum) == sum(math.comb(N_PAIRS, k) for k in range(1, PER_STEP + 1))  # all sums distinct
    return [by_sum[(r["pairs"], round(r["length/chosen"] * r["pairs"]))] for r in history]


def run(tmp_path, **kw):
    cfg = TrainConfig(
        beta=0.1,
        alpha=0.01,
        learning_rate=LR,
        lr_scheduler="cosine",
        warmup_steps=2,
        pairs_per_step=PER_STEP,
        num_epochs=EPOCHS,
        max_tokens_per_batch=256,
        output_dir=str(tmp_path / "run"),
        progress=False,
        plot=False,
        save_final=False,
        device="cpu",
        **kw,
    )
    trainer = Trainer(tiny_model("llama", seed=0).train(), None, distinct_length_pairs(), cfg)
    history = trainer.train()
    return trainer, history


def test_epoch_shuffle_and_schedule(tmp_path):
    steps_per_epoch = N_PAIRS // PER_STEP
    identity = [frozenset(range(i, i + PER_STEP)) for i in range(0, N_PAIRS, PER_STEP)]

    trainer, history = run(tmp_path / "shuffled", shuffle=True, seed=0)
    total = EPOCHS * steps_per_epoch
    assert [r["step"] for r in history] == list(range(1, total + 1))
    sets = steps_as_pair_sets(trainer, history)
    epochs = [sets[e * steps_per_epoch : (e + 1) * steps_per_epoch] for e in range(EPOCHS)]
    for e, steps in enumerate(epochs):  # every epoch visits every pair exactly once
        assert sorted(i for s in steps for i in s) == list(range(N_PAIRS)), e
    assert epochs[0] != identity, "shuffle=True trained the pairs in file order"
    assert epochs[1] != epochs[0], "the pairs were not reshuffled for the second epoch"
    # the learning-rate column follows the schedule (cosine after a 2-step warm-up), step by step
    want = [LR * expected_multiplier(s, total, 2, "cosine") for s in range(total)]
    assert [r["learning_rate"] for r in history] == pytest.approx(want, rel=1e-12)
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-15)  # decayed to 0 at the end

    trainer, history = run(tmp_path / "ordered", shuffle=False)
    assert steps_as_pair_sets(trainer, history) == identity * EPOCHS
