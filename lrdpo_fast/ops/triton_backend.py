"""Launchers for the Triton kernels: block sizes, grids, buffers and the host-side combine.

Mirrors ``torch_backend``'s token-level interface so ``ops`` can dispatch to either. Kernels are
imported lazily: importing lrdpo_fast never imports triton.
"""

from __future__ import annotations

import os

import torch

# Backward tiles whose |gradient| is entirely below this skip their dH/dW matmuls. 0.0 (default)
# skips only exactly-zero tiles and is exact; about 2**-12 is below bf16 resolution for bf16
# training (the sparsity the fastest peer exploits). Off until a GPU measurement on real hidden
# states (a trained model's peaked softmax, not random states) shows it is safe and faster:
# ``python -m bench.gpu_probe`` times it on and off. LRDPO_GRAD_SKIP_THRESHOLD sets it here and
# in torch_backend (the chunked path's filter) at import.
GRAD_SKIP_THRESHOLD = float(os.environ.get("LRDPO_GRAD_SKIP_THRESHOLD", "0"))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _sms(device: torch.device) -> int:
    """Streaming multiprocessors to fill (2 under the interpreter)."""
    if device.type != "cuda":
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


# Tile sizes, warps and stages come from triton.autotune (kernels/autotune.py), keyed on d, V and
# the dtypes; the vocabulary split of the forward is sized with these nominal tiles.
NOMINAL_BLOCK_N, NOMINAL_BLOCK_V = 64, 128


def _precision(dtype: torch.dtype) -> str:
    # float32 inputs are computed exactly (tests compare to float64 at 1e-5); 16-bit inputs run on
    # tensor cores with float32 accumulation whatever this flag says.
    return "ieee" if dtype == torch.float32 else "tf32"


def _softcap_args(softcap):
    """(float32 kernel argument, HAS_SOFTCAP constexpr): (0.0, False) without a cap, so the
    uncapped kernels compile exactly as before the option existed."""
    return (0.0, False) if softcap is None else (float(softcap), True)


def token_logprobs_forward(
    hidden, weight, bias, labels, ignore_index, temperature, chunk_tokens=None, softcap=None, lsq=None
):
    """Same contract as ``torch_backend.token_logprobs_forward``: (logp f32 [N], lse f32 [N], rows).

    hidden [N, d], weight [V, d] (float32/bf16/fp16), bias [V] or None, labels int [N]; softcap:
    None or the cap of the soft-capped logits (lse and logp are those of cap * tanh(z / T / cap));
    lsq: None or float32 [N], filled with log sum_v p_v^2 (WPO; 0 at ignored rows) by one more
    running sum in the same pass.
    """
    from ..kernels.logprob_fwd import logprob_fwd_kernel

    n, d = hidden.shape
    v = weight.shape[0]
    # split the vocabulary so the grid fills the GPU even for short batches (a split past the
    # vocabulary, possible with a larger tuned BLOCK_V, writes max=-inf, sum=0 and adds nothing)
    nominal_v_blocks = triton_cdiv(v, NOMINAL_BLOCK_V)
    splits = max(
        1, min(nominal_v_blocks, triton_cdiv(2 * _sms(hidden.device), max(triton_cdiv(n, NOMINAL_BLOCK_N), 1)))
    )
    parts = torch.empty((3 if lsq is None else 4, splits, n), dtype=torch.float32, device=hidden.device)
    cap, has_cap = _softcap_args(softcap)
    if n:
        logprob_fwd_kernel[lambda meta: (triton_cdiv(n, meta["BLOCK_N"]), splits)](
            hidden,
            weight,
            bias if bias is not None else hidden,
            labels,
            parts[0],
            parts[1],
            parts[2],
            parts[-1],
            n,
            v,
            d,
            hidden.stride(0),
            weight.stride(0),
            splits,
            1.0 / temperature,
            cap,
            ignore_index,
            HAS_BIAS=bias is not None,
            HAS_SOFTCAP=has_cap,
            UPCAST=_interpreting(),
            PRECISION=_precision(hidden.dtype),
            COMPUTE_SQ=lsq is not None,
        )
    scored = labels != ignore_index
    m, s, lab = parts[0], parts[1], parts[2]
    m_all = m.amax(dim=0)
    safe_m = torch.where(scored, m_all, torch.zeros_like(m_all))
    s_all = (s * torch.exp(m - safe_m)).sum(dim=0)
    lse = safe_m + torch.log(s_all)
    if lsq is not None:  # sum p^2 = sum exp(2 (z - m)) / s^2, the splits rescaled to one max
        q_all = (parts[3] * torch.exp(2.0 * (m - safe_m))).sum(dim=0)
        lsq.copy_(torch.where(scored, torch.log(q_all) - 2.0 * torch.log(s_all), torch.zeros_like(s_all)))
    lse = torch.where(scored, lse, torch.zeros_like(lse))
    logp = torch.where(scored, lab.sum(dim=0) - lse, torch.zeros_like(lse))
    rows = torch.nonzero(scored, as_tuple=False).flatten()
    return logp, lse, rows


