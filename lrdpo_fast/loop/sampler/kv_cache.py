"""The CPU engine's KV cache, sized to what it can hold at once.

vLLM's CPU backend allocates and zeroes its whole KV cache at start (``VLLM_CPU_KVCACHE_SPACE``
GiB, else a share of RAM), and keeps it resident for the engine's life, through training too.
A fixed 1 GiB is 50x what a small policy can use and costs seconds of zeroing at every start.
Unless the user sets ``VLLM_CPU_KVCACHE_SPACE`` or ``kv_cache_memory_bytes``, the sampler asks
for what ``max_num_seqs`` sequences of ``max_model_len`` tokens (rounded up to whole cache
blocks) need in float32, between ``MIN_BYTES`` and ``MAX_BYTES`` (the old fixed size): the
engine never has to preempt a sequence for lack of cache, and holds no more than that.
"""

from __future__ import annotations

import json
import math
import os

MIN_BYTES = 64 * 2**20
MAX_BYTES = 2**30  # the former fixed VLLM_CPU_KVCACHE_SPACE=1
CPU_DEFAULT_MAX_NUM_SEQS = 256  # vLLM's default for the LLM class on the CPU
BLOCK_TOKENS = 256  # the CPU backend's largest block size (128 for most models)
FLOAT32_BYTES = 4


def kv_bytes_per_token(config: dict) -> int | None:
    """K and V bytes of one token over all layers in float32, from a ``config.json`` mapping
    (``text_config`` when nested); None when the fields are not there."""
    config = config.get("text_config") or config
    layers, heads = config.get("num_hidden_layers"), config.get("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or (config.get("hidden_size", 0) // heads if heads else None)
    if not all(isinstance(v, int) and v > 0 for v in (layers, kv_heads, head_dim)):
        return None
    return layers * 2 * kv_heads * head_dim * FLOAT32_BYTES


def cpu_kv_cache_bytes(model_dir: str, max_model_len: int | None, max_num_seqs: int | None) -> int:
    """Bytes of KV cache for ``max_num_seqs`` (vLLM's CPU default when None) full sequences of
    ``max_model_len`` tokens (the config's ``max_position_embeddings`` when None) of the model
    in ``model_dir``, clamped to [MIN_BYTES, MAX_BYTES]; MAX_BYTES when the config does not say.
    ValueError naming ``max_num_seqs`` when it is not an int >= 1."""
    if max_num_seqs is not None and (
        not isinstance(max_num_seqs, int) or isinstance(max_num_seqs, bool) or max_num_seqs < 1
    ):
        raise ValueError(f"max_num_seqs must be an int >= 1, got {max_num_seqs!r}")
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return MAX_BYTES
    per_token = kv_bytes_per_token(config)
    length = max_model_len or (config.get("text_config") or config).get("max_position_embeddings")
    if per_token is None or not isinstance(length, int) or length <= 0:
        return MAX_BYTES
    tokens = math.ceil(length / BLOCK_TOKENS) * BLOCK_TOKENS * (max_num_seqs or CPU_DEFAULT_MAX_NUM_SEQS)
    return int(min(MAX_BYTES, max(MIN_BYTES, tokens * per_token)))
