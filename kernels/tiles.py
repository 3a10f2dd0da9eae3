"""Shared device functions: the logits tile both the forward and backward kernels rebuild, and the
final-logit soft-capping (Gemma-2's ``final_logit_softcapping``) applied to it.

Soft-capping maps a (temperature-scaled) logit z to z' = cap * tanh(z / cap); its derivative is
dz'/dz = 1 - tanh(z / cap)^2. ``tanh_f32`` is written out with ``tl.exp`` (Triton's core has no
tanh, and libdevice's module path differs between Triton releases), accurate to a few float32
ulps over the whole range, in the interpreter and compiled alike.
"""

import triton
import triton.language as tl


@triton.jit
def tanh_f32(x):
    """tanh of a float32 tile: odd Taylor series below |x| = 0.25 (no cancellation near 0, where
    (1 - e) / (1 + e) would lose the low bits), (1 - e) / (1 + e) with e = exp(-2|x|) above
    (e <= 0.61, so 1 - e keeps its bits; e -> 0 gives exactly 1, never NaN for |x| = inf)."""
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    a = tl.minimum(a, 0.25)  # the series' argument: never inf (masked lanes hold -inf), no NaN
    a2 = a * a
    # tanh(a) = a (1 - a^2/3 + 2a^4/15 - 17a^6/315 + 62a^8/2835 - 1382a^10/155925 + ...): the next
    # term is below 3e-10 relative at a = 0.25
    poly = -1382.0 / 155925.0
    poly = poly * a2 + 62.0 / 2835.0
    poly = poly * a2 - 17.0 / 315.0
    poly = poly * a2 + 2.0 / 15.0
    poly = poly * a2 - 1.0 / 3.0
    small = a + a * (a2 * poly)
    t = tl.where(a < 0.25, small, big)
    return tl.where(x < 0.0, -t, t)


@triton.jit
def softcap_tile(z, softcap):
    """softcap * tanh(z / softcap) of a float32 tile z (the capped logits)."""
    return softcap * tanh_f32(z / softcap)


@triton.jit
def softcap_tile_grad(z, softcap):
    """(softcap * tanh(z / softcap), 1 - tanh(z / softcap)^2) of a float32 tile z.

    The derivative is formed as 4e / (1 + e)^2 with e = exp(-2|z / softcap|) (sech^2), which keeps
    its relative accuracy where tanh saturates (1 - t^2 from a rounded t would not)."""
    x = z / softcap
    e = tl.exp(-2.0 * tl.abs(x))
    one_e = 1.0 + e
    return softcap * tanh_f32(x), 4.0 * e / (one_e * one_e)


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
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """float32 [BLOCK_N, BLOCK_V] tile of (H W^T + b) / T for token rows rn and vocab rows rv,
    soft-capped (softcap * tanh(. / softcap)) when HAS_SOFTCAP; ``softcap`` is unused otherwise
    and the tile is exactly the uncapped one."""
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
    acc = acc * inv_temp
    if HAS_SOFTCAP:
        acc = softcap_tile(acc, softcap)
    return acc
