"""The preference objectives on per-sequence values, and the metrics TRL users know.

Every objective is a function of one pair's summed response log-probs under the policy (``pi``)
and the reference (``ref``) and of the two response lengths ``L`` (tokens). With
``Δ = (pi_w - ref_w) - (pi_l - ref_l)`` and the length term ``α (L_w - L_l)``:

============== =========================================================== ===================
loss_type      per-pair loss                                               length term
============== =========================================================== ===================
sigmoid        -log σ(z), z = β Δ + α (L_w - L_l)                          yes (LR-DPO/R-DPO)
hinge          max(0, 1 - z), same z                                       yes
sigmoid_norm   -log σ(z), z = β [(pi_w-ref_w)/L_w - (pi_l-ref_l)/L_l]      yes
                            + α (L_w - L_l)      (LN-DPO)
simpo          -log σ(z), z = β (pi_w/L_w - pi_l/L_l) - γ + α (L_w - L_l)   yes; no reference
ipo            (h - 1/(2β))², h = (pi_w-ref_w)/L_w - (pi_l-ref_l)/L_l      no: alpha must be 0
============== =========================================================== ===================

IPO regresses a per-token averaged log-ratio to the fixed target 1/(2β); an additive length term
in token units has no consistent scale there, so ``alpha != 0`` with ``ipo`` is rejected.
``label_smoothing`` ε (conservative DPO) applies to the sigmoid family:
``-(1-ε) log σ(z) - ε log σ(-z)``. ``gamma`` is SimPO's target margin and only valid for simpo.
At the LR-DPO optimum β·log(π/ref) tracks r(x, y) - α|y|: longer answers must earn their length.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kernels.loss_types import LOSS_TYPE_CODES
from .validation import check_same_device

LOSS_TYPES = tuple(LOSS_TYPE_CODES)  # ("sigmoid", "ipo", "hinge", "sigmoid_norm", "simpo")
LENGTH_NORMALIZED = frozenset({"ipo", "sigmoid_norm", "simpo"})
SIGMOID_FAMILY = frozenset({"sigmoid", "sigmoid_norm", "simpo"})
LOSS_TYPE_IDS = LOSS_TYPE_CODES  # the Triton pair-loss kernel's codes, owned by kernels/loss_types.py


def check_loss_args(loss_type: str, beta: float, alpha: float, gamma: float, label_smoothing: float) -> None:
    """Hyper-parameter checks shared by lrdpo_loss and fused_lrdpo_loss (types before values)."""
    for name, v in (("beta", beta), ("alpha", alpha), ("gamma", gamma), ("label_smoothing", label_smoothing)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise ValueError(f"{name} must be a number, got {type(v).__name__} {v!r}")
    if not isinstance(loss_type, str) or loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not (beta > 0 and beta != float("inf")):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    if alpha != alpha or abs(alpha) == float("inf"):
        raise ValueError(f"alpha must be finite, got {alpha!r}")
    if loss_type == "ipo" and alpha != 0:
        raise ValueError("alpha must be 0 with loss_type='ipo' (no length term on IPO's per-token target)")
    if loss_type != "simpo" and gamma != 0:
        raise ValueError(f"gamma is SimPO's margin and must be 0 with loss_type={loss_type!r}, got {gamma!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
    if label_smoothing and loss_type not in SIGMOID_FAMILY:
        raise ValueError(f"label_smoothing applies to the sigmoid losses, not loss_type={loss_type!r}")


@dataclass(frozen=True)
class LossArgs:
    """The objective's scalar hyper-parameters (see the module table), checked once on
    construction by ``check_loss_args`` (ValueError naming the field): holding one means they are
    valid, so the per-batch paths (``ops.fused.fused_pair_loss``) take it without checking again."""

    loss_type: str = "sigmoid"
    beta: float = 0.1
    alpha: float = 0.0
    gamma: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        check_loss_args(self.loss_type, self.beta, self.alpha, self.gamma, self.label_smoothing)


def wide(t: torch.Tensor) -> torch.Tensor:
    """float32 view of a 16/32-bit tensor; float64 stays float64 (exact gradient checks)."""
    return t if t.dtype == torch.float64 else t.float()


def _check_pair_tensor(name: str, t: torch.Tensor, n_pairs: int, ref: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != n_pairs:
        raise ValueError(f"{name} must have shape [{n_pairs}], got {tuple(t.shape)}")
    check_same_device("chosen_logps", ref, **{name: t})


def check_pair_values(
    chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_lengths, rejected_lengths, loss_type
) -> None:
    """Shapes [P], devices, finiteness, and non-empty responses for length-normalized losses."""
    if not isinstance(chosen_logps, torch.Tensor) or chosen_logps.dim() != 1:
        raise ValueError("chosen_logps must be a 1-D tensor [P]")
    n = chosen_logps.shape[0]
    if n == 0:
        raise ValueError("chosen_logps is empty: a pair loss needs at least one pair")
    named = dict(
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    for name, t in named.items():
        _check_pair_tensor(name, t, n, chosen_logps)
    for name in ("chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps"):
        t = chosen_logps if name == "chosen_logps" else named[name]
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}")
    flags = torch.stack(
        [
            ~torch.isfinite(chosen_logps.detach()).all(),
            ~torch.isfinite(rejected_logps.detach()).all(),
            ~torch.isfinite(ref_chosen_logps).all(),
            ~torch.isfinite(ref_rejected_logps).all(),
            ~torch.isfinite(chosen_lengths).all(),
            ~torch.isfinite(rejected_lengths).all(),
            (chosen_lengths < 0).any() | ((chosen_lengths == 0).any() & (loss_type in LENGTH_NORMALIZED)),
            (rejected_lengths < 0).any() | ((rejected_lengths == 0).any() & (loss_type in LENGTH_NORMALIZED)),
        ]
    ).tolist()
    names = [
        "chosen_logps",
        "rejected_logps",
        "ref_chosen_logps",
        "ref_rejected_logps",
        "chosen_lengths",
        "rejected_lengths",
    ]
    for name, bad in zip(names, flags[:6]):
        if bad:
            raise ValueError(f"{name} contains non-finite values")
    for name, bad in zip(["chosen_lengths", "rejected_lengths"], flags[6:]):
        if bad:
            raise ValueError(
                f"{name} must be >= 0, and > 0 for the length-normalized loss {loss_type!r}: "
                "a pair with no response tokens cannot be scored"
            )


def pair_margin(pi_w, pi_l, ref_w, ref_l, len_w, len_l, *, beta, alpha, loss_type, gamma):
    """The quantity inside the link: z for sigmoid/hinge/sigmoid_norm/simpo, h for ipo. fp32 [P]."""
    len_w = len_w.to(pi_w.dtype)
    len_l = len_l.to(pi_w.dtype)
    length_term = alpha * (len_w - len_l)
    if loss_type in ("sigmoid", "hinge"):
        return beta * ((pi_w - ref_w) - (pi_l - ref_l)) + length_term
    if loss_type == "sigmoid_norm":
        return beta * ((pi_w - ref_w) / len_w - (pi_l - ref_l) / len_l) + length_term
    if loss_type == "simpo":
        return beta * (pi_w / len_w - pi_l / len_l) - gamma + length_term
    # ipo
    return (pi_w - ref_w) / len_w - (pi_l - ref_l) / len_l


def pair_losses(margin, *, beta, loss_type, label_smoothing):
    """Per-pair loss from ``pair_margin``. fp32 [P]."""
    if loss_type in SIGMOID_FAMILY:
        return -(1.0 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    if loss_type == "hinge":
        return torch.relu(1.0 - margin)
    return (margin - 1.0 / (2.0 * beta)) ** 2


def implicit_rewards(pi, ref, lengths, *, beta, loss_type):
    """TRL's rewards: β(pi - ref) per sequence; SimPO (no reference) reports β·pi/L."""
    if loss_type == "simpo":
        return beta * pi / lengths.to(pi.dtype)
    return beta * (pi - ref)


