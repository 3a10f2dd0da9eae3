"""The Trainer's guard against non-finite steps, with real NaNs injected into a real model (no mocks):
a bad step is skipped (no optimizer or LR-schedule step, gradients dropped) and logged with
"skipped": true; ``max_bad_steps`` consecutive bad steps stop the run with a clear error, leaving
the last good checkpoint as it was."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from helpers import random_records, tiny_model, tiny_tokenizer

from lrdpo_fast.train.config import TrainConfig
from lrdpo_fast.train.trainer import NonFiniteTrainingError, Trainer


def _trainer(tmp_path, **kw):
    base = dict(
        beta=0.1,
        alpha=0.01,
        learning_rate=1e-3,
        lr_scheduler="linear",
        pairs_per_step=4,
        max_steps=6,
        max_tokens_per_batch=4096,
        output_dir=str(tmp_path / "run"),
        progress=False,
        plot=False,
        save_final=False,
        shuffle=False,
    )
    base.update(kw)
    trainer = Trainer(
        tiny_model("llama", seed=0).train(), tiny_tokenizer(), random_records(24, seed=3), TrainConfig(**base)
    )
    trainer.setup()  # the reference log-probs are computed before any NaN is injected
    return trainer


def _nan_hidden_at(trainer, steps):
    """A forward hook on the final norm that writes NaN into the hidden states while the trainer
    computes one of ``steps`` (1-based)."""

    def hook(module, args, out):
        if trainer.global_step + 1 in steps:
            return out.clone().index_fill_(-1, torch.tensor([0]), float("nan"))
        return out

    return trainer.model.model.norm.register_forward_hook(hook)


def _nan_grad_at(trainer, steps):
    """A forward hook on the first decoder layer whose output's GRADIENT turns NaN in backward at
    ``steps``: the loss stays finite, the gradient norm does not."""

    def hook(module, args, out):
        if trainer.global_step + 1 in steps:
            h = out[0] if isinstance(out, tuple) else out
            h.register_hook(lambda g: g * float("nan"))
        return out

    return trainer.model.model.layers[0].register_forward_hook(hook)


def _params(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("inject", [_nan_hidden_at, _nan_grad_at], ids=["nan_hidden", "nan_grad"])
def test_one_bad_step_is_skipped_and_training_goes_on(tmp_path, inject):
    trainer = _trainer(tmp_path)
    handle = inject(trainer, {2})
    try:
        r1 = trainer.train_step()
        before, lr_step, opt_steps = _params(trainer), trainer.scheduler.last_epoch, trainer.optimizer.state_dict()
        r2 = trainer.train_step()
        after = _params(trainer)
        assert r1["skipped"] is False and r2["skipped"] is True
        assert all(torch.equal(a, b) for a, b in zip(before, after)), "a skipped step must not move the weights"
        assert trainer.scheduler.last_epoch == lr_step, "a skipped step must not step the LR schedule"
        steps = [s["step"] for s in trainer.optimizer.state_dict()["state"].values()]
        assert all(float(s) == 1 for s in steps) and len(steps) == len(opt_steps["state"])
        assert all(p.grad is None for p in trainer.model.parameters()), "the bad step's gradients must be dropped"
        assert trainer.bad_steps == 1
        r3 = trainer.train_step()
        assert r3["skipped"] is False and trainer.bad_steps == 0
        assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
        assert not all(torch.equal(a, b) for a, b in zip(after, _params(trainer)))
    finally:
        handle.remove()
    if inject is _nan_hidden_at:
        assert "hidden contains non-finite values" in r2["nonfinite"]
    else:
        assert r2["grad_norm"] != r2["grad_norm"] and r2["loss"] == r2["loss"]  # NaN grad norm, finite loss


def test_consecutive_bad_steps_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, save_steps=1, max_bad_steps=2, save_final=True, logging_steps=3)
    handle = _nan_hidden_at(trainer, {3, 4, 5, 6})
    run = tmp_path / "run"
    try:
        with pytest.raises(
            NonFiniteTrainingError,
            match=r"step 4: 2 consecutive steps had a non-finite loss or "
            r"gradient \(max_bad_steps=2.*checkpoint-2",
        ):
            trainer.train()
    finally:
        handle.remove()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-1", "checkpoint-2"]
    assert trainer.last_checkpoint == str(run / "checkpoint-2")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # logging_steps=3 logs step 3 anyway; skipped steps are always logged, with a null loss
    assert [(r["step"], r["skipped"]) for r in rows] == [(3, True), (4, True)]
    assert rows[0]["loss"] is None and "hidden contains non-finite values" in rows[0]["nonfinite"]
    # the last good checkpoint resumes: same weights as the live (unchanged since step 2) model
    digest = hashlib.sha256((run / "checkpoint-2" / "model.safetensors").read_bytes()).hexdigest()
    again = _trainer(tmp_path, save_steps=1, max_bad_steps=2, save_final=True)
    again.load_checkpoint(run / "checkpoint-2")
    assert again.global_step == 2
    assert all(torch.equal(a, b) for a, b in zip(_params(again), _params(trainer)))
    assert hashlib.sha256((run / "checkpoint-2" / "model.safetensors").read_bytes()).hexdigest() == digest


def test_a_nan_weight_stops_the_run(tmp_path):
    """A weight set to NaN after two good steps poisons every later step: the run stops at
    max_bad_steps (default 3) and the final checkpoint is not written over good ones."""
    trainer = _trainer(tmp_path, save_final=True, max_steps=8)
    trainer.train_step(), trainer.train_step()
    with torch.no_grad():
        trainer.model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive steps"):
        trainer.train()
    assert trainer.global_step == 5 and trainer.bad_steps == 3
    assert not any(p.name.startswith("checkpoint") for p in (tmp_path / "run").iterdir())


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_max_bad_steps_is_checked(bad):
    with pytest.raises(ValueError, match="max_bad_steps must be an int"):
        TrainConfig(max_bad_steps=bad)
