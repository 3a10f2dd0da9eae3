"""Differentiable LM-head log-probs with backend dispatch: the thin interface over the kernels.

``linear_logprobs`` gives log p(label) per token straight from hidden states and the LM head;
``sequence_logprobs`` sums them per packed sequence (``cu_seqlens``). Neither materializes the
[tokens x vocab] logits: the torch backend works chunk by chunk, the Triton backend block by block.
Both take the LM head's output transform: a temperature and Gemma-2's final-logit soft-capping.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from . import dispatch, torch_backend
from .length_control import check_token_weights
from .validation import check_backend, check_cu_seqlens, check_linear_inputs


def triton_usable(device: torch.device) -> bool:
    """True if the Triton kernels can run on ``device`` (CUDA, or CPU under TRITON_INTERPRET=1)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Map "auto" to "triton" on CUDA and "torch" elsewhere; check an explicit "triton" can run."""
    check_backend(backend)
    if backend == "auto":
        use_triton = device.type == "cuda" and dtype != torch.float64 and triton_usable(device)
        return "triton" if use_triton else "torch"
    if backend == "triton" and dtype == torch.float64:
        raise ValueError("backend='triton' takes float32/bfloat16/float16 hidden states; float64 runs on 'torch'")
    if backend == "triton" and not triton_usable(device):
        raise ValueError(
            f"backend='triton' cannot run on {device}: it needs a CUDA device, or CPU tensors with "
            "TRITON_INTERPRET=1 set before triton is imported (tests), and triton installed"
        )
    return backend


def choose_backend(
    op: str,
    backend: str,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    run: Callable[[str, torch.Tensor, torch.Tensor, bool], torch.Tensor],
) -> str:
    """Validate ``backend`` and settle "auto" through ``dispatch.select`` (measured on CUDA).

    op: "logprobs" | "fused" (+ "+softcap" when the logits are soft-capped: its cost differs, so
    it is measured apart); run(b, h, w, grad) runs the call with backend b on the leaves h
    [N, d], w [V, d] and returns a tensor whose sum is backpropagated when ``grad``. The trial
    uses detached copies of the caller's real inputs, so the caller's graph is untouched.
    """
    resolved = resolve_backend(backend, hidden.device, hidden.dtype)
    if backend != "auto" and hidden.device.type != "cuda":
        return resolved
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)

    def trial(b: str) -> None:
        with torch.set_grad_enabled(want_grad):
            h = hidden.detach().requires_grad_(want_grad)
            w = weight.detach().requires_grad_(want_grad)
            out = run(b, h, w, want_grad)
            if want_grad:
                out.sum().backward()

    return dispatch.select(
        op if want_grad else op + "/fwd",
        backend,
        hidden,
        weight,
        trial,
        triton_usable(hidden.device) and hidden.dtype != torch.float64,
    )


def _backward_impl(backend: str):
    if backend == "triton":
        from . import triton_backend

        return triton_backend.token_logprobs_forward, triton_backend.token_logprobs_backward
    return torch_backend.token_logprobs_forward, torch_backend.token_logprobs_backward


class _LinearLogprobs(torch.autograd.Function):
    """logp[t] = log softmax(cap((h_t W^T + b) / T))[label_t], cap(z) = softcap * tanh(z / softcap)
    (identity when softcap is None); saves only O(N) values besides inputs."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, temperature, softcap, backend):
        fwd, _ = _backward_impl(backend)
        logp, lse, rows = fwd(hidden, weight, bias, labels, ignore_index, temperature, softcap=softcap)
        ctx.save_for_backward(hidden, weight, bias, labels, lse, rows)
        ctx.temperature, ctx.softcap, ctx.backend = temperature, softcap, backend
        return logp

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, labels, lse, rows = ctx.saved_tensors
        _, bwd = _backward_impl(ctx.backend)
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        dh, dw, db = bwd(
            grad.contiguous(), hidden, weight, bias, labels, lse, rows, ctx.temperature, needs, softcap=ctx.softcap
        )
        return dh, dw, db, None, None, None, None, None


def _float_or_none(x) -> float | None:
    return None if x is None else float(x)


def _choose(backend, hidden, weight, bias, labels, ignore_index, temperature, softcap) -> str:
    b_ = None if bias is None else bias.detach()
    lab = labels.contiguous()
    cap = _float_or_none(softcap)

    def run(b, h, w, grad):
        return _LinearLogprobs.apply(
            h.contiguous(), w.contiguous(), b_, lab, int(ignore_index), float(temperature), cap, b
        )

    op = "logprobs" if softcap is None else "logprobs+softcap"
    return choose_backend(op, backend, hidden, weight, run)


