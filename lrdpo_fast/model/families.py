"""Which model architectures lrdpo-fast trains and samples, and what refuses one at start.

Two consumers read a model differently, and either can be silently wrong on an architecture it
does not handle, so each checks at start and raises a ValueError naming the architecture and
what it lacks (never a run that trains or samples another model than the one given):

- the packed training path (``check_packed``, called by ``loading.load_causal_lm`` and by the
  trainer's policy set-up): attention must go through transformers' AttentionInterface (where
  the ``lrdpo_varlen`` attention keeps packed sequences apart), causal, without attention sinks;
  the logit transform must be one ``head.logit_transform`` knows;
- the vLLM sampler (``check_sampled``, called by ``VLLMSampler`` on the model folder's config):
  vLLM must serve the architecture natively (not through its Transformers modeling backend) and
  read the config as transformers does (``_SAMPLER_MISREADS``).

``TESTED`` lists the families run end to end (``tests/test_families.py``, README "Model
families"); ``tiny.FAMILIES`` holds their tiny configs.
"""

from __future__ import annotations

# family -> (architecture, what its test exercises); the tiny configs are tiny.FAMILIES
TESTED: dict[str, tuple[str, str]] = {
    "llama3": ("LlamaForCausalLM", "llama3 RoPE scaling, GQA"),
    "llama3.2": ("LlamaForCausalLM", "tied embeddings, llama3 RoPE scaling, head_dim 64"),
    "smollm2": ("LlamaForCausalLM", "tied embeddings, 3 query heads per KV head"),
    "qwen2.5": ("Qwen2ForCausalLM", "tied embeddings, q/k/v biases, head_dim 64"),
    "qwen3": ("Qwen3ForCausalLM", "tied embeddings, q/k RMS norms, GQA"),
    "mistral": ("MistralForCausalLM", "sliding-window attention shorter than the sequences"),
    "gemma2": ("Gemma2ForCausalLM", "tied, attention and final soft caps, query_pre_attn_scalar, local/global"),
    "gemma3": ("Gemma3ForCausalLM", "tied, final soft cap, q/k norms, query_pre_attn_scalar, local/global"),
    "phi3": ("Phi3ForCausalLM", "fused qkv_proj and gate_up_proj"),
    "granite": ("GraniteForCausalLM", "embedding, residual, attention and logit multipliers"),
}

# model_type -> what the packed path lacks for it (beyond the class-level AttentionInterface check)
_PACKED_LACKS = {
    "gpt_oss": "attention sinks (s_aux) in the varlen attention",
}

# (architecture, config field) -> how vLLM reads it differently from transformers
_SAMPLER_MISREADS = {
    ("Qwen2ForCausalLM", "head_dim"): "vLLM's Qwen2 derives head_dim from hidden_size / num_attention_heads",
}


def architecture(config) -> str:
    """The config's first ``architectures`` entry (a dict from config.json or a config object),
    else its model_type."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    archs = get("architectures") or []
    return str(archs[0]) if archs else str(get("model_type", "") or "unknown")


def check_packed(model) -> None:
    """ValueError naming the architecture when the packed training path cannot run ``model``
    (a transformers causal LM) exactly: its attention bypasses transformers' AttentionInterface
    (packed sequences would attend to each other), it is bidirectional, it needs attention sinks,
    or it transforms its logits in a way ``head.logit_transform`` does not know."""
    from .head import logit_transform

    config = getattr(model, "config", None)
    arch = type(model).__name__
    if config is None:
        raise ValueError(f"{arch} has no .config: a transformers causal LM is expected")
    if not getattr(type(model), "_supports_attention_backend", False):
        raise ValueError(
            f"{arch} lacks attention through transformers' AttentionInterface, so the packed "
            "training path cannot keep its packed sequences apart (lrdpo_varlen attention)"
        )
    if getattr(config, "use_bidirectional_attention", False):
        raise ValueError(f"{arch} with use_bidirectional_attention=True lacks causal attention (packed LM training)")
    lacks = _PACKED_LACKS.get(str(getattr(config, "model_type", "")))
    if lacks is not None:
        raise ValueError(f"{arch}: the packed training path lacks {lacks}")
    try:
        logit_transform(config)
    except ValueError as e:
        raise ValueError(f"{arch}: {e}") from None


def _field(config: dict, name: str):
    text = config.get("text_config") or {}
    return config.get(name, text.get(name))


def check_sampled(config: dict, *, vllm_backend: str | None) -> None:
    """ValueError naming the architecture when the vLLM sampler would not serve the model of
    ``config`` (config.json as a dict) as transformers computes it. ``vllm_backend``: how the
    installed vLLM serves the architecture: "native", "transformers" (its Transformers
    modeling backend) or None (unknown to it)."""
    arch = architecture(config)
    if vllm_backend is None:
        raise ValueError(f"{arch}: the installed vLLM lacks an implementation of this architecture (sampler)")
    if vllm_backend != "native":
        raise ValueError(
            f"{arch}: the installed vLLM lacks a native implementation of this architecture (it would run "
            "it through its Transformers modeling backend, which the sampler's in-memory weight sync is "
            "not tested with and which fails on vLLM's CPU build)"
        )
    if arch == "Qwen2ForCausalLM":
        head_dim, hidden, heads = (_field(config, k) for k in ("head_dim", "hidden_size", "num_attention_heads"))
        if head_dim is not None and hidden and heads and head_dim * heads != hidden:
            raise ValueError(
                f"{arch} with head_dim={head_dim} != hidden_size / num_attention_heads = {hidden}/{heads}: "
                f"{_SAMPLER_MISREADS[(arch, 'head_dim')]} and lacks support for another head_dim (sampler)"
            )
