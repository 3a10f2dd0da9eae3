"""Layer 3, model: varlen attention registered with transformers (attention.py), the LM head and
what an architecture does to its logits (head.py), the hidden states and per-sequence log-probs
of a packed batch (packed.py), and the one tiny model + tokenizer factory used by the example,
the tests and the benchmarks (tiny.py).
"""

from .attention import (
    ATTN_IMPLEMENTATION,
    enable_varlen_attention,
    register_varlen_attention,
    varlen_attention_enabled,
)
from .head import LMHead, lm_head, logit_transform
from .packed import (
    decoder_body,
    lm_head_params,
    model_sequence_logprobs,
    packed_hidden_states,
    precompute_reference_logps,
)

__all__ = [
    "ATTN_IMPLEMENTATION",
    "LMHead",
    "decoder_body",
    "enable_varlen_attention",
    "lm_head",
    "lm_head_params",
    "logit_transform",
    "model_sequence_logprobs",
    "packed_hidden_states",
    "precompute_reference_logps",
    "register_varlen_attention",
    "varlen_attention_enabled",
]
