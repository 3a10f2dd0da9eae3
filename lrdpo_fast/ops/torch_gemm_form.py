"""The torch backend's CUDA form: per chunk, cuBLAS GEMMs in the input dtype plus one Triton row
pass (``kernels/softmax_grad.py``) instead of the elementwise torch ops.

The chunk's logits come out of the GEMM in float32 (``out_dtype``); the row pass emits the
per-token log-sum-exp and log-prob and writes the gradient (onehot - softmax) * g / T in place in
the input dtype; dH = E W and dW += E^T H are two more GEMMs (float32 output / accumulator). The
weight is never copied to float32. The optional gradient filter (``RowPass.skip_threshold``,
16-bit inputs only) drops the vocabulary blocks whose |gradient| is all below it from both GEMMs.

The knobs (the launcher, the filter) come in a ``RowPass`` built by ``torch_backend`` at each call
from its module settings, so setting them there (tests, bench) reaches every sweep here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

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


def fp_buffer(rows: int, weight: torch.Tensor) -> torch.Tensor:
    """One flat float32 buffer [rows * V] for every [C, V] chunk (C <= rows) of a call; weight [V, d]."""
    return torch.empty(rows * weight.shape[0], dtype=torch.float32, device=weight.device)


def _fp_logits(h: torch.Tensor, w: torch.Tensor, b32: torch.Tensor | None, buf: torch.Tensor) -> torch.Tensor:
    """float32 [C, V] raw logits h W^T (+ b) in the contiguous flat float32 ``buf``."""
    z = buf[: h.shape[0] * w.shape[0]].view(h.shape[0], w.shape[0])
    _mm32(h, w.t(), out=z)
    if b32 is not None:
        z.add_(b32)
    return z


def row_block(device: torch.device) -> tuple[int, int]:
    """(BLOCK_V, num_warps) of the row pass on ``device``: tiny under the interpreter."""
    return (2048, 8) if device.type == "cuda" else (16, 1)


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
    lsq: torch.Tensor | None = None,
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
    block_v, warps = row_block(z.device)
    opts = {} if z.device.type != "cuda" else {"num_warps": warps}
    softmax_grad_kernel[(c,)](
        z,
        gout,
        lab,
        lse,
        logp if logp is not None else lse,
        g if g is not None else lse,
        blockmax if blockmax is not None else lse,
        lsq if lsq is not None else lse,
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
        COMPUTE_SQ=lsq is not None,
        **opts,
    )
    return gout


@dataclass(frozen=True)
class RowPass:
    """The row pass as configured for one call: ``launch`` (``row_pass``'s signature), the
    gradient filter's ``skip_threshold`` (0.0 = off) and ``max_live_fraction`` (above it the
    filtered GEMMs' column gather does not pay)."""

    launch: Callable[..., torch.Tensor] = row_pass
    skip_threshold: float = 0.0
    max_live_fraction: float = 0.5

    def skip_active(self, dtype: torch.dtype) -> bool:
        """True when the gradient filter applies to inputs of ``dtype`` (16-bit only)."""
        return self.skip_threshold > 0.0 and dtype in (torch.bfloat16, torch.float16)

    def live_columns(self, blockmax: torch.Tensor | None, v: int, block_v: int) -> torch.Tensor | None:
        """int64 columns of the vocabulary blocks whose max |gradient| (``blockmax`` float32
        [cdiv(V, block_v)]) reaches the threshold, or None (every column) when the filter is off
        or would not pay."""
        if blockmax is None:
            return None
        live = torch.nonzero(blockmax >= self.skip_threshold, as_tuple=False).flatten()
        if live.numel() > self.max_live_fraction * blockmax.numel():
            return None
        cols = (live[:, None] * block_v + torch.arange(block_v, device=live.device)[None, :]).flatten()
        return cols[cols < v]


def _grad_gemms(e, h, w, r, dh, dw, db, cols=None) -> None:
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


def _chunk_grad(rp: RowPass, z, lab, lse_c, g_rows, h, w, r, inv_temp, dh, dw, db, softcap=None) -> None:
    """Row pass 2 (gradient in place, per-row scale g_rows float32 [C]) + the gradient GEMMs."""
    block_v, _ = row_block(z.device)
    bm = (
        torch.zeros(-(-w.shape[0] // block_v), dtype=torch.float32, device=z.device)
        if rp.skip_active(h.dtype)
        else None
    )
    e = rp.launch(z, lab, lse_c, None, g_rows.float().contiguous(), h.dtype, inv_temp, bm, softcap)
    _grad_gemms(e, h, w, r, dh, dw, db, rp.live_columns(bm, w.shape[0], block_v))


def _chunk_logprobs(rp: RowPass, h, weight, b32, lab, inv_temp, buf, softcap, want_sq=False):
    """(z float32 [C, V] raw logits in ``buf``, lse float32 [C], logp float32 [C], log sum p^2
    float32 [C] or None: only ``want_sq``) of one chunk."""
    z = _fp_logits(h, weight, b32, buf)
    lse_c, logp_c = torch.empty_like(z[:, 0]), torch.empty_like(z[:, 0])
    sq = torch.empty_like(z[:, 0]) if want_sq else None
    if sq is None:  # the launch without WPO's argument: exactly the call before it existed
        rp.launch(z, lab, lse_c, logp_c, None, h.dtype, inv_temp, softcap=softcap)
    else:
        rp.launch(z, lab, lse_c, logp_c, None, h.dtype, inv_temp, softcap=softcap, lsq=sq)
    return z, lse_c, logp_c, sq


def forward_rows(
    rp: RowPass, hidden, weight, b32, labels, rows, inv_temp, step, logp, lse, buf=None, softcap=None, lsq=None
) -> None:
    """Fill logp[rows] and lse[rows] (float32 [N]) chunk by chunk of ``step`` rows, and lsq[rows]
    = log sum p^2 (WPO) when ``lsq`` [N] is given: hidden [N, d] and weight [V, d] in the input
    dtype, b32 float32 [V] or None, labels int [N], rows int64 [M]."""
    buf = fp_buffer(min(step, rows.numel()), weight) if buf is None else buf
    for start in range(0, rows.numel(), step):
        r = rows[start : start + step]
        lab = labels.index_select(0, r).long()
        h = hidden.index_select(0, r)
        _, lse_c, logp_c, sq = _chunk_logprobs(rp, h, weight, b32, lab, inv_temp, buf, softcap, lsq is not None)
        lse.index_copy_(0, r, lse_c)
        logp.index_copy_(0, r, logp_c)
        if lsq is not None:
            lsq.index_copy_(0, r, sq)


def backward_rows(
    rp: RowPass, grad, hidden, weight, b32, labels, lse, rows, inv_temp, step, dh, dw, db, buf=None, softcap=None
) -> None:
    """Accumulate the gradients of sum(grad * logp) over ``rows`` into dh [N, d], dw float32
    [V, d], db float32 [V] (each None when not wanted): rebuild each chunk's logits, one row
    pass, the gradient GEMMs. grad float32 [N], lse float32 [N] from ``forward_rows``."""
    buf = fp_buffer(min(step, rows.numel()), weight) if buf is None else buf
    for start in range(0, rows.numel(), step):
        r = rows[start : start + step]
        lab = labels.index_select(0, r).long()
        h = hidden.index_select(0, r)
        z = _fp_logits(h, weight, b32, buf)
        g_rows = grad.index_select(0, r)
        _chunk_grad(rp, z, lab, lse.index_select(0, r), g_rows, h, weight, r, inv_temp, dh, dw, db, softcap)


def pair_chunk(rp: RowPass, hidden, weight, b32, labels, r, inv_temp, buf, softcap, rows_grad, dh, dw, db, lsq=False):
    """One chunk of whole pairs (rows ``r`` int64 [C], C within ``buf``): GEMM, row pass 1 (lse,
    logp, and log sum p^2 with ``lsq``: WPO), ``rows_grad(logp float32 [C], lsq [C] or None) ->
    (group, g float32 [C])``, row pass 2, the gradient GEMMs into dh, dw, db. Returns ``group``
    (the pairs' sequence log-probs)."""
    lab = labels.index_select(0, r).long()
    h = hidden.index_select(0, r)
    z, lse_c, logp_c, sq = _chunk_logprobs(rp, h, weight, b32, lab, inv_temp, buf, softcap, lsq)
    group, g_rows = rows_grad(logp_c, sq)
    _chunk_grad(rp, z, lab, lse_c, g_rows, h, weight, r, inv_temp, dh, dw, db, softcap)
    return group
