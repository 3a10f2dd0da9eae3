"""Input checks shared by every public entry point.

Each check raises ``ValueError`` naming the offending argument, so bad input never turns into a
silent NaN deep inside a kernel. Checks that need to read tensor values (label range, finiteness,
cu_seqlens order) are batched into one host synchronisation per call.
"""

from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)  # float64: torch backend only
INT_DTYPES = (torch.int32, torch.int64)


class NonFiniteInputError(ValueError):
    """A tensor argument holds NaN or inf (a ``ValueError``: the message names the argument).
    Its own type so a trainer can tell a numerical blow-up from malformed input."""


def nonfinite_flag(t: torch.Tensor) -> torch.Tensor:
    """0-d bool tensor, True when ``t`` may hold NaN/inf: ONE fused reduction (a sum accumulated in
    fp32 or wider, no copy of ``t``), no host sync. NaN and inf propagate through a sum; a True
    is confirmed by ``confirm_nonfinite`` before raising (a sum of huge finite values could overflow)."""
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    return ~torch.isfinite(t.detach().sum(dtype=acc))


def confirm_nonfinite(t: torch.Tensor) -> bool:
    """The exact test behind a ``nonfinite_flag`` hit (slow path, only when the flag is set)."""
    return not bool(torch.isfinite(t).all())


def check_float(name: str, t: torch.Tensor, ndim: int) -> None:
    """``t`` must be a floating tensor (fp32/bf16/fp16) with ``ndim`` dimensions."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16, float16 (or float64 on the torch backend), got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def check_int(name: str, t: torch.Tensor, ndim: int = 1) -> None:
    """``t`` must be an int32/int64 tensor with ``ndim`` dimensions."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in INT_DTYPES:
        raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")


def check_same_device(ref_name: str, ref: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Every tensor in ``others`` must live on ``ref``'s device."""
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def check_linear_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None,
    ignore_index: int,
    temperature: float,
    hidden_name: str = "hidden",
    weight_name: str = "weight",
    softcap: float | None = None,
) -> None:
    """Shapes, dtypes, devices and value ranges of an LM-head log-prob call.

    hidden [N, d] float, weight [V, d] float of hidden's dtype, labels int [N] with values in
    [0, V) or == ignore_index, bias [V] or None; temperature a positive finite number, softcap
    None or a positive finite number (``check_softcap``). Reads values once (labels range,
    finiteness).
    """
    check_float(hidden_name, hidden, 2)
    check_float(weight_name, weight, 2)
    check_int("labels", labels, 1)
    check_same_device(hidden_name, hidden, **{weight_name: weight, "labels": labels, "bias": bias})
    if weight.dtype != hidden.dtype:
        raise ValueError(f"{weight_name} dtype {weight.dtype} does not match {hidden_name} dtype {hidden.dtype}")
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"{weight_name} has shape {tuple(weight.shape)} but {hidden_name} has hidden size {hidden.shape[1]}"
        )
    if labels.shape[0] != hidden.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries but {hidden_name} has {hidden.shape[0]} rows")
    if bias is not None:
        check_float("bias", bias, 1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias has {bias.shape[0]} entries but {weight_name} has {weight.shape[0]} rows")
    if isinstance(temperature, bool) or not (
        isinstance(temperature, (int, float)) and temperature > 0 and temperature != float("inf")
    ):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    check_softcap(softcap)
    if hidden.shape[0] == 0:
        return
    vocab = weight.shape[0]
    scored = labels != ignore_index
    bad_label = (scored & ((labels < 0) | (labels >= vocab))).any()
    # one host sync for every value check; one fused reduction per float tensor
    named = [(hidden_name, hidden), (weight_name, weight)] + ([("bias", bias)] if bias is not None else [])
    flags = torch.stack([bad_label] + [nonfinite_flag(t) for _, t in named]).tolist()
    if flags[0]:
        bad = labels[scored & ((labels < 0) | (labels >= vocab))][:3].tolist()
        raise ValueError(f"labels must lie in [0, {vocab}) or equal ignore_index={ignore_index}; found {bad}")
    for (name, t), flag in zip(named, flags[1:]):
        if flag and confirm_nonfinite(t):
            raise NonFiniteInputError(f"{name} contains non-finite values (NaN or inf)")


def check_softcap(softcap: float | None) -> None:
    """softcap (final-logit soft-capping, z -> softcap * tanh(z / softcap)) must be None or a
    finite real number > 0 (a Python/NumPy float or int; bools, strings and tensors refused)."""
    if softcap is None:
        return
    if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
        raise ValueError(f"softcap must be None or a positive finite float, got {type(softcap).__name__} {softcap!r}")
    if not (math.isfinite(float(softcap)) and float(softcap) > 0):
        raise ValueError(f"softcap must be None or a positive finite float, got {softcap!r}")


def check_cu_seqlens(cu_seqlens: torch.Tensor, n_tokens: int, device: torch.device) -> None:
    """cu_seqlens int [S+1]: starts at 0, never decreases, ends at ``n_tokens``, on ``device``."""
    check_int("cu_seqlens", cu_seqlens, 1)
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but hidden is on {device}")
    if cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must hold at least 2 entries (one sequence), got {cu_seqlens.numel()}")
    first, last = cu_seqlens[0], cu_seqlens[-1]
    decreasing = (cu_seqlens[1:] < cu_seqlens[:-1]).any()
    first, last, decreasing = torch.stack([first.long(), last.long(), decreasing.long()]).tolist()
    if first != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {first}")
    if decreasing:
        raise ValueError("cu_seqlens must be non-decreasing (sequence offsets in order)")
    if last != n_tokens:
        raise ValueError(f"cu_seqlens must end at the number of tokens ({n_tokens}), got {last}")


def check_backend(backend: str) -> None:
    """backend must be one of "auto", "torch", "triton"."""
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
