"""Forward kernel: per-token log-sum-exp and label logit straight from hidden states and the LM head.

Grid (token blocks, vocabulary splits). Each program walks its vocabulary range block by block,
forms the [BLOCK_N, BLOCK_V] logits tile with ``tl.dot`` over the hidden dimension (divided by the
temperature, then soft-capped when ``HAS_SOFTCAP``), and keeps an online (max, sum-exp) pair plus
the label's logit (with ``COMPUTE_SQ``, WPO's log sum p^2, one more running sum: of
exp(2 (z - max))). Nothing of size [N, V] is ever written: the outputs are three float32 values
per (split, token), combined on the host side in O(N * splits).
Token blocks whose labels are all ignored (prompt, padding) skip the matmuls entirely.

``logprob_fwd_kernel`` is the autotuned launcher (tiles from ``autotune.py``, keyed on D, V and
the dtypes; it writes every output, so re-running a config is harmless); ``logprob_fwd_jit`` the
plain kernel (ahead-of-time compiles).
"""

import triton
import triton.language as tl

from .autotune import configs, pruner, tuning_options
from .tiles import logits_tile


@triton.jit
def logprob_fwd_jit(
    H,
    W,
    B,
    LABELS,
    MAX_OUT,
    SUM_OUT,
    LABEL_OUT,  # float32 [SPLITS, N] partial results
    SQ_OUT,  # float32 [SPLITS, N] partial sums of exp(2 (z - max)) (WPO), written when COMPUTE_SQ
    N,
    V,
    D,
    stride_h,
    stride_w,
    n_splits,
    inv_temp,
    softcap,  # float32 cap of the soft-capped logits; read only when HAS_SOFTCAP
    ignore_index,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,  # logits -> softcap * tanh(logits / softcap) after the temperature
    UPCAST: tl.constexpr,  # interpreter: tl.dot needs float32 operands
    PRECISION: tl.constexpr,  # "ieee" for float32 inputs, "tf32" allowed by the caller
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    COMPUTE_SQ: tl.constexpr = False,  # WPO: one more running sum, of exp(2 (z - max))
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)  # int64: N*D may pass 2**31
    mask_n = rn < N
    lab = tl.load(LABELS + rn, mask=mask_n, other=ignore_index).to(tl.int64)
    scored = (lab != ignore_index) & mask_n
    n_scored = tl.sum(scored.to(tl.int32), axis=0)

    m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s_i = tl.zeros([BLOCK_N], tl.float32)
    l_i = tl.zeros([BLOCK_N], tl.float32)
    q_i = tl.zeros([BLOCK_N], tl.float32)
    # the vocabulary in n_splits ranges of whole blocks (a range past V does nothing)
    v_per_split = tl.cdiv(tl.cdiv(V, BLOCK_V), n_splits) * BLOCK_V
    v_start = pid_s * v_per_split
    v_end = tl.minimum(v_start + v_per_split, V)
    if n_scored > 0:
        for v0 in range(v_start, v_end, BLOCK_V):
            rv = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
            mask_v = rv < v_end
            acc = logits_tile(
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
                HAS_SOFTCAP,
                UPCAST,
                PRECISION,
                BLOCK_N,
                BLOCK_V,
                BLOCK_D,
            )
            acc = tl.where(mask_v[None, :], acc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(acc, axis=1))
            s_i = s_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(acc - m_new[:, None]), axis=1)
            if COMPUTE_SQ:
                q_i = q_i * tl.exp(2.0 * (m_i - m_new)) + tl.sum(tl.exp(2.0 * (acc - m_new[:, None])), axis=1)
            m_i = m_new
            hit = rv[None, :] == lab[:, None]
            l_i += tl.sum(tl.where(hit, acc, 0.0), axis=1)
    out = pid_s * N + rn
    tl.store(MAX_OUT + out, m_i, mask=mask_n)
    tl.store(SUM_OUT + out, s_i, mask=mask_n)
    tl.store(LABEL_OUT + out, l_i, mask=mask_n)
    if COMPUTE_SQ:
        tl.store(SQ_OUT + out, q_i, mask=mask_n)


logprob_fwd_kernel = triton.autotune(
    configs=configs("fwd"),
    key=["D", "V"],
    prune_configs_by={"early_config_prune": pruner("fwd")},
    **tuning_options(),
)(logprob_fwd_jit)
