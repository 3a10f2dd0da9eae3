"""The per-call pieces of the fused pair loss: its constants (``PairLossParams``), the reference
log-probs from whichever form the caller gave, and the response lengths of a packed pair batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .length_control import pair_weights
from .logprobs import sequence_logprobs
from .losses import LENGTH_NORMALIZED, LossArgs, pair_losses, pair_margin, wide
from .validation import check_linear_inputs, check_same_device

__all__ = ["PairLossParams", "reference_logps", "sequence_lengths"]


@dataclass(frozen=True)
class PairLossParams:
    """The per-call constants of the objective, kept out of autograd's argument list.

    ref: float32 [2P] reference log-probs (chosen, rejected interleaved; zeros for SimPO);
    lengths: int64 [2P] response lengths; args: the validated scalar hyper-parameters; wpo: the
    per-pair loss is multiplied by the WPO pair weight exp(log_w_chosen + log_w_rejected) (from
    the per-sequence log-weights handed to ``losses``/``grad``, no gradient through them);
    token_weights: float32 [N] or None, each token's weight inside its sequence's sum.
    """

    ref: torch.Tensor
    lengths: torch.Tensor
    args: LossArgs
    wpo: bool = False
    token_weights: torch.Tensor | None = None

    @property
    def n_pairs(self) -> int:
        """P, the number of pairs (half the sequences)."""
        return self.lengths.numel() // 2

    def margin(self, seq_logps, p0=0, p1=None):
        """``pair_margin`` float32 [p1 - p0] of pairs p0..p1-1 from their sequence logps [2k]."""
        p1 = self.n_pairs if p1 is None else p1
        ref, lens, a = self.ref[2 * p0 : 2 * p1], self.lengths[2 * p0 : 2 * p1], self.args
        return pair_margin(
            seq_logps[0::2],
            seq_logps[1::2],
            ref[0::2],
            ref[1::2],
            lens[0::2],
            lens[1::2],
            beta=a.beta,
            alpha=a.alpha,
            loss_type=a.loss_type,
            gamma=a.gamma,
        )

    def losses(self, seq_logps, p0=0, p1=None, log_w=None):
        """Per-pair losses float32 [p1 - p0] of pairs p0..p1-1 from their sequence logps [2k],
        times the WPO pair weights when ``log_w`` (float32 [2k], the sequences' log-weights)."""
        a = self.args
        out = pair_losses(
            self.margin(seq_logps, p0, p1), beta=a.beta, loss_type=a.loss_type, label_smoothing=a.label_smoothing
        )
        return out if log_w is None else out * pair_weights(log_w.detach()).to(out.dtype)

    def grad(self, p0, p1, seq_logps, log_w=None):
        """d(mean loss over all pairs)/d logp for the sequences of pairs p0..p1-1: float32 [2k]
        (WPO-weighted when ``log_w`` float32 [2k] is given)."""
        x = wide(seq_logps.detach()).requires_grad_(True)
        with torch.enable_grad():
            total = self.losses(x, p0, p1, log_w).sum() / self.n_pairs
            (g,) = torch.autograd.grad(total, x)
        return g


def reference_logps(
    ref_logps,
    ref_hidden,
    ref_weight,
    weight,
    labels,
    cu_seqlens,
    n_seqs,
    loss_type,
    ignore_index,
    backend,
    device,
    temperature=1.0,
    softcap=None,
    token_weights=None,
):
    """float32 [S] reference log-probs from whichever form the caller gave (zeros for simpo); from
    ref_hidden [N, d] through the same head transform (temperature, softcap) and the same
    ``token_weights`` (float32 [N] or None) as the policy."""
    if loss_type == "simpo":
        return torch.zeros(n_seqs, dtype=torch.float32, device=device)
    if ref_logps is not None and ref_hidden is not None:
        raise ValueError("pass either ref_logps or ref_hidden, not both")
    if ref_logps is not None:
        if not isinstance(ref_logps, torch.Tensor) or ref_logps.dim() != 1 or ref_logps.shape[0] != n_seqs:
            shape = tuple(ref_logps.shape) if isinstance(ref_logps, torch.Tensor) else type(ref_logps).__name__
            raise ValueError(f"ref_logps must be a float tensor of shape [{n_seqs}] (one per sequence), got {shape}")
        if not ref_logps.is_floating_point():
            raise ValueError(f"ref_logps must be floating point, got {ref_logps.dtype}")
        check_same_device("labels", labels, ref_logps=ref_logps)
        if not bool(torch.isfinite(ref_logps).all()):
            raise ValueError("ref_logps contains non-finite values")
        return wide(ref_logps.detach())
    if ref_hidden is None:
        raise ValueError(
            f"loss_type={loss_type!r} needs the reference: pass ref_logps [S] or ref_hidden [N, d] (+ ref_weight)"
        )
    ref_w = weight if ref_weight is None else ref_weight
    check_linear_inputs(
        ref_hidden, ref_w, labels, None, ignore_index, temperature, "ref_hidden", "ref_weight", softcap=softcap
    )
    with torch.no_grad():
        logps, _ = sequence_logprobs(
            ref_hidden.detach(),
            ref_w.detach(),
            labels,
            cu_seqlens,
            ignore_index=ignore_index,
            temperature=temperature,
            softcap=softcap,
            backend=backend,
            token_weights=token_weights,
        )
    return logps


def sequence_lengths(labels, seq_ids, n_seqs: int, ignore_index: int, loss_type: str) -> torch.Tensor:
    """int64 [S] scored tokens per sequence; ValueError naming the pair when a length-normalized
    loss meets an empty response."""
    lengths = torch.zeros(n_seqs, dtype=torch.int64, device=labels.device).index_add_(
        0, seq_ids, (labels != ignore_index).long()
    )
    if loss_type in LENGTH_NORMALIZED and bool((lengths == 0).any()):
        empty = int(torch.nonzero(lengths == 0)[0])
        side = "chosen" if empty % 2 == 0 else "rejected"
        raise ValueError(
            f"labels: pair {empty // 2} has no {side} response tokens (all ignore_index); "
            f"the length-normalized loss {loss_type!r} cannot score it"
        )
    return lengths
