"""lrdpo-fast: fused kernels and a thin trainer for iterative length-regularized DPO.

Public API (``import lrdpo_fast as lf``):

- kernels and losses: ``linear_logprobs``, ``sequence_logprobs``, ``lrdpo_loss``,
  ``fused_lrdpo_loss``, ``LRDPOLoss``, ``LOSS_TYPES``;
- data and packing: ``tokenize_pair``, ``tokenize_record``, ``tokenize_pairs``, ``PairExample``, ``load_jsonl``,
  ``read_jsonl``, ``save_jsonl``, ``load_hf_dataset``, ``pack_pairs``, ``PackedBatch``,
  ``split_pairs``, ``token_budget_batches``, ``packed_batches``, ``packing_stats``;
- the model path: ``register_varlen_attention``, ``enable_varlen_attention``,
  ``packed_hidden_states``, ``lm_head_params``, ``model_sequence_logprobs``,
  ``precompute_reference_logps``;
- training: ``TrainConfig``, ``Trainer``.

Everything past the kernels is imported on first use, so ``import lrdpo_fast`` stays light.
"""
from importlib import import_module

from .fused import LRDPOLoss, fused_lrdpo_loss
from .losses import LOSS_TYPES, lrdpo_loss
from .ops import linear_logprobs, sequence_logprobs

__version__ = "0.1.0"

_LAZY = {
    "data": ["PairExample", "tokenize_pair", "tokenize_record", "tokenize_pairs", "read_jsonl", "load_jsonl", "save_jsonl",
             "load_hf_dataset"],
    "packing": ["PackedBatch", "pack_pairs", "split_pairs", "token_budget_batches", "packed_batches",
                "packing_stats"],
    "attention": ["ATTN_IMPLEMENTATION", "register_varlen_attention", "enable_varlen_attention",
                  "varlen_attention_enabled"],
    "model": ["decoder_body", "lm_head_params", "packed_hidden_states", "model_sequence_logprobs",
              "precompute_reference_logps"],
    "config": ["TrainConfig"],
    "trainer": ["Trainer"],
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ["LOSS_TYPES", "LRDPOLoss", "fused_lrdpo_loss", "linear_logprobs", "lrdpo_loss", "sequence_logprobs",
           *_WHERE]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lrdpo_fast' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