@torch.no_grad()
def pair_metrics(pi_w, pi_l, ref_w, ref_l, len_w, len_l, *, beta, loss_type) -> dict[str, torch.Tensor]:
    """Batch-mean metrics under TRL's names plus lengths; detached 0-d float32 tensors."""
    pi_w, pi_l, ref_w, ref_l = (wide(t.detach()) for t in (pi_w, pi_l, ref_w, ref_l))
    rc = implicit_rewards(pi_w, ref_w, len_w, beta=beta, loss_type=loss_type)
    rr = implicit_rewards(pi_l, ref_l, len_l, beta=beta, loss_type=loss_type)
    return {
        "rewards/chosen": rc.mean(),
        "rewards/rejected": rr.mean(),
        "rewards/margins": (rc - rr).mean(),
        "rewards/accuracies": (rc > rr).float().mean(),
        "logps/chosen": pi_w.mean(),
        "logps/rejected": pi_l.mean(),
        "length/chosen": len_w.float().mean(),
        "length/rejected": len_l.float().mean(),
    }


def lrdpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.0,
    loss_type: str = "sigmoid",
    gamma: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Length-regularized DPO (and siblings) on per-sequence values, averaged over pairs.

    Args:
        chosen_logps, rejected_logps: float [P], summed response log-probs under the policy
            (differentiable).
        ref_chosen_logps, ref_rejected_logps: float [P], the same under the reference (no grad
            flows into them). Ignored by ``simpo``; pass zeros.
        chosen_lengths, rejected_lengths: int or float [P], response tokens per sequence.
        beta, alpha, loss_type, gamma, label_smoothing: see the module table.

    Returns:
        (loss, metrics): loss a float32 scalar; metrics a dict of detached 0-d tensors named as
        TRL names them (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies,
        logps/chosen, logps/rejected) plus length/chosen and length/rejected.
    """
    check_loss_args(loss_type, beta, alpha, gamma, label_smoothing)
    check_pair_values(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, chosen_lengths, rejected_lengths, loss_type
    )
    pi_w, pi_l = wide(chosen_logps), wide(rejected_logps)
    ref_w, ref_l = wide(ref_chosen_logps.detach()), wide(ref_rejected_logps.detach())
    margin = pair_margin(
        pi_w,
        pi_l,
        ref_w,
        ref_l,
        chosen_lengths,
        rejected_lengths,
        beta=beta,
        alpha=alpha,
        loss_type=loss_type,
        gamma=gamma,
    )
    loss = pair_losses(margin, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing).mean()
    metrics = pair_metrics(pi_w, pi_l, ref_w, ref_l, chosen_lengths, rejected_lengths, beta=beta, loss_type=loss_type)
    return loss, metrics
