"""The Trainer's first step against a float64 computation that shares none of its code.

``reference.reference_step`` runs every sequence alone through a float64 copy of the model
(materialized logits, no packing, no fused kernel, no accumulation) and the pair loss written out
from ALGORITHMS.md; ``reference.adamw_first_step`` is AdamW's first update by hand. Checked through
the public surfaces only (``train_step()``'s metrics row, ``trainer.model``, ``trainer.examples``):
loss, TRL metrics, the pre-clip gradient norm and every parameter after the step, for each
objective, with weight decay, warm-up, uneven micro-batches, a live or an explicit reference, and
the bf16 path. What they catch: the trainer dropping alpha, loss_type, gamma or label smoothing,
weight decay not applied (or applied to norms), a wrong warm-up learning rate, a wrong reference.
"""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from helpers import TRAIN_LINES, tiny_model, tiny_tokenizer
from reference import adamw_first_step, reference_step

from lrdpo_fast.data import tokenize_pairs
from lrdpo_fast.train.config import TrainConfig
from lrdpo_fast.train.trainer import PAIR_METRICS, Trainer

N_PAIRS = 4
LR = 1e-2
WD = 0.1
WARMUP = 2  # step 1 runs at LR * 1/2 (lr_multiplier's (step + 1) / warmup)


def length_records(n=N_PAIRS, seed=0):
    """Pairs whose chosen answer is mostly the LONGER one (the length term has a first-order effect)."""
    rng = random.Random(seed)
    words = " ".join(TRAIN_LINES).split()

    def text(k):
        return " ".join(rng.choice(words) for _ in range(k))

    out = []
    for i in range(n):
        long_, short = text(rng.randint(6, 9)), text(rng.randint(1, 3))
        chosen, rejected = (long_, short) if i % 4 != 3 else (short, long_)
        out.append({"prompt": text(rng.randint(2, 5)), "chosen": chosen, "rejected": rejected})
    return out


def uneven_budget(records, tok):
    """A token budget that splits the pairs into several micro-batches of different pair counts."""
    sizes = sorted(ex.num_tokens for ex in tokenize_pairs(records, tok))
    return sizes[-1] + sizes[0]


def run_first_step(tmp_path, *, ref_model=None, kind="llama", **kw):
    """(trainer, metrics row of step 1, float64 reference, the policy's weights before the step)."""
    tok = tiny_tokenizer()
    records = length_records()
    base = dict(
        beta=0.1,
        alpha=0.0,
        learning_rate=LR,
        weight_decay=WD,
        lr_scheduler="cosine",
        warmup_steps=WARMUP,
        pairs_per_step=N_PAIRS,
        max_steps=3,
        max_tokens_per_batch=uneven_budget(records, tok),
        output_dir=str(tmp_path / "run"),
        progress=False,
        plot=False,
        save_final=False,
        device="cpu",
    )  # also on a GPU machine: test_gpu.py runs these checks on CUDA
    base.update(kw)
    cfg = TrainConfig(**base)
    model = tiny_model(kind, seed=0).train()
    start = copy.deepcopy(model)
    trainer = Trainer(model, tok, records, cfg, ref_model=None if ref_model is None else copy.deepcopy(ref_model))
    row = trainer.train_step()
    want = reference_step(
        start,
        trainer.examples,
        ref_model=ref_model,
        beta=cfg.beta,
        alpha=cfg.alpha,
        loss_type=cfg.loss_type,
        gamma=cfg.gamma,
        label_smoothing=cfg.label_smoothing,
    )
    return trainer, row, want, dict(start.named_parameters())


def check_metrics(row, want, *, rel, abs_):
    assert row["pairs"] == N_PAIRS
    assert row["loss"] == pytest.approx(want.loss, rel=rel, abs=abs_), "loss"
    for key in PAIR_METRICS:
        if key == "rewards/accuracies":  # a step function of the rewards: exact unless a margin is ~0
            continue
        assert row[key] == pytest.approx(want.metrics[key], rel=rel, abs=abs_), key


