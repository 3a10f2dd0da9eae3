"""Variable-length (packed) causal attention, registered with transformers' AttentionInterface.

``register_varlen_attention()`` registers ``"lrdpo_varlen"`` (idempotent). A model whose
``config._attn_implementation`` is that name, called with ``cu_seq_lens_q/k`` and
``max_length_q/k`` kwargs (FlashAttentionKwargs names) on a packed batch of size 1, attends only
within each sequence. Backends, first usable wins:
1. ``flash_attn.flash_attn_varlen_func`` (CUDA, fp16/bf16, flash-attn importable);
2. ``torch.nn.attention.varlen.varlen_attn`` (CUDA, fp16/bf16, torch that has it);
3. exact SDPA per sequence with ``is_causal`` (any device / dtype; the CPU path).
GQA (fewer KV heads) is handled, RoPE comes from the model's position_ids, and sliding-window
attention (Mistral, Qwen2 with use_sliding_window) is honoured: window W means a query sees its W
most recent keys, itself included, as in transformers' masks. Logit soft-capping and attention
sinks are not supported (ValueError).

Without ``cu_seq_lens_*`` (e.g. ``generate``), the function derives sequences from packed
``position_ids`` when no padding mask is given, and otherwise defers to transformers' SDPA.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch
import torch.nn.functional as F

ATTN_IMPLEMENTATION = "lrdpo_varlen"


def _repeat_kv(x: torch.Tensor, n_rep: int, dim: int) -> torch.Tensor:
    return x if n_rep == 1 else torch.repeat_interleave(x, n_rep, dim=dim)


def _flash_attn_varlen():
    try:
        from flash_attn import flash_attn_varlen_func  # optional, CUDA only
    except Exception:  # ImportError, or a broken CUDA build
        return None
    return flash_attn_varlen_func


def _torch_varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except Exception:
        return None
    return varlen_attn


def _sdpa_per_sequence(q, k, v, bounds, scale, dropout, window):
    """q [T, H, D], k/v [T, H, D] (already repeated) -> [T, H, D], one causal SDPA per sequence."""
    out = torch.empty_like(q)
    for a, b in bounds:
        if b <= a:
            continue
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))  # [H, L, D]
        L = b - a
        if window is not None and L > window:
            i = torch.arange(L, device=q.device)
            mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, dropout_p=dropout, scale=scale)
        else:
            o = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout, is_causal=True, scale=scale)
        out[a:b] = o.transpose(0, 1)
    return out


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    scale: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention within each packed sequence.

    Args:
        query: [T, H, D] float (fp32/bf16/fp16); key, value: [T, Hkv, D] with H % Hkv == 0.
        cu_seqlens: int32 [S+1] offsets of the S sequences (0 ... T), on query's device.
        max_seqlen: int, longest sequence.
        scale: softmax scale (default 1/sqrt(D)); dropout: attention dropout probability.
        sliding_window: None, or W: each query sees its W most recent keys (itself included).

    Returns:
        [T, H, D] in query's dtype.
    """
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ValueError(f"query/key/value must be [T, H, D], got {tuple(query.shape)}, {tuple(key.shape)}")
    n_heads, n_kv = query.shape[1], key.shape[1]
    if n_heads % n_kv:
        raise ValueError(f"query heads ({n_heads}) must be a multiple of key heads ({n_kv})")
    cu = cu_seqlens.to(device=query.device, dtype=torch.int32)
    fast = query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256
    if fast:
        left = -1 if sliding_window is None else int(sliding_window) - 1
        fa = _flash_attn_varlen()
        if fa is not None:
            return fa(
                query,
                key,
                value,
                cu,
                cu,
                int(max_seqlen),
                int(max_seqlen),
                dropout_p=dropout,
                softmax_scale=scale,
                causal=True,
                window_size=(left, 0),
            )
        tv = _torch_varlen()
        if tv is not None and dropout == 0.0:
            params = inspect.signature(tv).parameters
            try:
                if "window_size" in params:  # torch >= 2.11: causal is window (-1, 0)
                    return tv(
                        query,
                        key,
                        value,
                        cu,
                        cu,
                        int(max_seqlen),
                        int(max_seqlen),
                        scale=scale,
                        window_size=(left, 0),
                        enable_gqa=n_kv != n_heads,
                    )
                if "is_causal" in params and sliding_window is None:  # the first API (torch 2.9/2.10)
                    rep = n_heads // n_kv
                    return tv(
                        query,
                        _repeat_kv(key, rep, 1),
                        _repeat_kv(value, rep, 1),
                        cu,
                        cu,
                        int(max_seqlen),
                        int(max_seqlen),
                        is_causal=True,
                        scale=scale,
                    )
            except (RuntimeError, TypeError, NotImplementedError):
                pass  # unsupported GPU / build: fall through to the exact path
    rep = n_heads // n_kv
    k = _repeat_kv(key, rep, 1)
    v = _repeat_kv(value, rep, 1)
    offs = cu.tolist()
    return _sdpa_per_sequence(query, k, v, list(zip(offs[:-1], offs[1:])), scale, dropout, sliding_window)


