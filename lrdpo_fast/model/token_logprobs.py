"""Per-token log-probs of a packed batch through a causal LM and the fused kernel (no logits)."""

from __future__ import annotations

import torch

from ..data.packing import PackedBatch
from .head import lm_head
from .packed import _match_dtypes, packed_hidden_states


def model_token_logprobs(model: torch.nn.Module, batch: PackedBatch, *, backend: str = "auto") -> torch.Tensor:
    """log p(label) of every position of a packed batch under ``model``'s final logits.

    Args:
        model: a transformers causal LM (its logit scale / soft cap applied, ``head.lm_head``).
        batch: PackedBatch; its shifted ``labels`` say which positions are scored.
        backend: fused-kernel backend ("auto", "torch", "triton").

    Returns:
        float32 [N], 0 where the label is -100. Differentiable w.r.t. the model unless under
        ``torch.no_grad()``.
    """
    from ..ops import linear_logprobs

    hidden = packed_hidden_states(model, batch)
    head = lm_head(model)
    hidden, weight, bias = _match_dtypes(hidden, head.weight, head.bias)
    return linear_logprobs(
        hidden, weight, batch.labels.to(hidden.device), bias=bias, backend=backend, **head.kernel_args()
    )
