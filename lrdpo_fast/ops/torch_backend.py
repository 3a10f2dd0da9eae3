"""The exact, chunked PyTorch path: CPU production backend and fallback everywhere.

Same algorithm as the Triton kernels, expressed with chunked matmuls:
- only scored rows (label != ignore_index) are touched; prompt and padding tokens cost nothing;
- each chunk's logits [C, V] live only inside one loop iteration, in float32, and are turned in
  place into the softmax and then into the logit gradient, so one chunk buffer is the whole
  [tokens x vocab] footprint;
- forward keeps O(N) values (the per-token log-sum-exp); backward rebuilds each chunk's logits;
- the fused pair path (``pair_forward_backward``) processes whole pairs per chunk, so the
  gradient of the pair loss is known while the chunk's softmax is still in hand: 3 matmuls per
  token instead of 4 (no recompute), the way the fastest peers form gradients in forward.
dW and db accumulate in float32 across chunks whatever the input dtype.

On CUDA (``fused_pass_enabled``) the same sweeps run as cuBLAS GEMMs in the input dtype plus one
Triton row kernel per chunk (``kernels/softmax_grad.py``) instead of the elementwise torch ops:
the chunk's logits come out of the GEMM in float32 (``out_dtype``), the kernel emits the per-token
log-sum-exp and log-prob and writes the gradient (onehot - softmax) * g / T in place in the input
dtype, and dH = E W, dW += E^T H are two more GEMMs (float32 output / accumulator). The weight is
never copied to float32. Optional gradient filter (``GRAD_SKIP_THRESHOLD``, 16-bit inputs only):
vocabulary blocks whose |gradient| is all below it drop out of both GEMMs.

Final-logit soft-capping (``softcap``, Gemma-2's ``final_logit_softcapping``): the temperature-
scaled logits z become z' = cap * tanh(z / cap) before the softmax, and the logits' gradient is
multiplied by dz'/dz = 1 - tanh(z / cap)^2. The elementwise form keeps that factor in a second
chunk-sized buffer during backward (the chunks are halved then, so the footprint stays one
CHUNK_ELEMENTS budget); the CUDA form's row kernel computes it on the fly (no extra buffer).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

# One chunk of logits holds at most CHUNK_ELEMENTS values (64 MiB of float32 by default; set
# LRDPO_TORCH_CHUNK_MB or this variable to change it). The fused pair path needs a whole pair's
# [rows, V] block in one chunk to form its gradient without recomputing the logits (3 matmuls per
# scored token instead of 4), so the chunk trades memory for time: at N=4096, d=512, V=32000 on
# 2 CPU cores, 64 MiB chunks take ~2.0 s at ~140 MiB peak, 16 MiB chunks ~2.9 s at ~95 MiB
# (dW alone is 62.5 MiB there). Results are identical either way.
CHUNK_ELEMENTS = int(float(os.environ.get("LRDPO_TORCH_CHUNK_MB", "64")) * 2**20) // 4
# The CUDA form (GEMMs + the Triton row pass) needs tall chunks for efficient GEMMs: 1 GiB of
# float32 logits by default (~2000 rows at V=128256); LRDPO_CUDA_CHUNK_MB changes it.
CUDA_CHUNK_ELEMENTS = int(float(os.environ.get("LRDPO_CUDA_CHUNK_MB", "1024")) * 2**20) // 4
# "auto": the fused row pass on CUDA when Triton is importable; "1": also on CPU tensors under
# TRITON_INTERPRET=1 (tests); "0": never (the elementwise torch ops everywhere).
FUSED_PASS = os.environ.get("LRDPO_FUSED_PASS", "auto")
# Gradient filter of the fused pass (16-bit inputs only): vocabulary blocks of ROW_BLOCK_V columns
# whose |gradient| is entirely below this skip both gradient GEMMs. 0.0 = exact (default); about
# 2**-12 is below bf16 resolution, but only a GPU measurement on real hidden states (peaked
# softmax, not random) may turn it on: see ``python -m bench --profile gpu``.
GRAD_SKIP_THRESHOLD = float(os.environ.get("LRDPO_GRAD_SKIP_THRESHOLD", "0"))
# Filtered GEMMs gather the live columns (a copy); below this live fraction that pays off.
SKIP_MAX_LIVE_FRACTION = 0.5


def chunk_rows(vocab: int, chunk_tokens: int | None = None, cuda: bool = False, buffers: int = 1) -> int:
    """Rows per chunk so that ``buffers`` [rows, vocab] float32 blocks together stay within
    CHUNK_ELEMENTS (CUDA_CHUNK_ELEMENTS for the CUDA form); ``chunk_tokens`` overrides it."""
    if chunk_tokens is not None:
        return max(1, int(chunk_tokens))
    return max(8, (CUDA_CHUNK_ELEMENTS if cuda else CHUNK_ELEMENTS) // max(buffers, 1) // max(vocab, 1))


# ---- the CUDA form: GEMMs in the input dtype + one Triton row pass per chunk ----------------------


def fused_pass_enabled(t: torch.Tensor) -> bool:
    """True if chunks of ``t``'s dtype/device take the GEMM + Triton row-pass form."""
    if FUSED_PASS == "0" or t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if t.device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return FUSED_PASS == "1" and t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def _row_block(device: torch.device) -> tuple[int, int]:
    """(BLOCK_V, num_warps) of the row pass: tiny under the interpreter."""
    return (2048, 8) if device.type == "cuda" else (16, 1)


