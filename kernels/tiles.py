"""Shared device functions: the logits tile both the forward and backward kernels rebuild."""

import triton
import triton.language as tl


@triton.jit
def logits_tile(
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
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """float32 [BLOCK_N, BLOCK_V] tile of (H W^T + b) / T for token rows rn and vocab rows rv."""
    rd = tl.arange(0, BLOCK_D)
    acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        mask_d = (d0 + rd) < D
        h = tl.load(H + rn[:, None] * stride_h + (d0 + rd)[None, :], mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        w = tl.load(W + rv[:, None] * stride_w + (d0 + rd)[None, :], mask=mask_v[:, None] & mask_d[None, :], other=0.0)
        if UPCAST:  # Triton's interpreter cannot dot 16-bit operands
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(B + rv, mask=mask_v, other=0.0).to(tl.float32)[None, :]
    return acc * inv_temp
