"""Row kernel of the chunked path on CUDA: one pass from a logits chunk to its gradient, in place.

The chunked path computes a chunk's logits Z = H_c W^T (+ b) [C, V] in float32 with cuBLAS, runs
this kernel once, then does the gradient's two GEMMs (dH = E W, dW += E^T H_c) with cuBLAS. One
program per row of the chunk (every row is a scored token: the caller gathers them):

1. ``COMPUTE_LSE``: online max / sum-exp over the row, block by block, of z / T; emits
   lse [C] (float32) and logp [C] = z[label] / T - lse. Otherwise lse is read from ``LSE``.
2. ``WRITE_GRAD``: writes E = (onehot(label) - softmax) / T (x g[row] when ``HAS_G``) into
   ``GOUT`` in the input dtype. GOUT may alias Z's own storage: for bf16/fp16 inputs the caller
   passes ``Z.view(dtype)[:, :V]`` (row stride 2V), so row r's 16-bit gradient lands in the first
   half of row r's float32 logits. Within a row each block is loaded before it is stored and a
   16-bit element j overwrites float32 element j/2 <= j, already read: one program owns one row,
   and a barrier after each block's load keeps its warps from storing before all of them have
   read it, so the in-place write never clobbers a value not yet read. No extra [C, V] buffer.
3. ``TRACK_MAX``: atomic max of |E| per vocabulary block into ``BLOCKMAX`` [cdiv(V, BLOCK_V)]
   (the gradient filter: vocabulary blocks whose gradient is below the dtype's resolution skip
   their share of the two GEMMs; see ``lrdpo_fast.ops.torch_backend``).
5. ``COMPUTE_SQ`` (WPO, with ``COMPUTE_LSE``): one more running sum in the same pass, of
   exp(2 (z - max)), giving ``LSQ`` [C] = log sum_v p_v^2 = logsumexp(2z) - 2 lse.
4. ``HAS_SOFTCAP`` (Gemma-2's final-logit soft-capping): z / T is capped first in both passes,
   z' = cap * tanh(z / T / cap) (lse and logp are those of z'), and E is multiplied by the cap's
   derivative 1 - tanh(z / T / cap)^2. Without the flag (a constexpr) the kernel is exactly the
   uncapped one and ``softcap`` is never read.

The row is read once for the log-sum-exp and once more (from L2 for rows up to a few MiB) for the
gradient; the gradient is written once. Not autotuned: it writes in place, and an autotuner
would re-run it on its own output.
"""

import triton
import triton.language as tl

from .tiles import softcap_tile, softcap_tile_grad


@triton.jit
def softmax_grad_kernel(
    Z,
    GOUT,
    LABELS,
    LSE,
    LOGP,
    G,
    BLOCKMAX,
    LSQ,  # float32 [C] log sum p^2, written only when COMPUTE_SQ
    V,
    stride_z,
    stride_g,
    inv_temp,
    softcap,  # float32 cap of the soft-capped logits; read only when HAS_SOFTCAP
    COMPUTE_LSE: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    HAS_G: tl.constexpr,
    TRACK_MAX: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_V: tl.constexpr,
    COMPUTE_SQ: tl.constexpr = False,
):
    row = tl.program_id(0).to(tl.int64)
    z_row = Z + row * stride_z
    cols = tl.arange(0, BLOCK_V)
    lab = tl.load(LABELS + row).to(tl.int64)
    if COMPUTE_LSE:
        # finite start: masked lanes (-inf) never make (-inf) - (-inf)
        m_i = tl.full([BLOCK_V], -1.0e30, tl.float32)
        s_i = tl.zeros([BLOCK_V], tl.float32)
        q_i = tl.zeros([BLOCK_V], tl.float32)
        for v0 in range(0, V, BLOCK_V):
            rv = v0 + cols
            z = tl.load(z_row + rv, mask=rv < V, other=float("-inf")).to(tl.float32) * inv_temp
            if HAS_SOFTCAP:  # the cap maps -inf to -cap: masked lanes are set back to -inf
                z = tl.where(rv < V, softcap_tile(z, softcap), float("-inf"))
            m_new = tl.maximum(m_i, z)
            s_i = s_i * tl.exp(m_i - m_new) + tl.exp(z - m_new)
            if COMPUTE_SQ:
                q_i = q_i * tl.exp(2.0 * (m_i - m_new)) + tl.exp(2.0 * (z - m_new))
            m_i = m_new
        m = tl.max(m_i, axis=0)
        s = tl.sum(s_i * tl.exp(m_i - m), axis=0)
        lse = m + tl.log(s)
        if COMPUTE_SQ:
            q = tl.sum(q_i * tl.exp(2.0 * (m_i - m)), axis=0)
            tl.store(LSQ + row, tl.log(q) - 2.0 * tl.log(s))
        z_lab = tl.load(z_row + lab).to(tl.float32) * inv_temp
        if HAS_SOFTCAP:
            z_lab = softcap_tile(z_lab, softcap)
        tl.store(LSE + row, lse)
        tl.store(LOGP + row, z_lab - lse)
    else:
        lse = tl.load(LSE + row)
    if WRITE_GRAD:
        scale = inv_temp
        if HAS_G:
            scale = scale * tl.load(G + row).to(tl.float32)
        g_row = GOUT + row * stride_g
        for v0 in range(0, V, BLOCK_V):
            rv = v0 + cols
            mask = rv < V
            z = tl.load(z_row + rv, mask=mask, other=0.0).to(tl.float32) * inv_temp
            # every warp has read this block before any warp overwrites part of it (in place)
            tl.debug_barrier()
            if HAS_SOFTCAP:
                z, dcap = softcap_tile_grad(z, softcap)
            p = tl.exp(tl.minimum(z - lse, 0.0))
            e = (tl.where(rv == lab, 1.0, 0.0) - p) * scale
            if HAS_SOFTCAP:
                e = e * dcap  # chain rule through the cap: d z' / d z = 1 - tanh(z / cap)^2
            e = tl.where(mask, e, 0.0)
            if TRACK_MAX:
                tl.atomic_max(BLOCKMAX + v0 // BLOCK_V, tl.max(tl.abs(e), axis=0))
            if GOUT.dtype.element_ty == tl.bfloat16:
                # round to nearest even by hand: the interpreter's float32 -> bf16 cast truncates,
                # the compiled one rounds; an already-rounded value converts exactly in both
                bits = e.to(tl.uint32, bitcast=True)
                bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
                e = bits.to(tl.float32, bitcast=True)
            tl.store(g_row + rv, e.to(GOUT.dtype.element_ty), mask=mask)