_OUT_DTYPE_OK: bool | None = None  # does this torch take mm(..., out_dtype=float32) on CUDA?


def _out_dtype_ok(a: torch.Tensor) -> bool:
    """Probe once whether cuBLAS 16-bit GEMMs with a float32 result are available (torch >= 2.8)."""
    global _OUT_DTYPE_OK
    if _OUT_DTYPE_OK is None:
        try:
            x = torch.ones(2, 2, dtype=a.dtype, device=a.device)
            _OUT_DTYPE_OK = torch.mm(x, x, out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            _OUT_DTYPE_OK = False
    return _OUT_DTYPE_OK


def _mm32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b with a float32 result: 16-bit operands on CUDA go straight to cuBLAS (out_dtype);
    without out_dtype support they are upcast (exact, slower)."""
    if a.dtype == torch.float32:
        return torch.mm(a, b, out=out) if out is not None else a @ b
    if a.is_cuda and _out_dtype_ok(a):
        return (
            torch.mm(a, b, out_dtype=torch.float32, out=out)
            if out is not None
            else torch.mm(a, b, out_dtype=torch.float32)
        )
    return torch.mm(a.float(), b.float(), out=out) if out is not None else a.float() @ b.float()


def _addmm32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc (float32) += a @ b, in place, without float32 copies of 16-bit operands on CUDA."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
    elif a.is_cuda and _out_dtype_ok(a):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(a.float(), b.float())


def _fp_buffer(rows: int, weight: torch.Tensor) -> torch.Tensor:
    """One flat float32 buffer for every [C, V] chunk of a call (CUDA form)."""
    return torch.empty(rows * weight.shape[0], dtype=torch.float32, device=weight.device)


def _fp_logits(h: torch.Tensor, w: torch.Tensor, b32: torch.Tensor | None, buf: torch.Tensor) -> torch.Tensor:
    """float32 [C, V] raw logits h W^T (+ b) in the contiguous flat float32 ``buf``."""
    z = buf[: h.shape[0] * w.shape[0]].view(h.shape[0], w.shape[0])
    _mm32(h, w.t(), out=z)
    if b32 is not None:
        z.add_(b32)
    return z


def row_pass(
    z: torch.Tensor,
    lab: torch.Tensor,
    lse: torch.Tensor,
    logp: torch.Tensor | None,
    g: torch.Tensor | None,
    dtype: torch.dtype,
    inv_temp: float,
    blockmax: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """One launch of ``softmax_grad_kernel`` over the rows of a chunk.

    z: float32 [C, V] contiguous raw logits (pre-temperature, bias included); lab: int64 [C] in
    [0, V). With ``logp`` (float32 [C]) given, fills lse [C] and logp [C]; otherwise reads lse.
    With ``g`` (float32 [C]) given, writes (onehot - softmax) * g / T in ``dtype`` in place over
    z's storage and (with ``blockmax`` float32 [cdiv(V, BLOCK_V)], zeroed) the max |gradient| per
    vocabulary block. With ``softcap`` (a float) the logits z / T are soft-capped first,
    cap * tanh(z / T / cap): lse and logp are those of the capped logits and the gradient is
    multiplied by 1 - tanh(z / T / cap)^2. Returns the gradient view [C, V] of ``dtype`` (row
    stride V for float32, 2V for 16-bit), meaningful only when g was given.
    """
    from ..kernels.softmax_grad import softmax_grad_kernel

    c, v = z.shape
    gout = z if dtype == torch.float32 else z.view(dtype)[:, :v]
    if c == 0:
        return gout
    block_v, warps = _row_block(z.device)
    opts = {} if z.device.type != "cuda" else {"num_warps": warps}
    softmax_grad_kernel[(c,)](
        z,
        gout,
        lab,
        lse,
        logp if logp is not None else lse,
        g if g is not None else lse,
        blockmax if blockmax is not None else lse,
        v,
        z.stride(0),
        gout.stride(0),
        inv_temp,
        0.0 if softcap is None else float(softcap),
        COMPUTE_LSE=logp is not None,
        WRITE_GRAD=g is not None,
        HAS_G=g is not None,
        TRACK_MAX=blockmax is not None,
        HAS_SOFTCAP=softcap is not None,
        BLOCK_V=block_v,
        **opts,
    )
    return gout


def _skip_active(dtype: torch.dtype) -> bool:
    return GRAD_SKIP_THRESHOLD > 0.0 and dtype in (torch.bfloat16, torch.float16)


def _live_columns(blockmax: torch.Tensor | None, v: int, block_v: int) -> torch.Tensor | None:
    """int64 columns of the vocabulary blocks whose max |gradient| reaches GRAD_SKIP_THRESHOLD,
    or None (use every column) when the filter is off or would not pay."""
    if blockmax is None:
        return None
    live = torch.nonzero(blockmax >= GRAD_SKIP_THRESHOLD, as_tuple=False).flatten()
    if live.numel() > SKIP_MAX_LIVE_FRACTION * blockmax.numel():
        return None
    cols = (live[:, None] * block_v + torch.arange(block_v, device=live.device)[None, :]).flatten()
    return cols[cols < v]


def _fp_grad_gemms(e, h, w, r, dh, dw, db, cols=None) -> None:
    """dH[r] = E W; dW += E^T h; db += sum(E) for the gradient E [C, V] (input dtype), only over
    ``cols`` (int64 vocabulary columns) when given."""
    if cols is not None:
        e, w = e.index_select(1, cols), w.index_select(0, cols)
    if dh is not None:
        dh.index_copy_(0, r, _mm32(e, w).to(dh.dtype))
    if dw is not None:
        if cols is None:
            _addmm32_(dw, e.t(), h)
        else:
            dw.index_add_(0, cols, _mm32(e.t(), h))
    if db is not None:
        col_sum = e.float().sum(dim=0)
        db.add_(col_sum) if cols is None else db.index_add_(0, cols, col_sum)


def _fp_chunk_grad(z, lab, lse_c, g_rows, h, w, r, inv_temp, dh, dw, db, softcap=None) -> None:
    """Row pass 2 (gradient in place, per-row scale g_rows float32 [C]) + the gradient GEMMs."""
    block_v, _ = _row_block(z.device)
    bm = torch.zeros(-(-w.shape[0] // block_v), dtype=torch.float32, device=z.device) if _skip_active(h.dtype) else None
    e = row_pass(z, lab, lse_c, None, g_rows.float().contiguous(), h.dtype, inv_temp, bm, softcap)
    _fp_grad_gemms(e, h, w, r, dh, dw, db, _live_columns(bm, w.shape[0], block_v))


def _fp_forward_rows(hidden, weight, b32, labels, rows, inv_temp, step, logp, lse, buf=None, softcap=None) -> None:
    """CUDA form of ``_forward_rows``: logp[rows], lse[rows] (float32) chunk by chunk."""
    buf = _fp_buffer(min(step, rows.numel()), weight) if buf is None else buf
    for start in range(0, rows.numel(), step):
        r = rows[start : start + step]
        lab = labels.index_select(0, r).long()
        z = _fp_logits(hidden.index_select(0, r), weight, b32, buf)
        lse_c, logp_c = torch.empty_like(z[:, 0]), torch.empty_like(z[:, 0])
        row_pass(z, lab, lse_c, logp_c, None, hidden.dtype, inv_temp, softcap=softcap)
        lse.index_copy_(0, r, lse_c)
        logp.index_copy_(0, r, logp_c)


def _fp_backward_rows(
    grad, hidden, weight, b32, labels, lse, rows, inv_temp, step, dh, dw, db, buf=None, softcap=None
) -> None:
    """CUDA form of ``_backward_rows``: rebuild each chunk's logits, one row pass, two GEMMs."""
    buf = _fp_buffer(min(step, rows.numel()), weight) if buf is None else buf
    for start in range(0, rows.numel(), step):
        r = rows[start : start + step]
        lab = labels.index_select(0, r).long()
        h = hidden.index_select(0, r)
        z = _fp_logits(h, weight, b32, buf)
        g_rows = grad.index_select(0, r)
        _fp_chunk_grad(z, lab, lse.index_select(0, r), g_rows, h, weight, r, inv_temp, dh, dw, db, softcap)


def scored_rows(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """int64 [M] indices of the rows whose label is scored (label != ignore_index)."""
    return torch.nonzero(labels != ignore_index, as_tuple=False).flatten()


def _chunk_logits(h_rows, w32, b32, inv_temp: float, buf: torch.Tensor | None = None) -> torch.Tensor:
    """[C, V] logits of the rows, (h W^T + b) / T, in the accumulation dtype; written into the
    reusable flat ``buf`` when given (no fresh 10-100 MB allocation and page faults per chunk)."""
    out = None if buf is None else buf[: h_rows.shape[0] * w32.shape[0]].view(h_rows.shape[0], w32.shape[0])
    if b32 is not None:
        z = torch.addmm(b32, h_rows, w32.t(), out=out) if out is not None else torch.addmm(b32, h_rows, w32.t())
    else:
        z = torch.mm(h_rows, w32.t(), out=out) if out is not None else h_rows @ w32.t()
    if inv_temp != 1.0:
        z.mul_(inv_temp)
    return z


def _softcap_(z: torch.Tensor, softcap: float | None, fbuf: torch.Tensor | None = None) -> torch.Tensor | None:
    """Soft-cap the (temperature-scaled) logits z [C, V] in place, z -> cap * tanh(z / cap).

    With ``fbuf`` (a flat buffer of z's dtype, at least C * V long) also returns the cap's
    derivative 1 - tanh(z / cap)^2 = 1 / cosh(z / cap)^2 as a [C, V] view of it (cosh keeps the
    relative accuracy where tanh saturates; it overflows to inf, giving exactly 0, past |z / cap|
    ~ 89). Nothing happens (and None is returned) when softcap is None."""
    if softcap is None:
        return None
    z.div_(softcap)
    f = None
    if fbuf is not None:
        f = fbuf[: z.numel()].view(z.shape)
        torch.cosh(z, out=f)
        f.reciprocal_().square_()
    z.tanh_().mul_(softcap)
    return f


def _exp_inplace(z: torch.Tensor, lab: torch.Tensor):
    """Turn logits z [C, V] into exp(z - max) in place; return (label logit, lse, 1/sum) [C].

    The softmax is z * (1/sum); the division is folded into the gradient's per-row scale."""
    label_logit = z.gather(1, lab[:, None]).squeeze(1)
    m = z.amax(dim=1)
    z.sub_(m[:, None]).exp_()
    s = z.sum(dim=1)
    return label_logit, m + s.log(), s.reciprocal()


def _grad_inplace(
    e: torch.Tensor, lab: torch.Tensor, g: torch.Tensor, inv_temp: float, inv_sum: torch.Tensor | None = None
) -> torch.Tensor:
    """e [C, V] = softmax * sum (or the softmax itself when inv_sum is None) -> g (onehot - p) / T
    in place: the gradient of sum(g * logp) w.r.t. the pre-temperature logits."""
    scale = -g if inv_sum is None else -g * inv_sum
    e.mul_(scale[:, None])
    e.scatter_add_(1, lab[:, None], g[:, None])
    if inv_temp != 1.0:
        e.mul_(inv_temp)
    return e


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float32 for fp32/bf16/fp16 inputs, float64 for float64 (gradcheck)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _as_acc(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(_acc_dtype(like))


def _chunk_buffer(rows: int, w32: torch.Tensor) -> torch.Tensor:
    """One flat buffer for every chunk's [C, V] block of a call."""
    return torch.empty(rows * w32.shape[0], dtype=w32.dtype, device=w32.device)


def _forward_rows(hidden, w32, b32, labels, rows, inv_temp, step, logp, lse, buf=None, softcap=None) -> None:
    """Fill logp[rows] and lse[rows] chunk by chunk (in ``buf`` if given), of the soft-capped
    logits when ``softcap`` is set."""
    buf = _chunk_buffer(min(step, rows.numel()), w32) if buf is None else buf
    for start in range(0, rows.numel(), step):
        r = rows[start : start + step]
        lab = labels.index_select(0, r).long()
        z = _chunk_logits(hidden.index_select(0, r).to(w32.dtype), w32, b32, inv_temp, buf)
        _softcap_(z, softcap)
        label_logit, lse_c, _ = _exp_inplace(z, lab)
        lse.index_copy_(0, r, lse_c)
        logp.index_copy_(0, r, label_logit - lse_c)


def _backward_rows(
    grad, hidden, w32, b32, labels, lse, rows, inv_temp, step, dh, dw, db, buf=None, softcap=None, fbuf=None
) -> None:
    """Accumulate the gradients of sum(grad * logp) over ``rows`` into dh, dw, db (in place).

    With ``softcap`` the cap's derivative is held in ``fbuf`` (a second chunk buffer, made here
    when not given) and multiplies the logits' gradient."""
    buf = _chunk_buffer(min(step, rows.numel()), w32) if buf is None else buf
    if softcap is not None and fbuf is None:
        fbuf = _chunk_buffer(min(step, rows.numel()), w32)
    for start in range(0, rows.numel(), step):
        r = rows[start : start + step]
        lab = labels.index_select(0, r).long()
        h = hidden.index_select(0, r).to(w32.dtype)
        z = _chunk_logits(h, w32, b32, inv_temp, buf)
        dcap = _softcap_(z, softcap, fbuf)
        z.sub_(lse.index_select(0, r)[:, None]).exp_()
        dz = _grad_inplace(z, lab, grad.index_select(0, r), inv_temp)
        if dcap is not None:
            dz.mul_(dcap)  # chain rule through the cap
        _accumulate(dz, h, r, w32, dh, dw, db)


def _accumulate(dz, h, r, w32, dh, dw, db) -> None:
    """dH[r] = dz @ W; dW += dz^T @ h; db += sum(dz) (float32 accumulators)."""
    if dh is not None:
        dh.index_copy_(0, r, (dz @ w32).to(dh.dtype))
    if dw is not None:
        dw.addmm_(dz.t(), h)
    if db is not None:
        db.add_(dz.sum(dim=0))


def _grad_buffers(hidden, weight, needs):
    """Zeroed dH (hidden's dtype) and float32 dW, db accumulators, None where not needed."""
    need_h, need_w, need_b = needs
    dh = torch.zeros_like(hidden) if need_h else None
    acc = _acc_dtype(weight)
    dw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
    db = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
    return dh, dw, db


def _cast(acc: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    return None if acc is None else acc.to(like.dtype)


def token_logprobs_forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    ignore_index: int,
    temperature: float,
    chunk_tokens: int | None = None,
    softcap: float | None = None,
):
    """Per-token log p(label) without materializing [N, V].

    hidden [N, d], weight [V, d], bias [V] or None (float32/bf16/fp16, or float64), labels int
    [N]; softcap: None or the cap of the soft-capped logits cap * tanh(z / T / cap).
    Returns (logp float32 [N], lse float32 [N], rows int64 [M]): 0.0 at ignored rows in both
    (float64 for float64 inputs); lse is that of the (capped) logits.
    """
    n = hidden.shape[0]
    logp = hidden.new_zeros(n, dtype=_acc_dtype(weight))
    lse = torch.zeros_like(logp)
    rows = scored_rows(labels, ignore_index)
    if fused_pass_enabled(hidden):
        step = chunk_rows(weight.shape[0], chunk_tokens, cuda=True)
        b32 = None if bias is None else bias.float()
        _fp_forward_rows(hidden, weight, b32, labels, rows, 1.0 / temperature, step, logp, lse, softcap=softcap)
        return logp, lse, rows
    step = chunk_rows(weight.shape[0], chunk_tokens)
    w32, b32 = _as_acc(weight, weight), _as_acc(bias, weight)
    _forward_rows(hidden, w32, b32, labels, rows, 1.0 / temperature, step, logp, lse, softcap=softcap)
    return logp, lse, rows


def token_logprobs_backward(
    grad: torch.Tensor,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    lse: torch.Tensor,
    rows: torch.Tensor,
    temperature: float,
    needs: tuple[bool, bool, bool],
    chunk_tokens: int | None = None,
    softcap: float | None = None,
):
    """Gradients of sum(grad * logp) w.r.t. (hidden, weight, bias), rebuilding each chunk.

    grad float [N] (upstream gradient per token), lse float32 [N] and rows int64 [M] from
    ``token_logprobs_forward`` called with the same ``softcap``; needs = which of (hidden,
    weight, bias) want a gradient. With softcap the logits' gradient carries the factor
    1 - tanh(z / T / cap)^2. Returns (dH like hidden or None, dW like weight or None, db like
    bias or None).
    """
    dh, dw, db = _grad_buffers(hidden, weight, needs)
    if fused_pass_enabled(hidden):
        step = chunk_rows(weight.shape[0], chunk_tokens, cuda=True)
        _fp_backward_rows(
            grad.float(),
            hidden,
            weight,
            None if bias is None else bias.float(),
            labels,
            lse,
            rows,
            1.0 / temperature,
            step,
            dh,
            dw,
            db,
            softcap=softcap,
        )
        return dh, _cast(dw, weight), _cast(db, bias)
    step = chunk_rows(weight.shape[0], chunk_tokens, buffers=1 if softcap is None else 2)
    _backward_rows(
        grad.to(_acc_dtype(weight)),
        hidden,
        _as_acc(weight, weight),
        _as_acc(bias, weight),
        labels,
        lse,
        rows,
        1.0 / temperature,
        step,
        dh,
        dw,
        db,
        softcap=softcap,
    )
    return dh, _cast(dw, weight), _cast(db, bias)


PairGrad = Callable[[int, int, torch.Tensor], torch.Tensor]


def pair_forward_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    seq_ids: torch.Tensor,
    n_seqs: int,
    ignore_index: int,
    temperature: float,
    pair_grad: PairGrad | None,
    needs: tuple[bool, bool, bool],
    chunk_tokens: int | None = None,
    softcap: float | None = None,
):
    """Sequence log-probs of a packed pair batch and, in the same sweep, the loss gradients.

    hidden [N, d], weight [V, d], labels int [N], seq_ids int64 [N] (sequence of each token, in
    pair order c0, r0, c1, r1, ...), n_seqs = S (even). ``pair_grad(p0, p1, seq_logps)`` takes the
    float32 log-probs [2k] of pairs p0..p1-1 (k = p1 - p0) and returns d loss / d logp [2k];
    None means forward only. Whole pairs go into one chunk, so the chunk's softmax is turned into
    its gradient at once; a pair larger than the chunk budget is done in two passes (recompute).
    softcap: None or the cap of the soft-capped logits, cap * tanh(z / T / cap) (Gemma-2).

    Returns (seq_logps float32 [S], dH, dW, db) with None for grads not asked or not computed.
    """
    n_pairs = n_seqs // 2
    rows = scored_rows(labels, ignore_index)
    row_seq = seq_ids.index_select(0, rows)
    seq_logps = hidden.new_zeros(n_seqs, dtype=_acc_dtype(weight))
    if pair_grad is None:
        logp, _, _ = token_logprobs_forward(
            hidden, weight, bias, labels, ignore_index, temperature, chunk_tokens, softcap=softcap
        )
        seq_logps.index_add_(0, seq_ids, logp)
        return seq_logps, None, None, None

    fused = fused_pass_enabled(hidden)
    # the CUDA form keeps the weight in its own dtype (16-bit GEMMs with float32 results)
    w32 = weight if fused else _as_acc(weight, weight)
    b32 = None if bias is None else (bias.float() if fused else _as_acc(bias, weight))
    fwd_rows, bwd_rows = (_fp_forward_rows, _fp_backward_rows) if fused else (_forward_rows, _backward_rows)
    inv_temp = 1.0 / temperature
    dh, dw, db = _grad_buffers(hidden, weight, needs)
    # the elementwise form holds the cap's derivative in a second chunk buffer: half the rows each
    two_buffers = softcap is not None and not fused
    budget = chunk_rows(weight.shape[0], chunk_tokens, cuda=fused, buffers=2 if two_buffers else 1)
    # scored rows per pair -> row offsets of each pair in `rows` (pairs are contiguous)
    per_pair = torch.bincount(row_seq // 2, minlength=n_pairs).tolist()
    starts = [0]
    for c in per_pair:
        starts.append(starts[-1] + c)
    buf = (_fp_buffer if fused else _chunk_buffer)(min(budget, rows.numel()), w32)
    fbuf = _chunk_buffer(min(budget, rows.numel()), w32) if two_buffers else None
    bwd_extra = {"fbuf": fbuf} if two_buffers else {}
    p0 = 0
    while p0 < n_pairs:
        p1 = p0 + 1
        while p1 < n_pairs and starts[p1 + 1] - starts[p0] <= budget:
            p1 += 1
        r = rows[starts[p0] : starts[p1]]
        local = row_seq[starts[p0] : starts[p1]] - 2 * p0
        if r.numel() <= budget and fused:  # GEMM, row pass 1 (lse), pair grad, row pass 2, GEMMs
            lab = labels.index_select(0, r).long()
            h = hidden.index_select(0, r)
            z = _fp_logits(h, w32, b32, buf)
            lse_c, logp_c = torch.empty_like(z[:, 0]), torch.empty_like(z[:, 0])
            row_pass(z, lab, lse_c, logp_c, None, hidden.dtype, inv_temp, softcap=softcap)
            group = seq_logps.new_zeros(2 * (p1 - p0)).index_add_(0, local, logp_c)
            g_seq = pair_grad(p0, p1, group).to(group.dtype)
            _fp_chunk_grad(z, lab, lse_c, g_seq.index_select(0, local), h, w32, r, inv_temp, dh, dw, db, softcap)
        elif r.numel() <= budget:
            lab = labels.index_select(0, r).long()
            h = hidden.index_select(0, r).to(w32.dtype)
            z = _chunk_logits(h, w32, b32, inv_temp, buf)
            dcap = _softcap_(z, softcap, fbuf)
            label_logit, lse_c, inv_sum = _exp_inplace(z, lab)
            group = seq_logps.new_zeros(2 * (p1 - p0)).index_add_(0, local, label_logit - lse_c)
            g_seq = pair_grad(p0, p1, group).to(group.dtype)
            dz = _grad_inplace(z, lab, g_seq.index_select(0, local), inv_temp, inv_sum)
            if dcap is not None:
                dz.mul_(dcap)  # chain rule through the cap
            _accumulate(dz, h, r, w32, dh, dw, db)
        else:  # one pair longer than the budget: forward in pieces, then recompute
            logp = seq_logps.new_zeros(hidden.shape[0])
            lse = torch.zeros_like(logp)
            fwd_rows(hidden, w32, b32, labels, r, inv_temp, budget, logp, lse, buf, softcap=softcap)
            group = seq_logps.new_zeros(2 * (p1 - p0)).index_add_(0, local, logp.index_select(0, r))
            g_seq = pair_grad(p0, p1, group).to(group.dtype)
            g_tok = torch.zeros_like(logp).index_copy_(0, r, g_seq.index_select(0, local))
            bwd_rows(g_tok, hidden, w32, b32, labels, lse, r, inv_temp, budget, dh, dw, db, buf, softcap, **bwd_extra)
        seq_logps[2 * p0 : 2 * p1] = group
        p0 = p1
    return seq_logps, dh, _cast(dw, weight), _cast(db, bias)