def token_logprobs_backward(
    grad, hidden, weight, bias, labels, lse, rows, temperature, needs, chunk_tokens=None, softcap=None
):
    """Same contract as ``torch_backend.token_logprobs_backward``: (dH, dW, db), None where not needed.

    grad float [N], lse float32 [N] and rows int64 [M] from ``token_logprobs_forward`` called with
    the same ``softcap`` (the logits' gradient is then multiplied by 1 - tanh(z / T / cap)^2).
    """
    from ..kernels.logprob_bwd import logprob_bwd_kernel

    need_h, need_w, need_b = needs
    n, d = hidden.shape
    v = weight.shape[0]
    f32 = dict(dtype=torch.float32, device=hidden.device)
    dh = torch.zeros((n, d), **f32) if need_h else None
    dw = torch.zeros((v, d), **f32) if need_w else None
    db = torch.zeros((v,), **f32) if need_b else None
    dummy = torch.empty(1, **f32)
    # the kernel skips rows by their gradient: zero it wherever the label is not scored
    g_scored = torch.zeros(n, **f32).index_copy_(0, rows, grad.float().index_select(0, rows))
    cap, has_cap = _softcap_args(softcap)
    if n and rows.numel() and (need_h or need_w or need_b):

        def grid(meta):
            return triton_cdiv(n, meta["BLOCK_N"]), triton_cdiv(v, meta["BLOCK_V"])

        logprob_bwd_kernel[grid](
            hidden,
            weight,
            bias if bias is not None else hidden,
            labels,
            lse,
            g_scored,
            dh if need_h else dummy,
            dw if need_w else dummy,
            db if need_b else dummy,
            n,
            v,
            d,
            hidden.stride(0),
            weight.stride(0),
            1.0 / temperature,
            cap,
            float(GRAD_SKIP_THRESHOLD),
            HAS_BIAS=bias is not None,
            HAS_SOFTCAP=has_cap,
            NEED_DH=need_h,
            NEED_DW=need_w,
            NEED_DB=need_b,
            UPCAST=_interpreting(),
            PRECISION=_precision(hidden.dtype),
        )
    return (
        None if dh is None else dh.to(hidden.dtype),
        None if dw is None else dw.to(weight.dtype),
        None if db is None else db.to(bias.dtype),
    )


def pair_loss(seq_logps, ref_logps, lengths, *, beta, alpha, gamma, label_smoothing, loss_type_id):
    """Per-pair loss float32 [P] and d(mean loss)/d seq_logps float32 [S] from the pair kernel."""
    from ..kernels.pair_loss import pair_loss_kernel

    n_seqs = seq_logps.numel()
    n_pairs = n_seqs // 2
    loss = torch.empty(n_pairs, dtype=torch.float32, device=seq_logps.device)
    dlogps = torch.empty(n_seqs, dtype=torch.float32, device=seq_logps.device)
    block = 128
    pair_loss_kernel[(triton_cdiv(n_pairs, block),)](
        seq_logps.float().contiguous(),
        ref_logps.float().contiguous(),
        lengths.float().contiguous(),
        loss,
        dlogps,
        n_pairs,
        float(beta),
        float(alpha),
        float(gamma),
        float(label_smoothing),
        1.0 / n_pairs,
        LOSS_TYPE=loss_type_id,
        BLOCK=block,
    )
    return loss, dlogps


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
