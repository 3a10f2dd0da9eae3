"""Pair-loss kernel: the length-regularized DPO family and its gradient w.r.t. each sequence's logp.

One program per block of pairs. Sequences are in pair order [c0, r0, c1, r1, ...], so pair i reads
index 2i (chosen) and 2i+1 (rejected). Outputs the per-pair loss and d(mean loss)/d logp for every
sequence (already divided by the number of pairs). LOSS_TYPE is a code of ``loss_types.py``.
"""

import triton
import triton.language as tl

from .loss_types import HINGE, IPO, SIGMOID, SIGMOID_NORM, SIMPO

_SIGMOID = tl.constexpr(SIGMOID)
_IPO = tl.constexpr(IPO)
_HINGE = tl.constexpr(HINGE)
_SIGMOID_NORM = tl.constexpr(SIGMOID_NORM)
_SIMPO = tl.constexpr(SIMPO)


@triton.jit
def _log_sigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    e = tl.exp(-tl.abs(x))  # never overflows
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def pair_loss_kernel(
    LOGPS,
    REF,
    LENS,  # float32 [S]
    LOSS,
    DLOGPS,  # float32 [P], [S]
    P,
    beta,
    alpha,
    gamma,
    smoothing,
    inv_pairs,
    LOSS_TYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rp = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = rp < P
    pw = tl.load(LOGPS + 2 * rp, mask=m, other=0.0)
    pl = tl.load(LOGPS + 2 * rp + 1, mask=m, other=0.0)
    rw = tl.load(REF + 2 * rp, mask=m, other=0.0)
    rl = tl.load(REF + 2 * rp + 1, mask=m, other=0.0)
    lw = tl.load(LENS + 2 * rp, mask=m, other=1.0)
    ll = tl.load(LENS + 2 * rp + 1, mask=m, other=1.0)
    length_term = alpha * (lw - ll)
    if LOSS_TYPE == _SIGMOID or LOSS_TYPE == _HINGE:  # sigmoid (DPO / LR-DPO), hinge
        z = beta * ((pw - rw) - (pl - rl)) + length_term
        dzw = beta + 0.0 * lw
        dzl = -beta + 0.0 * ll
    elif LOSS_TYPE == _SIGMOID_NORM:  # sigmoid_norm (LN-DPO)
        z = beta * ((pw - rw) / lw - (pl - rl) / ll) + length_term
        dzw = beta / lw
        dzl = -beta / ll
    elif LOSS_TYPE == _SIMPO:  # simpo
        z = beta * (pw / lw - pl / ll) - gamma + length_term
        dzw = beta / lw
        dzl = -beta / ll
    else:  # ipo
        z = (pw - rw) / lw - (pl - rl) / ll
        dzw = 1.0 / lw
        dzl = -1.0 / ll
    if LOSS_TYPE == _HINGE:
        loss = tl.maximum(1.0 - z, 0.0)
        dldz = tl.where(z < 1.0, -1.0, 0.0)
    elif LOSS_TYPE == _IPO:
        diff = z - 0.5 / beta
        loss = diff * diff
        dldz = 2.0 * diff
    else:
        loss = -(1.0 - smoothing) * _log_sigmoid(z) - smoothing * _log_sigmoid(-z)
        dldz = -(1.0 - smoothing) * _sigmoid(-z) + smoothing * _sigmoid(z)
    tl.store(LOSS + rp, loss, mask=m)
    tl.store(DLOGPS + 2 * rp, dldz * dzw * inv_pairs, mask=m)
    tl.store(DLOGPS + 2 * rp + 1, dldz * dzl * inv_pairs, mask=m)