def _cu_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int] | None:
    """cu_seqlens int32 and max length from packed position_ids [1, T] (restarts at 0), or None."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1:
        return None
    pos = position_ids[0]
    starts = torch.nonzero(pos == 0, as_tuple=False).flatten()
    if starts.numel() <= 1 or int(starts[0]) != 0:
        return None
    cu = torch.cat([starts, starts.new_tensor([pos.numel()])]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The AttentionInterface function: query [1, H, T, D], key/value [1, Hkv, T, D] -> ([1, T, H, D], None).

    Reads ``cu_seq_lens_q`` (int32 [S+1]) and ``max_length_q`` (int) from kwargs (``_k`` must
    match: self-attention only). Raises ValueError for batch size > 1 with cu_seq_lens, for
    soft-capping or attention sinks.
    """
    if softcap is not None:
        raise ValueError("softcap: attention logit soft-capping is not supported by lrdpo_varlen")
    if s_aux is not None:
        raise ValueError("s_aux: attention sinks are not supported by lrdpo_varlen")
    cu = kwargs.get("cu_seq_lens_q")
    max_len = kwargs.get("max_length_q")
    if cu is None and attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2]:
        derived = _cu_from_position_ids(kwargs.get("position_ids"))
        if derived is not None:
            cu, max_len = derived
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        if attention_mask is not None and attention_mask.dim() == 2:
            attention_mask = _padding_causal_mask(attention_mask, query.shape[2], sliding_window)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    cu_k = kwargs.get("cu_seq_lens_k")
    if cu_k is not None and cu_k is not cu and not torch.equal(cu_k.to(cu.device), cu):
        raise ValueError("cu_seq_lens_k must equal cu_seq_lens_q (packed self-attention)")
    if query.shape[0] != 1:
        raise ValueError(f"cu_seq_lens_q needs a packed batch of size 1, got query batch {query.shape[0]}")
    if max_len is None:
        max_len = int((cu[1:] - cu[:-1]).max())
    out = varlen_attention(
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        cu,
        int(max_len),
        scale=scaling,
        dropout=dropout,
        sliding_window=sliding_window,
    )
    return out.unsqueeze(0), None


def _padding_causal_mask(mask2d: torch.Tensor, q_len: int, window: int | None) -> torch.Tensor:
    """bool [B, 1, q, kv] from a 2D padding mask [B, kv] (queries are the last q_len positions)."""
    kv_len = mask2d.shape[1]
    qi = torch.arange(kv_len - q_len, kv_len, device=mask2d.device)[:, None]
    ki = torch.arange(kv_len, device=mask2d.device)[None, :]
    allowed = ki <= qi
    if window is not None:
        allowed = allowed & (qi - ki < window)
    return (allowed[None] & mask2d.bool()[:, None, :])[:, None]


def register_varlen_attention() -> str:
    """Register ``"lrdpo_varlen"`` with transformers (attention and mask interfaces); idempotent.

    Returns the implementation name to put in ``config._attn_implementation``.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ALL_ATTENTION_FUNCTIONS._global_mapping.get(ATTN_IMPLEMENTATION) is not varlen_attention_forward:
        AttentionInterface.register(ATTN_IMPLEMENTATION, varlen_attention_forward)
    # Mask creation as for flash-attention: None for packed / unpadded inputs (no O(T^2) mask is
    # ever built), the 2D padding mask otherwise.
    if ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(ATTN_IMPLEMENTATION) is not flash_attention_mask:
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, flash_attention_mask)
    return ATTN_IMPLEMENTATION


def enable_varlen_attention(model: torch.nn.Module) -> str | None:
    """Switch ``model`` to ``"lrdpo_varlen"`` for good; returns the previous implementation name.

    Use this before enabling gradient checkpointing: recomputation in backward must see the
    same attention implementation as the forward.
    """
    name = register_varlen_attention()
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("model has no .config: expected a transformers PreTrainedModel")
    previous = config._attn_implementation
    config._attn_implementation = name
    return previous


@contextlib.contextmanager
def varlen_attention_enabled(model: torch.nn.Module) -> Iterator[None]:
    """Context manager: ``model`` uses ``"lrdpo_varlen"`` inside, its previous implementation after.

    Nothing changes (and nothing is restored) when the model already uses it.
    """
    name = register_varlen_attention()
    if getattr(model, "config", None) is None:
        raise ValueError("model has no .config: expected a transformers PreTrainedModel")
    if model.config._attn_implementation == name:
        yield
        return
    previous = enable_varlen_attention(model)
    try:
        yield
    finally:
        model.config._attn_implementation = previous