def check_adamw_step(trainer, row, want, start, *, atol):
    """Every parameter after step 1 = AdamW's first update at the warm-up learning rate, weight
    decay on matrices only (build_optimizer's documented split)."""
    cfg = trainer.cfg
    lr1 = cfg.learning_rate * 1 / WARMUP
    assert row["learning_rate"] == pytest.approx(lr1, rel=1e-12)
    checked = decayed = 0
    for name, p in trainer.model.named_parameters():
        g = want.grads[name]
        wd = cfg.weight_decay if p.dim() >= 2 else 0.0
        expected = adamw_first_step(
            start[name].detach(),
            g,
            lr=lr1,
            weight_decay=wd,
            eps=cfg.adam_eps,
            max_grad_norm=cfg.max_grad_norm,
            grad_norm=want.grad_norm,
        )
        # g / |g| is ill-conditioned where the gradient is ~0 but not exactly 0 (fp32 vs float64
        # noise can flip it): check the well-conditioned elements and the exactly-zero ones
        ok = (g.abs() > 1e-4) | (g == 0)
        got = p.detach().double().cpu()
        err = (got - expected).abs()[ok]
        if err.numel() == 0:  # every element ill-conditioned (tiny gradients): the total below still counts
            continue
        assert float(err.max()) <= atol, f"{name}: parameter after step 1 off by {float(err.max()):.3e}"
        checked += int(ok.sum())
        decayed += int(ok.sum()) if wd else 0
    total = sum(p.numel() for p in trainer.model.parameters())
    assert checked > 0.5 * total and decayed > 0.4 * total


OBJECTIVES = [
    ("sigmoid", dict(alpha=0.1)),
    ("sigmoid", dict(alpha=-0.05, label_smoothing=0.1)),
    ("hinge", dict(alpha=0.05)),
    ("sigmoid_norm", dict(beta=1.0, alpha=0.02)),
    ("simpo", dict(beta=2.0, gamma=0.5, alpha=0.02)),
    ("ipo", dict(beta=0.1)),
]


