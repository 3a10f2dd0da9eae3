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
most recent keys, itself included, as in transformers' masks. Attention-logit soft-capping
(Gemma 2's ``attn_logit_softcapping``: scores -> c tanh(scores / c)) goes to flash-attention's
``softcap`` on CUDA and to an exact per-sequence eager path elsewhere. Attention sinks are not
supported (ValueError).

Without ``cu_seq_lens_*`` (e.g. ``generate``), the function derives sequences from packed
``position_ids`` when no padding mask is given, and otherwise defers to transformers' SDPA.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
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


def _capped_attention(q, k, v, allowed, scale, softcap, dropout):
    """q [B, H, Lq, D], k/v [B, H, Lk, D], allowed bool [B or 1, 1, Lq, Lk] -> [B, H, Lq, D]:
    softmax(c tanh(q k^T scale / c)) v as transformers' eager Gemma 2 attention (float32 softmax)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = F.dropout(probs, p=dropout, training=dropout > 0)
    return torch.matmul(probs, v)


def _capped_per_sequence(q, k, v, bounds, scale, softcap, dropout, window):
    """The soft-capped exact path: q [T, H, D], k/v [T, H, D] (already repeated) -> [T, H, D]."""
    out = torch.empty_like(q)
    for a, b in bounds:
        if b <= a:
            continue
        qs, ks, vs = (t[a:b].transpose(0, 1)[None] for t in (q, k, v))  # [1, H, L, D]
        i = torch.arange(b - a, device=q.device)
        allowed = i[:, None] >= i[None, :]
        if window is not None:
            allowed = allowed & (i[:, None] - i[None, :] < window)
        out[a:b] = _capped_attention(qs, ks, vs, allowed[None, None], scale, softcap, dropout)[0].transpose(0, 1)
    return out


@functools.cache  # called per layer and forward: read the signature once
def _flash_softcap_ok(fa) -> bool:
    try:
        return "softcap" in inspect.signature(fa).parameters
    except (TypeError, ValueError):
        return False


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
    softcap: float | None = None,
) -> torch.Tensor:
    """Causal attention within each packed sequence.

    Args:
        query: [T, H, D] float (fp32/bf16/fp16); key, value: [T, Hkv, D] with H % Hkv == 0.
        cu_seqlens: int32 [S+1] offsets of the S sequences (0 ... T), on query's device.
        max_seqlen: int, longest sequence.
        scale: softmax scale (default 1/sqrt(D)); dropout: attention dropout probability.
        sliding_window: None, or W: each query sees its W most recent keys (itself included).
        softcap: None, or c > 0: attention scores become c tanh(scores / c) before the softmax.

    Returns:
        [T, H, D] in query's dtype.
    """
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ValueError(f"query/key/value must be [T, H, D], got {tuple(query.shape)}, {tuple(key.shape)}")
    n_heads, n_kv = query.shape[1], key.shape[1]
    if n_heads % n_kv:
        raise ValueError(f"query heads ({n_heads}) must be a multiple of key heads ({n_kv})")
    if softcap is not None and not (
        isinstance(softcap, (int, float)) and not isinstance(softcap, bool) and math.isfinite(softcap) and softcap > 0
    ):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")
    cu = cu_seqlens.to(device=query.device, dtype=torch.int32)
    fast = query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256
    if fast:
        left = -1 if sliding_window is None else int(sliding_window) - 1
        fa = _flash_attn_varlen()
        if fa is not None and (softcap is None or _flash_softcap_ok(fa)):
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
                **({} if softcap is None else {"softcap": float(softcap)}),  # flash-attn >= 2.6
            )
        tv = _torch_varlen()
        if tv is not None and dropout == 0.0 and softcap is None:
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
    bounds = list(zip(offs[:-1], offs[1:]))
    if softcap is not None:
        s = query.shape[-1] ** -0.5 if scale is None else scale
        return _capped_per_sequence(query, k, v, bounds, s, float(softcap), dropout, sliding_window)
    return _sdpa_per_sequence(query, k, v, bounds, scale, dropout, sliding_window)


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
    match: self-attention only). ``softcap`` (Gemma 2) is honoured on every path. Raises
    ValueError for batch size > 1 with cu_seq_lens, or for attention sinks.
    """
    if s_aux is not None:
        raise ValueError("s_aux: attention sinks are not supported by lrdpo_varlen")
    cu = kwargs.get("cu_seq_lens_q")
    max_len = kwargs.get("max_length_q")
    if cu is None and attention_mask is None and query.shape[0] == 1 and query.shape[2] == key.shape[2]:
        derived = _cu_from_position_ids(kwargs.get("position_ids"))
        if derived is not None:
            cu, max_len = derived
    if cu is None and softcap is not None:
        return _capped_unpacked(module, query, key, value, attention_mask, dropout, scaling, sliding_window, softcap)
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
        softcap=softcap,
    )
    return out.unsqueeze(0), None


def _capped_unpacked(module, query, key, value, attention_mask, dropout, scaling, sliding_window, softcap):
    """Soft-capped attention of an unpacked (padded or cached) batch: query [B, H, q, D],
    key/value [B, Hkv, kv, D], a 2D padding mask [B, kv] or None -> ([B, q, H, D], None)."""
    b, n_heads, q_len, d = query.shape
    kv_len = key.shape[2]
    rep = n_heads // key.shape[1]
    k, v = _repeat_kv(key, rep, 1), _repeat_kv(value, rep, 1)
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError("attention_mask: soft-capped attention without cu_seq_lens takes a 2D padding mask")
    mask2d = attention_mask if attention_mask is not None else torch.ones(b, kv_len, device=query.device)
    allowed = _padding_causal_mask(mask2d, q_len, sliding_window)
    scale = d**-0.5 if scaling is None else scaling
    out = _capped_attention(query, k, v, allowed, scale, float(softcap), dropout)
    return out.transpose(1, 2).contiguous(), None


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
