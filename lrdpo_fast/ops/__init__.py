"""Layer 1, ops: per-token log-probs from hidden states and the LM head, the fused LR-DPO loss,
the objectives, both backends (chunked torch, Triton) and input validation.

Imports torch (and Triton lazily, on first use on CUDA); never transformers or vllm.
"""

from .fused import LRDPOLoss, fused_lrdpo_loss
from .length_control import ld_token_weights, sampo_token_weights
from .logprobs import linear_logprobs, resolve_backend, sequence_logprobs
from .losses import LOSS_TYPES, lrdpo_loss

__all__ = [
    "LOSS_TYPES",
    "LRDPOLoss",
    "fused_lrdpo_loss",
    "ld_token_weights",
    "linear_logprobs",
    "lrdpo_loss",
    "resolve_backend",
    "sampo_token_weights",
    "sequence_logprobs",
]