def _token_logprobs(hidden, weight, bias, labels, ignore_index, temperature, softcap, impl) -> torch.Tensor:
    """float32 [N] per-token log-probs through the autograd function (inputs already checked)."""
    return _LinearLogprobs.apply(
        hidden.contiguous(),
        weight.contiguous(),
        bias,
        labels.contiguous(),
        int(ignore_index),
        float(temperature),
        _float_or_none(softcap),
        impl,
    )


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    softcap: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-token log p(label) from hidden states and the LM head, without [N, V] logits.

    Args:
        hidden: [N, d] float32/bfloat16/float16, final hidden states (one row per token).
        weight: [V, d], same dtype and device as hidden (the LM head / output embedding).
        labels: int32/int64 [N], in [0, V) or ``ignore_index``.
        bias: optional [V] LM-head bias, same dtype and device as hidden.
        ignore_index: label value of unscored positions (prompt, padding).
        temperature: logits are divided by it before the softmax.
        softcap: if set (a float > 0), logits are soft-capped, z = softcap * tanh(z / softcap),
            after the temperature division and before the softmax (Gemma-2's
            final_logit_softcapping).
        backend: "auto" (on CUDA the faster of the two, measured once per shape bucket, see
            ``lrdpo_fast.ops.dispatch``; torch elsewhere), "torch", or "triton". The
            LRDPO_BACKEND environment variable forces what "auto" means.

    Returns:
        float32 [N]: log p(label_t); 0.0 where label == ignore_index. Differentiable w.r.t.
        hidden, weight and bias (accumulated in float32).
    """
    check_linear_inputs(hidden, weight, labels, bias, ignore_index, temperature, softcap=softcap)
    impl = _choose(backend, hidden, weight, bias, labels, ignore_index, temperature, softcap)
    return _token_logprobs(hidden, weight, bias, labels, ignore_index, temperature, softcap, impl)


def sequence_ids(cu_seqlens: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """int64 [N]: the sequence index of every token of a packed batch described by cu_seqlens [S+1]."""
    counts = cu_seqlens[1:].long() - cu_seqlens[:-1].long()
    return torch.repeat_interleave(torch.arange(counts.numel(), device=cu_seqlens.device), counts, output_size=n_tokens)


def segment_sum(values: torch.Tensor, seq_ids: torch.Tensor, n_seqs: int) -> torch.Tensor:
    """Differentiable per-sequence sums: values [N] -> [S] by seq_ids int64 [N]."""
    return values.new_zeros(n_seqs).index_add(0, seq_ids, values)


def sequence_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    temperature: float = 1.0,
    softcap: float | None = None,
    backend: str = "auto",
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed (optionally token-weighted) response log-probs per packed sequence.

    Args:
        hidden [N, d], weight [V, d], labels int [N], bias [V] or None: as in ``linear_logprobs``
            (float32/bfloat16/float16; labels already shifted: labels[t] is the token that follows
            t, ignore_index on prompt and padding).
        cu_seqlens: int32/int64 [S+1], sequence offsets 0 = cu[0] <= cu[1] <= ... <= cu[S] = N.
        ignore_index, temperature, backend: as in ``linear_logprobs``.
        softcap: if set (a float > 0), logits are soft-capped, z = softcap * tanh(z / softcap),
            after the temperature division and before the softmax (Gemma-2's
            final_logit_softcapping).
        token_weights: None or float32 [N] (finite, >= 0, on hidden's device): each token's
            log-prob is multiplied by its weight inside the sum, forward and backward (LD-DPO,
            SamPO: ``lrdpo_fast.ld_token_weights`` / ``sampo_token_weights``).

    Returns:
        (logps float32 [S], lengths int64 [S]): per-sequence (weighted) sum of log p(label) over scored
        tokens, and the number of scored tokens (labels != ignore_index). A sequence with no
        scored token has logp 0 and length 0. logps is differentiable.
    """
    check_linear_inputs(hidden, weight, labels, bias, ignore_index, temperature, softcap=softcap)
    check_cu_seqlens(cu_seqlens, hidden.shape[0], hidden.device)
    check_token_weights(token_weights, hidden.shape[0], hidden.device)
    n_seqs = cu_seqlens.numel() - 1
    seq_ids = sequence_ids(cu_seqlens, hidden.shape[0])
    impl = _choose(backend, hidden, weight, bias, labels, ignore_index, temperature, softcap)
    tok = _token_logprobs(hidden, weight, bias, labels, ignore_index, temperature, softcap, impl)
    if token_weights is not None:  # autograd carries the weight into each row's gradient
        tok = tok * token_weights
    lengths = torch.zeros(n_seqs, dtype=torch.int64, device=hidden.device).index_add_(
        0, seq_ids, (labels != ignore_index).long()
    )
    return segment_sum(tok, seq_ids, n_seqs), lengths
