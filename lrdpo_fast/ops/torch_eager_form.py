"""The torch backend's elementwise form (CPU, and wherever the CUDA form is off): each chunk's
logits [C, V] in the accumulation dtype (float32; float64 for float64 inputs), turned in place
into the softmax and then into the logit gradient, so one chunk buffer is the whole footprint.

With a soft cap the cap's derivative 1 - tanh(z / cap)^2 is kept in a second chunk-sized buffer
during backward (the caller halves the chunks then, so the footprint stays one budget).
"""

from __future__ import annotations

import torch


def chunk_buffer(rows: int, w32: torch.Tensor) -> torch.Tensor:
    """One flat buffer [rows * V] of w32's dtype for every chunk's [C, V] block (C <= rows) of a
    call; w32 [V, d]."""
    return torch.empty(rows * w32.shape[0], dtype=w32.dtype, device=w32.device)


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


def _exp_inplace(z: torch.Tensor, lab: torch.Tensor, lsq: bool = False):
    """Turn logits z [C, V] into exp(z - max) in place; return (label logit, lse, 1/sum, log sum
    p^2 or None) [C]: the last (WPO's) only with ``lsq``, one more reduction of the same block.

    The softmax is z * (1/sum); the division is folded into the gradient's per-row scale."""
    label_logit = z.gather(1, lab[:, None]).squeeze(1)
    m = z.amax(dim=1)
    z.sub_(m[:, None]).exp_()
    s = z.sum(dim=1)
    log_s = s.log()
    # sum p^2 = sum e^2 / s^2, e = exp(z - max): a row-wise dot (no [C, V] temporary)
    sq = torch.bmm(z[:, None, :], z[:, :, None]).view(-1).log() - 2.0 * log_s if lsq else None
    return label_logit, m + log_s, s.reciprocal(), sq


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


def _accumulate(dz, h, r, w32, dh, dw, db) -> None:
    """dH[r] = dz @ W; dW += dz^T @ h; db += sum(dz) (float32 accumulators)."""
    if dh is not None:
        dh.index_copy_(0, r, (dz @ w32).to(dh.dtype))
    if dw is not None:
        dw.addmm_(dz.t(), h)
    if db is not None:
        db.add_(dz.sum(dim=0))


def forward_rows(hidden, w32, b32, labels, rows, inv_temp, step, logp, lse, buf=None, softcap=None, lsq=None) -> None:
    """Fill logp[rows] and lse[rows] ([N], w32's dtype) chunk by chunk of ``step`` rows (in
    ``buf`` if given), of the soft-capped logits when ``softcap`` is set, and lsq[rows] = log sum
    p^2 (WPO) when ``lsq`` [N] is given. hidden [N, d], w32 [V, d] and b32 [V] or None in the
    accumulation dtype, labels int [N], rows int64 [M]."""
    buf = chunk_buffer(min(step, rows.numel()), w32) if buf is None else buf
    for start in range(0, rows.numel(), step):
        r = rows[start : start + step]
        lab = labels.index_select(0, r).long()
        z = _chunk_logits(hidden.index_select(0, r).to(w32.dtype), w32, b32, inv_temp, buf)
        _softcap_(z, softcap)
        label_logit, lse_c, _, sq = _exp_inplace(z, lab, lsq is not None)
        lse.index_copy_(0, r, lse_c)
        logp.index_copy_(0, r, label_logit - lse_c)
        if lsq is not None:
            lsq.index_copy_(0, r, sq)


def backward_rows(
    grad, hidden, w32, b32, labels, lse, rows, inv_temp, step, dh, dw, db, buf=None, softcap=None, fbuf=None
) -> None:
    """Accumulate the gradients of sum(grad * logp) over ``rows`` into dh [N, d], dw [V, d],
    db [V] (in place; each None when not wanted). grad [N] and lse [N] in w32's dtype.

    With ``softcap`` the cap's derivative is held in ``fbuf`` (a second chunk buffer, made here
    when not given) and multiplies the logits' gradient."""
    buf = chunk_buffer(min(step, rows.numel()), w32) if buf is None else buf
    if softcap is not None and fbuf is None:
        fbuf = chunk_buffer(min(step, rows.numel()), w32)
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


def pair_chunk(hidden, w32, b32, labels, r, inv_temp, buf, fbuf, softcap, rows_grad, dh, dw, db, lsq=False):
    """One chunk of whole pairs (rows ``r`` int64 [C], C within ``buf``): logits, softmax,
    ``rows_grad(logp [C], log sum p^2 [C] or None) -> (group, g [C])`` (the second only with
    ``lsq``: WPO), the logit gradient in place (times the cap's derivative, held in ``fbuf``,
    when ``softcap`` is set), dh, dw, db. Returns ``group``."""
    lab = labels.index_select(0, r).long()
    h = hidden.index_select(0, r).to(w32.dtype)
    z = _chunk_logits(h, w32, b32, inv_temp, buf)
    dcap = _softcap_(z, softcap, fbuf)
    label_logit, lse_c, inv_sum, sq = _exp_inplace(z, lab, lsq)
    group, g_rows = rows_grad(label_logit - lse_c, sq)
    dz = _grad_inplace(z, lab, g_rows, inv_temp, inv_sum)
    if dcap is not None:
        dz.mul_(dcap)  # chain rule through the cap
    _accumulate(dz, h, r, w32, dh, dw, db)
    return group
