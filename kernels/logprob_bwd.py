"""Backward kernel: rebuild each logits tile and scatter its gradient into dH and dW.

Grid (token blocks, vocabulary blocks). A program recomputes its [BLOCK_N, BLOCK_V] logits tile,
forms dz = g_t * (onehot(label_t) - softmax) / T from the saved log-sum-exp and the per-token
upstream gradient g (with soft-capping, ``HAS_SOFTCAP``: the softmax of the capped logits
z' = cap * tanh(z / cap), times dz'/dz = 1 - tanh(z / cap)^2), then for each slice of the
hidden dimension adds dz @ W_tile into dH and dz^T @ H_tile into dW. Both accumulators are
float32 buffers updated with atomic adds (tiles of different programs overlap in dH across
vocabulary blocks and in dW across token blocks).
Tiles whose tokens all have zero gradient (ignored or masked) return before any matmul, and
tiles whose gradient is entirely below ``skip_below`` (0.0 = exact) skip the two update matmuls.

``logprob_bwd_kernel`` is the autotuned launcher: it accumulates with atomics, so every timed
config run starts from zeroed DH, DW, DB (``reset_to_zero``, also after tuning);
``logprob_bwd_jit`` the plain kernel (ahead-of-time compiles).
"""

import triton
import triton.language as tl

from .autotune import configs, pruner, tuning_options
from .tiles import logits_tile, softcap_tile_grad


@triton.jit
def logprob_bwd_jit(
    H,
    W,
    B,
    LABELS,
    LSE,
    GRAD,
    DH,
    DW,
    DB,  # float32 accumulators [N, D], [V, D], [V]
    N,
    V,
    D,
    stride_h,
    stride_w,
    inv_temp,
    softcap,  # float32 cap of the soft-capped logits; read only when HAS_SOFTCAP
    skip_below,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    NEED_DH: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # int64: N*D may pass 2**31
    rv = pid_v * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    rd = tl.arange(0, BLOCK_D)
    mask_n = rn < N
    mask_v = rv < V
    lab = tl.load(LABELS + rn, mask=mask_n, other=-1).to(tl.int64)
    g = tl.load(GRAD + rn, mask=mask_n, other=0.0)  # zero on unscored rows (host-side mask)
    n_live = tl.sum((g != 0.0).to(tl.int32), axis=0)
    if n_live > 0:
        lse = tl.load(LSE + rn, mask=mask_n, other=0.0)
        logits = logits_tile(
            H,
            W,
            B,
            rn,
            rv,
            mask_n,
            mask_v,
            D,
            stride_h,
            stride_w,
            inv_temp,
            softcap,
            HAS_BIAS,
            False,  # capped below, together with the cap's derivative
            UPCAST,
            PRECISION,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
        )
        if HAS_SOFTCAP:
            logits, dcap = softcap_tile_grad(logits, softcap)
        p = tl.exp(tl.minimum(logits - lse[:, None], 0.0))  # logit <= lse; no overflow
        # rows without gradient (ignored: lse stored as 0) and padded vocab columns contribute nothing
        p = tl.where((g != 0.0)[:, None] & mask_v[None, :], p, 0.0)
        hit = (rv[None, :] == lab[:, None]).to(tl.float32)
        dz = g[:, None] * (hit - p) * inv_temp
        if HAS_SOFTCAP:
            dz = dz * dcap  # chain rule through the cap: d z' / d z = 1 - tanh(z / cap)^2
        if NEED_DB:
            tl.atomic_add(DB + rv, tl.sum(dz, axis=0), mask=mask_v)
        # a tile whose gradient is all below skip_below adds nothing worth two matmuls; with the
        # default 0.0 only exactly-zero tiles are skipped (exact mode)
        live_tile = tl.max(tl.max(tl.abs(dz), axis=1), axis=0) > skip_below
        if live_tile:
            for d0 in range(0, D, BLOCK_D):
                mask_d = (d0 + rd) < D
                if NEED_DH:
                    w = tl.load(
                        W + rv[:, None] * stride_w + (d0 + rd)[None, :],
                        mask=mask_v[:, None] & mask_d[None, :],
                        other=0.0,
                    )
                    if UPCAST:
                        w = w.to(tl.float32)
                    dh = tl.dot(dz.to(w.dtype), w, input_precision=PRECISION)
                    tl.atomic_add(DH + rn[:, None] * D + (d0 + rd)[None, :], dh, mask=mask_n[:, None] & mask_d[None, :])
                if NEED_DW:
                    h = tl.load(
                        H + rn[:, None] * stride_h + (d0 + rd)[None, :],
                        mask=mask_n[:, None] & mask_d[None, :],
                        other=0.0,
                    )
                    if UPCAST:
                        h = h.to(tl.float32)
                    dw = tl.dot(tl.trans(dz.to(h.dtype)), h, input_precision=PRECISION)
                    tl.atomic_add(DW + rv[:, None] * D + (d0 + rd)[None, :], dw, mask=mask_v[:, None] & mask_d[None, :])


logprob_bwd_kernel = triton.autotune(
    configs=configs("bwd"),
    key=["D", "V"],
    prune_configs_by={"early_config_prune": pruner("bwd")},
    reset_to_zero=["DH", "DW", "DB"],
    **tuning_options(),
)(logprob_bwd_jit)
