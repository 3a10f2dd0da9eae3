"""lrdpo-fast: fused kernels and a thin trainer for iterative length-regularized DPO.

Public API (``import lrdpo_fast as lf``): ``linear_logprobs``, ``sequence_logprobs``,
``lrdpo_loss``, ``fused_lrdpo_loss``, ``LRDPOLoss``.
"""
from .fused import LRDPOLoss, fused_lrdpo_loss
from .losses import LOSS_TYPES, lrdpo_loss
from .ops import linear_logprobs, sequence_logprobs

__version__ = "0.1.0"
__all__ = [
    "LOSS_TYPES",
    "LRDPOLoss",
    "fused_lrdpo_loss",
    "linear_logprobs",
    "lrdpo_loss",
    "sequence_logprobs",
]