@pytest.mark.parametrize(
    "loss_type, kw", OBJECTIVES, ids=[f"{t}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for t, kw in OBJECTIVES]
)
def test_first_step_matches_float64(tmp_path, loss_type, kw):
    trainer, row, want, start = run_first_step(tmp_path, loss_type=loss_type, **kw)
    assert row["micro_batches"] >= 2  # uneven micro-batches, weighted by pairs
    check_metrics(row, want, rel=1e-5, abs_=1e-6)
    if loss_type == "ipo":
        # the reference is the policy: every log-ratio is 0 and the loss is exactly (0 - 1/(2 beta))^2
        assert want.loss == pytest.approx(1 / (4 * kw["beta"] ** 2), rel=1e-12)
    if loss_type == "sigmoid" and not kw.get("label_smoothing"):
        # the reference is the policy: the margin is the length term alone, -log sigma(alpha dL)
        d_len = [len(ex.chosen_ids) - len(ex.rejected_ids) for ex in trainer.examples]
        by_hand = sum(math.log1p(math.exp(-kw["alpha"] * d)) for d in d_len) / len(d_len)
        assert row["loss"] == pytest.approx(by_hand, rel=1e-5)
        assert abs(by_hand - math.log(2)) > 0.05  # not DPO's ln 2
    assert row["grad_norm"] == pytest.approx(want.grad_norm, rel=1e-4)
    check_adamw_step(trainer, row, want, start, atol=1e-7)


def test_live_reference_matches_float64(tmp_path):
    # the live reference (a frozen copy run on every micro-batch) against the same float64 step
    trainer, row, want, start = run_first_step(tmp_path, alpha=0.1, live_reference=True)
    check_metrics(row, want, rel=1e-5, abs_=1e-6)
    assert row["grad_norm"] == pytest.approx(want.grad_norm, rel=1e-4)
    check_adamw_step(trainer, row, want, start, atol=1e-7)


def test_explicit_reference_model_matches_float64(tmp_path):
    # a reference other than the policy: step-1 rewards are beta (policy - reference) log-ratios
    ref = tiny_model("llama", seed=1)
    trainer, row, want, start = run_first_step(tmp_path, alpha=0.05, ref_model=ref)
    assert abs(want.metrics["rewards/chosen"]) > 1e-2
    check_metrics(row, want, rel=1e-5, abs_=1e-6)
    assert row["grad_norm"] == pytest.approx(want.grad_norm, rel=1e-4)
    check_adamw_step(trainer, row, want, start, atol=1e-7)


def test_bf16_first_step(tmp_path):
    """dtype="bf16": the decoder under bf16 autocast and the fused loss on bf16 hidden states and
    LM head, against the float64 step of the same fp32 weights.

    Tolerances from bf16's unit roundoff u = 2^-8 and the quantity's scale: a logit h . W_v moves
    by about u times the 2-norm of its terms per rounding (a few roundings through the bf16 decoder:
    8u), a sequence's log-prob by that summed over its tokens in quadrature (sqrt(N) growth:
    ``logp_noise``). The loss moves by at most beta times two sequences' error; the gradient norm by
    a few u relative. The length term (alpha = 0.1 with the chosen answer mostly longer) moves the
    loss ~0.1 from DPO's ln 2: far outside them."""
    trainer, row, want, start = run_first_step(tmp_path, alpha=0.1, dtype="bf16")
    check_bf16_first_step(trainer, row, want, start)


def check_bf16_first_step(trainer, row, want, start):
    """The bf16 first step against the float64 one (tolerances: ``test_bf16_first_step``)."""
    u = 2.0**-8
    # the bf16 path really ran: the log-probs are further from float64 than float32 ever gets
    assert max(abs(row[k] - want.metrics[k]) / abs(want.metrics[k]) for k in ("logps/chosen", "logps/rejected")) > 1e-5
    beta = trainer.cfg.beta
    logp_tol = 8 * u * want.logp_noise  # per sequence
    # means over pairs of per-sequence values: within the largest per-sequence tolerance
    for key in ("logps/chosen", "logps/rejected"):
        assert row[key] == pytest.approx(want.metrics[key], abs=float(logp_tol.max())), key
    # policy = reference at step 1: rewards are bf16 noise around 0 (both through the same bf16 path)
    margin_tol = 2 * beta * float(logp_tol.max())
    assert abs(row["rewards/margins"]) <= margin_tol
    assert row["loss"] == pytest.approx(want.loss, abs=margin_tol)
    assert abs(want.loss - math.log(2)) > 10 * margin_tol  # the length term is far above the noise
    assert row["grad_norm"] == pytest.approx(want.grad_norm, rel=4 * u)
    # the update follows the float64 gradient where it is large; fp32 master weights
    lr1 = trainer.cfg.learning_rate / WARMUP
    for name, p in trainer.model.named_parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all(), name
        g = want.grads[name]
        big = g.abs() > 0.1 * g.abs().max()
        step = p.detach().double().cpu() - start[name].detach().double()
        if big.any():
            assert (torch.sign(step[big]) == -torch.sign(g[big])).all(), name
            assert float(step[big].abs().max()) <= 1.01 * lr1 * (1 + trainer.cfg.weight_decay), name


@pytest.mark.parametrize("kind", ["granite", "cohere", "gemma2"])
def test_heads_that_transform_logits_match_float64(tmp_path, kind):
    # Granite divides its logits by 4, Cohere multiplies them by 0.25, Gemma 2 soft-caps them (and
    # its attention scores) at 3 and 2 (helpers' tiny configs): the fused step must see the model's
    # real logits, as the float64 forward with materialized logits does
    trainer, row, want, start = run_first_step(tmp_path, kind=kind, alpha=0.1, live_reference=True)
    assert type(trainer.model).__name__.lower().startswith(kind)
    check_metrics(row, want, rel=1e-5, abs_=1e-6)
    assert row["grad_norm"] == pytest.approx(want.grad_norm, rel=1e-4)
    check_adamw_step(trainer, row, want, start, atol=1e-7)
