"""lrdpo-fast: fused kernels, a thin trainer and an iterative loop for length-regularized DPO.

Public API (``import lrdpo_fast as lf``), by layer (each sub-package imports only those above it
in this list):

- ``ops``: ``linear_logprobs``, ``sequence_logprobs``, ``lrdpo_loss``, ``fused_lrdpo_loss``,
  ``ld_token_weights``, ``sampo_token_weights``,
  ``LRDPOLoss``, ``LOSS_TYPES``;
- ``data``: ``tokenize_pair``, ``tokenize_record``, ``tokenize_pairs``, ``PairExample``,
  ``load_jsonl``, ``read_jsonl``, ``save_jsonl``, ``load_hf_dataset``, ``load_pairs``,
  ``pack_pairs``, ``PackedBatch``, ``split_pairs``, ``token_budget_batches``, ``packed_batches``,
  ``packing_stats``;
- ``model``: ``register_varlen_attention``, ``enable_varlen_attention``, ``packed_hidden_states``,
  ``lm_head`` (weight, bias, logit scale and soft cap), ``lm_head_params``,
  ``model_sequence_logprobs``, ``precompute_reference_logps``;
- ``train``: ``TrainConfig``, ``Trainer``;
- ``loop``: ``VLLMSampler``, ``Sample`` (the only vllm importer), ``RewardModel``,
  ``CallableReward``, ``ImplicitReward``, ``build_pairs``, ``mix_replay``, ``IterateConfig``,
  ``iterate``, ``evaluate``, ``lc_win_rate``.

Only ``ops`` is imported eagerly (torch); everything else on first use, so ``import lrdpo_fast``
loads neither transformers nor vllm.
"""

from importlib import import_module

from ._version import __version__  # noqa: F401  (re-exported)
from .ops import (
    LOSS_TYPES,
    LRDPOLoss,
    fused_lrdpo_loss,
    ld_token_weights,
    linear_logprobs,
    lrdpo_loss,
    sampo_token_weights,
    sequence_logprobs,
)

_LAZY = {
    "data.records": ["PairExample", "tokenize_pair", "tokenize_record", "tokenize_pairs"],
    "data.files": ["read_jsonl", "load_jsonl", "save_jsonl", "load_hf_dataset", "load_pairs"],
    "data.packing": [
        "PackedBatch",
        "pack_pairs",
        "split_pairs",
        "token_budget_batches",
        "packed_batches",
        "packing_stats",
    ],
    "model.attention": [
        "ATTN_IMPLEMENTATION",
        "register_varlen_attention",
        "enable_varlen_attention",
        "varlen_attention_enabled",
    ],
    "model.head": ["LMHead", "lm_head"],
    "model.packed": [
        "decoder_body",
        "lm_head_params",
        "packed_hidden_states",
        "model_sequence_logprobs",
        "precompute_reference_logps",
    ],
    "train.config": ["TrainConfig"],
    "train.trainer": ["Trainer"],
    "loop.samples": ["Sample"],
    "loop.sampler": ["VLLMSampler", "WeightSyncError"],
    "loop.rewards": ["RewardModel", "CallableReward", "ImplicitReward"],
    "loop.pairs": ["build_pairs", "ScoredGroup", "PairStats"],
    "loop.replay": ["mix_replay"],
    "loop.config": ["IterateConfig"],
    "loop.iterate": ["iterate"],
    "loop.evaluation": ["evaluate"],
    "loop.win_rates": ["lc_win_rate"],
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = [
    "LOSS_TYPES",
    "LRDPOLoss",
    "fused_lrdpo_loss",
    "ld_token_weights",
    "linear_logprobs",
    "lrdpo_loss",
    "sampo_token_weights",
    "sequence_logprobs",
    *_WHERE,
]


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lrdpo_fast' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
