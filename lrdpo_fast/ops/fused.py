"""The whole LR-DPO objective fused with the LM head: hidden states in, loss and metrics out.

``fused_lrdpo_loss`` never materializes [tokens x vocab] logits. On the torch backend it forms
the gradient during the forward sweep (whole pairs per chunk, 3 matmuls per scored token); on the
Triton backend a forward kernel gives the sequence log-probs, a pair-loss kernel their gradient,
and the backward kernel rebuilds the logits tiles. The LM head's output transform (temperature,
Gemma-2's final-logit soft-capping) applies to the policy's logits and to the reference's when
the reference is given as hidden states.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import torch_backend
from .logprobs import choose_backend, resolve_backend, segment_sum, sequence_ids, sequence_logprobs
from .losses import (
    LENGTH_NORMALIZED,
    LOSS_TYPE_IDS,
    LossArgs,
    check_loss_args,
    pair_losses,
    pair_margin,
    pair_metrics,
    wide,
)
from .validation import check_cu_seqlens, check_linear_inputs, check_same_device, check_softcap


@dataclass(frozen=True)
class PairLossParams:
    """The per-call constants of the objective, kept out of autograd's argument list.

    ref: float32 [2P] reference log-probs (chosen, rejected interleaved; zeros for SimPO);
    lengths: int64 [2P] response lengths; args: the validated scalar hyper-parameters.
    """

    ref: torch.Tensor
    lengths: torch.Tensor
    args: LossArgs

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

    def losses(self, seq_logps, p0=0, p1=None):
        """Per-pair losses float32 [p1 - p0] of pairs p0..p1-1 from their sequence logps [2k]."""
        a = self.args
        return pair_losses(
            self.margin(seq_logps, p0, p1), beta=a.beta, loss_type=a.loss_type, label_smoothing=a.label_smoothing
        )

    def grad(self, p0, p1, seq_logps):
        """d(mean loss over all pairs)/d logp for the sequences of pairs p0..p1-1: float32 [2k]."""
        x = wide(seq_logps.detach()).requires_grad_(True)
        with torch.enable_grad():
            total = self.losses(x, p0, p1).sum() / self.n_pairs
            (g,) = torch.autograd.grad(total, x)
        return g


class _FusedTorch(torch.autograd.Function):
    """Torch backend: gradients formed during forward, scaled by the upstream grad in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, seq_ids, params, ignore_index, temperature, softcap):
        """(loss float32 scalar, seq_logps float32 [S]); dH, dW, db formed here, kept for backward."""
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        seq_logps, dh, dw, db = torch_backend.pair_forward_backward(
            hidden,
            weight,
            bias,
            labels,
            seq_ids,
            params.lengths.numel(),
            ignore_index,
            temperature,
            params.grad if any(needs) else None,
            needs,
            softcap=softcap,
        )
        loss = params.losses(seq_logps).mean()
        # The gradients are outputs, not inputs: kept as plain attributes (not saved tensors) and
        # handed over in backward, so autograd can take them as .grad without another copy.
        ctx.grads = (dh, dw, db)
        ctx.mark_non_differentiable(seq_logps)
        return loss, seq_logps

    @staticmethod
    def backward(ctx, grad_loss, _grad_logps):
        """The gradients formed in forward, times the upstream gradient of the loss (0-d)."""
        if ctx.grads is None:
            raise RuntimeError("fused_lrdpo_loss (torch backend) supports one backward per forward")
        grads, ctx.grads = ctx.grads, None
        if not bool(grad_loss == 1):  # loss.backward() passes exactly 1: no scaling, no copy
            grads = tuple(None if t is None else t.mul_(grad_loss.to(t.dtype)) for t in grads)
        return grads[0], grads[1], grads[2], None, None, None, None, None, None


