"""The whole LR-DPO objective fused with the LM head: hidden states in, loss and metrics out.

``fused_lrdpo_loss`` never materializes [tokens x vocab] logits. On the torch backend it forms
the gradient during the forward sweep (whole pairs per chunk, 3 matmuls per scored token); on the
Triton backend a forward kernel gives the sequence log-probs, a pair-loss kernel their gradient,
and the backward kernel rebuilds the logits tiles. The LM head's output transform (temperature,
Gemma-2's final-logit soft-capping) applies to the policy's logits and to the reference's when
the reference is given as hidden states.
"""

from __future__ import annotations

import torch
from torch import nn

from . import torch_backend
from .length_control import check_token_weights, pair_weights, wpo_log_weights
from .logprobs import choose_backend, resolve_backend, segment_sum, sequence_ids
from .losses import LOSS_TYPE_IDS, LossArgs, check_loss_args, pair_metrics
from .pair_params import PairLossParams, reference_logps, sequence_lengths
from .validation import check_cu_seqlens, check_linear_inputs, check_softcap

_NO_WPO = torch.zeros(0)  # the third output without WPO (autograd outputs are tensors)


class _FusedTorch(torch.autograd.Function):
    """Torch backend: gradients formed during forward, scaled by the upstream grad in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, seq_ids, params, ignore_index, temperature, softcap):
        """(loss float32 scalar, seq_logps float32 [S], WPO log-weights float32 [S] or [0]); dH, dW,
        db formed here, kept for backward."""
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        log_w = torch.zeros(params.lengths.numel(), dtype=torch.float32, device=hidden.device) if params.wpo else None
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
            token_weights=params.token_weights,
            wpo_out=log_w,
        )
        loss = params.losses(seq_logps, log_w=log_w).mean()
        # The gradients are outputs, not inputs: kept as plain attributes (not saved tensors) and
        # handed over in backward, so autograd can take them as .grad without another copy.
        ctx.grads = (dh, dw, db)
        log_w = _NO_WPO.to(hidden.device) if log_w is None else log_w
        ctx.mark_non_differentiable(seq_logps, log_w)
        return loss, seq_logps, log_w

    @staticmethod
    def backward(ctx, grad_loss, _grad_logps, _grad_log_w):
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
        """(loss float32 scalar, seq_logps float32 [S], WPO log-weights float32 [S] or [0]); saves
        what the backward kernel needs."""
        from . import triton_backend

        lsq = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device) if params.wpo else None
        logp, lse, rows = triton_backend.token_logprobs_forward(
            hidden, weight, bias, labels, ignore_index, temperature, softcap=softcap, lsq=lsq
        )
        tw = params.token_weights
        seq_logps = segment_sum(logp if tw is None else logp * tw, seq_ids, params.lengths.numel())
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
        log_w = _NO_WPO.to(hidden.device)
        if params.wpo:  # no gradient through the weights: they scale each pair's loss and gradient
            log_w = wpo_log_weights(logp, lsq, seq_ids, params.lengths)
            pw = pair_weights(log_w)
            losses, dseq = losses * pw, dseq * pw.repeat_interleave(2)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, rows, dseq, seq_ids, tw)
        ctx.temperature, ctx.softcap = temperature, softcap
        ctx.mark_non_differentiable(seq_logps, log_w)
        return losses.mean(), seq_logps, log_w

    @staticmethod
    def backward(ctx, grad_loss, _grad_logps, _grad_log_w):
        """dH, dW, db from the backward kernel, the pair-loss gradient scaled by ``grad_loss``
        (and each token's by its weight, in the per-row gradient the kernel reads)."""
        from . import triton_backend

        hidden, weight, bias, labels, lse, rows, dseq, seq_ids, tw = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        g_tok = (dseq * grad_loss).index_select(0, seq_ids)
        if tw is not None:
            g_tok = g_tok * tw
        dh, dw, db = triton_backend.token_logprobs_backward(
            g_tok, hidden, weight, bias, labels, lse, rows, ctx.temperature, needs, softcap=ctx.softcap
        )
        return dh, dw, db, None, None, None, None, None, None


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
    token_weights: torch.Tensor | None = None,
    wpo: bool = False,
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
        token_weights: None or float32 [N] (finite, >= 0, on hidden's device): each token's
            log-prob is multiplied by its weight inside its sequence's sum, forward and backward,
            for the policy and ``ref_hidden`` alike (precomputed ``ref_logps`` must have been
            summed with the same weights). LD-DPO: ``lrdpo_fast.ld_token_weights``; SamPO:
            ``lrdpo_fast.sampo_token_weights``.
        wpo: WPO (TRL's ``use_weighting``): each pair's loss is multiplied by w_chosen *
            w_rejected, w = exp(mean over the response tokens of log p(y_t) - log sum_v p_v^2),
            computed in the same pass without gradient.

    Returns:
        (loss, metrics): float32 scalar, mean over pairs, differentiable w.r.t. hidden, weight and
        bias; metrics as in ``lrdpo_loss`` (detached 0-d tensors) plus "logps/sequences", the
        detached float32 [S] policy log-probs (DICE's implicit reward reuses them), and with
        ``wpo`` "wpo/weight" (the mean pair weight, 0-d) and "wpo/log_weights" (float32 [S]).
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
        token_weights=token_weights,
        wpo=wpo,
    )


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
    token_weights: torch.Tensor | None = None,
    wpo: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``fused_lrdpo_loss`` with the scalar hyper-parameters as one ``LossArgs``, validated when
    it was built (the trainer builds it once per run, not per micro-batch); the tensors are
    checked here on every call. Arguments, shapes, dtypes and the result: as in
    ``fused_lrdpo_loss`` (hidden [N, d] float32/bf16/fp16, weight [V, d], labels int [N],
    cu_seqlens int [S+1], token_weights float32 [N] or None; returns a float32 scalar loss and
    detached 0-d metrics plus "logps/sequences" float32 [S], and the WPO metrics with ``wpo``)."""
    if not isinstance(args, LossArgs):
        raise ValueError(f"args must be a LossArgs, got {type(args).__name__}")
    check_linear_inputs(hidden, weight, labels, bias, ignore_index, temperature, softcap=softcap)
    check_cu_seqlens(cu_seqlens, hidden.shape[0], hidden.device)
    check_token_weights(token_weights, hidden.shape[0], hidden.device)
    if not isinstance(wpo, bool):
        raise ValueError(f"wpo must be true or false, got {wpo!r}")
    n_seqs = cu_seqlens.numel() - 1
    if n_seqs % 2:
        raise ValueError(
            f"cu_seqlens describes {n_seqs} sequences; a pair loss needs an even number in pair order [c0, r0, ...]"
        )
    resolve_backend(backend, hidden.device, hidden.dtype)  # validates before the other checks
    seq_ids = sequence_ids(cu_seqlens, hidden.shape[0])
    lengths = sequence_lengths(labels, seq_ids, n_seqs, ignore_index, args.loss_type)
    ref = reference_logps(
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
        token_weights,
    )
    params = PairLossParams(ref=ref, lengths=lengths, args=args, wpo=wpo, token_weights=token_weights)
    lab = labels.contiguous()
    b_ = None if bias is None else bias.detach()
    head = (int(ignore_index), float(temperature), None if softcap is None else float(softcap))

    def run(b, h, w, grad):  # one timed run of backend ``b`` for the dispatcher
        f = _FusedTriton if b == "triton" else _FusedTorch
        return f.apply(h.contiguous(), w.contiguous(), b_, lab, seq_ids, params, *head)[0]

    impl = choose_backend("fused" if softcap is None else "fused+softcap", backend, hidden, weight, run)
    fn = _FusedTriton if impl == "triton" else _FusedTorch
    loss, seq_logps, log_w = fn.apply(hidden.contiguous(), weight.contiguous(), bias, lab, seq_ids, params, *head)
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
    if wpo:
        metrics["wpo/weight"] = pair_weights(log_w).mean()
        metrics["wpo/log_weights"] = log_w
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
