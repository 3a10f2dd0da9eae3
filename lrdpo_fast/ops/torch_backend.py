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


def chunk_rows(vocab: int, chunk_tokens: int | None = None) -> int:
    """Rows per chunk so that a [rows, vocab] float32 block stays within CHUNK_ELEMENTS."""
    if chunk_tokens is not None:
        return max(1, int(chunk_tokens))
    return max(8, CHUNK_ELEMENTS // max(vocab, 1))


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


def _exp_inplace(z: torch.Tensor, lab: torch.Tensor):
    """Turn logits z [C, V] into exp(z - max) in place; return (label logit, lse, 1/sum) [C].

    The softmax is z * (1/sum); the division is folded into the gradient's per-row scale."""
    label_logit = z.gather(1, lab[:, None]).squeeze(1)
    m = z.amax(dim=1)
    z.sub_(m[:, None]).exp_()
    s = z.sum(dim=1)
    return label_logit, m + s.log(), s.reciprocal()


def _grad_inplace(e: torch.Tensor, lab: torch.Tensor, g: torch.Tensor, inv_temp: float,
                  inv_sum: torch.Tensor | None = None) -> torch.Tensor:
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


def _forward_rows(hidden, w32, b32, labels, rows, inv_temp, step, logp, lse, buf=None) -> None:
    """Fill logp[rows] and lse[rows] chunk by chunk (in ``buf`` if given)."""
    buf = _chunk_buffer(min(step, rows.numel()), w32) if buf is None else buf
    for start in range(0, rows.numel(), step):
        r = rows[start:start + step]
        lab = labels.index_select(0, r).long()
        z = _chunk_logits(hidden.index_select(0, r).to(w32.dtype), w32, b32, inv_temp, buf)
        label_logit, lse_c, _ = _exp_inplace(z, lab)
        lse.index_copy_(0, r, lse_c)
        logp.index_copy_(0, r, label_logit - lse_c)


def _backward_rows(grad, hidden, w32, b32, labels, lse, rows, inv_temp, step, dh, dw, db, buf=None) -> None:
    """Accumulate the gradients of sum(grad * logp) over ``rows`` into dh, dw, db (in place)."""
    buf = _chunk_buffer(min(step, rows.numel()), w32) if buf is None else buf
    for start in range(0, rows.numel(), step):
        r = rows[start:start + step]
        lab = labels.index_select(0, r).long()
        h = hidden.index_select(0, r).to(w32.dtype)
        z = _chunk_logits(h, w32, b32, inv_temp, buf)
        z.sub_(lse.index_select(0, r)[:, None]).exp_()
        _accumulate(_grad_inplace(z, lab, grad.index_select(0, r), inv_temp), h, r, w32, dh, dw, db)


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
):
    """Per-token log p(label) without materializing [N, V].

    hidden [N, d], weight [V, d], bias [V] or None (float32/bf16/fp16), labels int [N].
    Returns (logp float32 [N], lse float32 [N], rows int64 [M]): 0.0 at ignored rows in both.
    """
    n = hidden.shape[0]
    logp = hidden.new_zeros(n, dtype=_acc_dtype(weight))
    lse = torch.zeros_like(logp)
    rows = scored_rows(labels, ignore_index)
    step = chunk_rows(weight.shape[0], chunk_tokens)
    _forward_rows(hidden, _as_acc(weight, weight), _as_acc(bias, weight), labels, rows, 1.0 / temperature, step, logp, lse)
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
):
    """Gradients of sum(grad * logp) w.r.t. (hidden, weight, bias), rebuilding each chunk.

    grad float [N] (upstream gradient per token), lse float32 [N] and rows int64 [M] from
    ``token_logprobs_forward``; needs = which of (hidden, weight, bias) want a gradient.
    Returns (dH like hidden or None, dW like weight or None, db like bias or None).
    """
    dh, dw, db = _grad_buffers(hidden, weight, needs)
    step = chunk_rows(weight.shape[0], chunk_tokens)
    _backward_rows(
        grad.to(_acc_dtype(weight)), hidden, _as_acc(weight, weight), _as_acc(bias, weight), labels, lse, rows, 1.0 / temperature, step, dh, dw, db
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
):
    """Sequence log-probs of a packed pair batch and, in the same sweep, the loss gradients.

    hidden [N, d], weight [V, d], labels int [N], seq_ids int64 [N] (sequence of each token, in
    pair order c0, r0, c1, r1, ...), n_seqs = S (even). ``pair_grad(p0, p1, seq_logps)`` takes the
    float32 log-probs [2k] of pairs p0..p1-1 (k = p1 - p0) and returns d loss / d logp [2k];
    None means forward only. Whole pairs go into one chunk, so the chunk's softmax is turned into
    its gradient at once; a pair larger than the chunk budget is done in two passes (recompute).

    Returns (seq_logps float32 [S], dH, dW, db) with None for grads not asked or not computed.
    """
    n_pairs = n_seqs // 2
    rows = scored_rows(labels, ignore_index)
    row_seq = seq_ids.index_select(0, rows)
    seq_logps = hidden.new_zeros(n_seqs, dtype=_acc_dtype(weight))
    if pair_grad is None:
        logp, _, _ = token_logprobs_forward(hidden, weight, bias, labels, ignore_index, temperature, chunk_tokens)
        seq_logps.index_add_(0, seq_ids, logp)
        return seq_logps, None, None, None

    w32, b32 = _as_acc(weight, weight), _as_acc(bias, weight)
    inv_temp = 1.0 / temperature
    dh, dw, db = _grad_buffers(hidden, weight, needs)
    budget = chunk_rows(weight.shape[0], chunk_tokens)
    # scored rows per pair -> row offsets of each pair in `rows` (pairs are contiguous)
    per_pair = torch.bincount(row_seq // 2, minlength=n_pairs).tolist()
    starts = [0]
    for c in per_pair:
        starts.append(starts[-1] + c)
    buf = _chunk_buffer(min(budget, rows.numel()), w32)
    p0 = 0
    while p0 < n_pairs:
        p1 = p0 + 1
        while p1 < n_pairs and starts[p1 + 1] - starts[p0] <= budget:
            p1 += 1
        r = rows[starts[p0]:starts[p1]]
        local = row_seq[starts[p0]:starts[p1]] - 2 * p0
        if r.numel() <= budget:
            lab = labels.index_select(0, r).long()
            h = hidden.index_select(0, r).to(w32.dtype)
            z = _chunk_logits(h, w32, b32, inv_temp, buf)
            label_logit, lse_c, inv_sum = _exp_inplace(z, lab)
            group = seq_logps.new_zeros(2 * (p1 - p0)).index_add_(0, local, label_logit - lse_c)
            g_seq = pair_grad(p0, p1, group).to(group.dtype)
            _accumulate(_grad_inplace(z, lab, g_seq.index_select(0, local), inv_temp, inv_sum), h, r, w32, dh, dw, db)
        else:  # one pair longer than the budget: forward in pieces, then recompute
            logp = seq_logps.new_zeros(hidden.shape[0])
            lse = torch.zeros_like(logp)
            _forward_rows(hidden, w32, b32, labels, r, inv_temp, budget, logp, lse, buf)
            group = seq_logps.new_zeros(2 * (p1 - p0)).index_add_(0, local, logp.index_select(0, r))
            g_seq = pair_grad(p0, p1, group).to(group.dtype)
            g_tok = torch.zeros_like(logp).index_copy_(0, r, g_seq.index_select(0, local))
            _backward_rows(g_tok, hidden, w32, b32, labels, lse, r, inv_temp, budget, dh, dw, db, buf)
        seq_logps[2 * p0:2 * p1] = group
        p0 = p1
    return seq_logps, dh, _cast(dw, weight), _cast(db, bias)