class _FusedTriton(torch.autograd.Function):
    """Triton backend: forward kernel + pair-loss kernel; backward kernel rebuilds logits tiles."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, seq_ids, params, ignore_index, temperature, softcap):
        """(loss float32 scalar, seq_logps float32 [S]); saves what the backward kernel needs."""
        from . import triton_backend

        logp, lse, rows = triton_backend.token_logprobs_forward(
            hidden, weight, bias, labels, ignore_index, temperature, softcap=softcap
        )
        seq_logps = segment_sum(logp, seq_ids, params.lengths.numel())
        a = params.args
        losses, dseq = triton_backend.pair_loss(
            seq_logps,
            params.ref,
            params.lengths,
            beta=a.beta,
            alpha=a.alpha,
            gamma=a.gamma,
            label_smoothing=a.label_smoothing,
            loss_type_id=LOSS_TYPE_IDS[a.loss_type],
        )
        ctx.save_for_backward(hidden, weight, bias, labels, lse, rows, dseq, seq_ids)
        ctx.temperature, ctx.softcap = temperature, softcap
        ctx.mark_non_differentiable(seq_logps)
        return losses.mean(), seq_logps

    @staticmethod
    def backward(ctx, grad_loss, _grad_logps):
        """dH, dW, db from the backward kernel, the pair-loss gradient scaled by ``grad_loss``."""
        from . import triton_backend

        hidden, weight, bias, labels, lse, rows, dseq, seq_ids = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        g_tok = (dseq * grad_loss).index_select(0, seq_ids)
        dh, dw, db = triton_backend.token_logprobs_backward(
            g_tok, hidden, weight, bias, labels, lse, rows, ctx.temperature, needs, softcap=ctx.softcap
        )
        return dh, dw, db, None, None, None, None, None, None


def _reference_logps(
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
):
    """float32 [S] reference log-probs from whichever form the caller gave (zeros for simpo); from
    ref_hidden [N, d] through the same head transform (temperature, softcap) as the policy."""
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
        )
    return logps


def fused_lrdpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    ref_logps: torch.Tensor | None = None,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    beta: float = 0.1,
    alpha: float = 0.0,
    loss_type: str = "sigmoid",
    gamma: float = 0.0,
    ignore_index: int = -100,
    backend: str = "auto",
    label_smoothing: float = 0.0,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LR-DPO (and siblings) straight from the policy's final hidden states and LM head.

    Args:
        hidden: [N, d] float32/bf16/fp16, the policy's final hidden states of a packed batch whose
            sequences are in pair order [c0, r0, c1, r1, ...].
        weight: [V, d] LM head, same dtype/device as hidden. ``bias``: optional [V].
        labels: int [N], already shifted (labels[t] = token t+1 of the same sequence), ignore_index
            on prompt, padding and each sequence's last position.
        cu_seqlens: int [S+1], sequence offsets; S must be even.
        ref_logps: float [S] precomputed reference log-probs in the same order, or
        ref_hidden: [N, d] reference hidden states (+ ``ref_weight`` [V, d], default ``weight``),
            evaluated here without gradient. Neither is needed for ``loss_type="simpo"``.
        beta, alpha, loss_type, gamma, label_smoothing: see ``lrdpo_fast.losses``.
        backend: "auto" | "torch" | "triton" ("auto": on CUDA the faster, measured once per shape
            bucket by ``lrdpo_fast.ops.dispatch``; LRDPO_BACKEND forces it).
        temperature: logits are divided by it before the softmax (policy and ``ref_hidden``).
        softcap: if set (a float > 0), logits are soft-capped, z = softcap * tanh(z / softcap),
            after the temperature division and before the softmax (Gemma-2's
            final_logit_softcapping); applied to the policy's logits and, when ``ref_hidden`` is
            given, to the reference's (precomputed ``ref_logps`` are taken as they are).

    Returns:
        (loss, metrics): float32 scalar, mean over pairs, differentiable w.r.t. hidden, weight and
        bias; metrics as in ``lrdpo_loss`` (detached 0-d tensors) plus "logps/sequences", the
        detached float32 [S] policy log-probs (DICE's implicit reward reuses them).
    """
    args = LossArgs(loss_type, beta, alpha, gamma, label_smoothing)  # checked before the tensors
    return fused_pair_loss(
        hidden,
        weight,
        labels,
        cu_seqlens,
        args,
        ref_logps=ref_logps,
        ref_hidden=ref_hidden,
        ref_weight=ref_weight,
        ignore_index=ignore_index,
        backend=backend,
        bias=bias,
        temperature=temperature,
        softcap=softcap,
    )


def _sequence_lengths(labels, seq_ids, n_seqs: int, ignore_index: int, loss_type: str) -> torch.Tensor:
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


def fused_pair_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    cu_seqlens: torch.Tensor,
    args: LossArgs,
    *,
    ref_logps: torch.Tensor | None = None,
    ref_hidden: torch.Tensor | None = None,
    ref_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``fused_lrdpo_loss`` with the scalar hyper-parameters as one ``LossArgs``, validated when
    it was built (the trainer builds it once per run, not per micro-batch); the tensors are
    checked here on every call. Arguments, shapes, dtypes and the result: as in
    ``fused_lrdpo_loss`` (hidden [N, d] float32/bf16/fp16, weight [V, d], labels int [N],
    cu_seqlens int [S+1]; returns a float32 scalar loss and detached 0-d metrics plus
    "logps/sequences" float32 [S])."""
    if not isinstance(args, LossArgs):
        raise ValueError(f"args must be a LossArgs, got {type(args).__name__}")
    check_linear_inputs(hidden, weight, labels, bias, ignore_index, temperature, softcap=softcap)
    check_cu_seqlens(cu_seqlens, hidden.shape[0], hidden.device)
    n_seqs = cu_seqlens.numel() - 1
    if n_seqs % 2:
        raise ValueError(
            f"cu_seqlens describes {n_seqs} sequences; a pair loss needs an even number in pair order [c0, r0, ...]"
        )
    resolve_backend(backend, hidden.device, hidden.dtype)  # validates before the other checks
    seq_ids = sequence_ids(cu_seqlens, hidden.shape[0])
    lengths = _sequence_lengths(labels, seq_ids, n_seqs, ignore_index, args.loss_type)
    ref = _reference_logps(
        ref_logps,
        ref_hidden,
        ref_weight,
        weight,
        labels,
        cu_seqlens,
        n_seqs,
        args.loss_type,
        ignore_index,
        backend,
        hidden.device,
        temperature,
        softcap,
    )
    params = PairLossParams(ref=ref, lengths=lengths, args=args)
    lab = labels.contiguous()
    b_ = None if bias is None else bias.detach()
    head = (int(ignore_index), float(temperature), None if softcap is None else float(softcap))

    def run(b, h, w, grad):  # one timed run of backend ``b`` for the dispatcher
        f = _FusedTriton if b == "triton" else _FusedTorch
        return f.apply(h.contiguous(), w.contiguous(), b_, lab, seq_ids, params, *head)[0]

    impl = choose_backend("fused" if softcap is None else "fused+softcap", backend, hidden, weight, run)
    fn = _FusedTriton if impl == "triton" else _FusedTorch
    loss, seq_logps = fn.apply(hidden.contiguous(), weight.contiguous(), bias, lab, seq_ids, params, *head)
    metrics = pair_metrics(
        seq_logps[0::2],
        seq_logps[1::2],
        ref[0::2],
        ref[1::2],
        lengths[0::2],
        lengths[1::2],
        beta=args.beta,
        loss_type=args.loss_type,
    )
    metrics["logps/sequences"] = seq_logps.detach()
    return loss, metrics


class LRDPOLoss(nn.Module):
    """nn.Module wrapper of ``fused_lrdpo_loss`` holding the objective's hyper-parameters.

    ``forward(hidden, weight, labels, cu_seqlens, *, ref_logps=None, ref_hidden=None,
    ref_weight=None, bias=None)`` (hidden [N, d], weight [V, d] float32/bf16/fp16, labels and
    cu_seqlens int, as in ``fused_lrdpo_loss``) returns (loss, metrics) exactly as
    ``fused_lrdpo_loss`` with this module's hyper-parameters, including the head transform
    ``temperature`` and ``softcap`` (Gemma-2's final_logit_softcapping; None = no cap).
    """

    def __init__(
        self,
        beta: float = 0.1,
        alpha: float = 0.0,
        loss_type: str = "sigmoid",
        gamma: float = 0.0,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        backend: str = "auto",
        temperature: float = 1.0,
        softcap: float | None = None,
    ):
        super().__init__()
        check_loss_args(loss_type, beta, alpha, gamma, label_smoothing)
        check_softcap(softcap)
        self.beta, self.alpha, self.loss_type, self.gamma = beta, alpha, loss_type, gamma
        self.label_smoothing, self.ignore_index, self.backend = label_smoothing, ignore_index, backend
        self.temperature, self.softcap = temperature, softcap

    def forward(
        self, hidden, weight, labels, cu_seqlens, *, ref_logps=None, ref_hidden=None, ref_weight=None, bias=None
    ):
        """(loss, metrics) of ``fused_lrdpo_loss`` with this module's hyper-parameters (see the class)."""
        return fused_lrdpo_loss(
            hidden,
            weight,
            labels,
            cu_seqlens,
            ref_logps=ref_logps,
            ref_hidden=ref_hidden,
            ref_weight=ref_weight,
            beta=self.beta,
            alpha=self.alpha,
            loss_type=self.loss_type,
            gamma=self.gamma,
            ignore_index=self.ignore_index,
            backend=self.backend,
            label_smoothing=self.label_smoothing,
            bias=bias,
            temperature=self.temperature,
            softcap=self.softcap,
        )

    def extra_repr(self) -> str:
        """The hyper-parameters, as ``print(module)`` shows them."""
        head = "" if self.temperature == 1.0 else f", temperature={self.temperature}"
        head += "" if self.softcap is None else f", softcap={self.softcap}"
        return f"loss_type={self.loss_type!r}, beta={self.beta}, alpha={self.alpha}, gamma={self.gamma}{head}"
