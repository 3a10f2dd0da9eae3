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
Triton row kernel per chunk (``kernels/softmax_grad.py``) instead of the elementwise torch ops.
Optional gradient filter (``GRAD_SKIP_THRESHOLD``, 16-bit inputs only): vocabulary blocks whose
|gradient| is all below it drop out of both GEMMs.

Final-logit soft-capping (``softcap``, Gemma-2's ``final_logit_softcapping``): the temperature-
scaled logits z become z' = cap * tanh(z / cap) before the softmax, and the logits' gradient is
multiplied by dz'/dz = 1 - tanh(z / cap)^2. The elementwise form keeps that factor in a second
chunk-sized buffer during backward (the chunks are halved then, so the footprint stays one
CHUNK_ELEMENTS budget); the CUDA form's row kernel computes it on the fly (no extra buffer).

This module holds the entry points, the knobs (read at each call: set them here) and the chunk
sizing; the per-chunk arithmetic of the two forms is in ``torch_eager_form`` (elementwise) and
``torch_gemm_form`` (GEMMs + the row pass, whose launcher ``row_pass`` is re-exported here).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from . import torch_eager_form as eager
from . import torch_gemm_form as gemm
from .length_control import wpo_log_weights
from .torch_gemm_form import row_pass

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


__all__ = [
    "CHUNK_ELEMENTS",
    "CUDA_CHUNK_ELEMENTS",
    "FUSED_PASS",
    "GRAD_SKIP_THRESHOLD",
    "PairGrad",
    "SKIP_MAX_LIVE_FRACTION",
    "chunk_rows",
    "fused_pass_enabled",
    "pair_forward_backward",
    "row_pass",
    "scored_rows",
    "token_logprobs_backward",
    "token_logprobs_forward",
]

_row_block = gemm.row_block  # the row pass's (BLOCK_V, num_warps), as the tests read it


def chunk_rows(vocab: int, chunk_tokens: int | None = None, cuda: bool = False, buffers: int = 1) -> int:
    """Rows per chunk so that ``buffers`` [rows, vocab] float32 blocks together stay within
    CHUNK_ELEMENTS (CUDA_CHUNK_ELEMENTS for the CUDA form); ``chunk_tokens`` overrides it."""
    if chunk_tokens is not None:
        return max(1, int(chunk_tokens))
    return max(8, (CUDA_CHUNK_ELEMENTS if cuda else CHUNK_ELEMENTS) // max(buffers, 1) // max(vocab, 1))


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


def _row_pass_form() -> gemm.RowPass:
    """The CUDA form's settings as this module's knobs stand now (tests and bench set them here)."""
    return gemm.RowPass(row_pass, GRAD_SKIP_THRESHOLD, SKIP_MAX_LIVE_FRACTION)


def scored_rows(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """int64 [M] indices of the rows whose label is scored (label != ignore_index)."""
    return torch.nonzero(labels != ignore_index, as_tuple=False).flatten()


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: float32 for fp32/bf16/fp16 inputs, float64 for float64 (gradcheck)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _as_acc(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(_acc_dtype(like))


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
    lsq: torch.Tensor | None = None,
):
    """Per-token log p(label) without materializing [N, V].

    hidden [N, d], weight [V, d], bias [V] or None (float32/bf16/fp16, or float64), labels int
    [N]; softcap: None or the cap of the soft-capped logits cap * tanh(z / T / cap).
    Returns (logp float32 [N], lse float32 [N], rows int64 [M]): 0.0 at ignored rows in both
    (float64 for float64 inputs); lse is that of the (capped) logits. lsq: None or [N] of logp's
    dtype, zeros, filled at the scored rows with log sum_v p_v^2 (WPO) in the same sweep.
    """
    n = hidden.shape[0]
    logp = hidden.new_zeros(n, dtype=_acc_dtype(weight))
    lse = torch.zeros_like(logp)
    rows = scored_rows(labels, ignore_index)
    if fused_pass_enabled(hidden):
        step = chunk_rows(weight.shape[0], chunk_tokens, cuda=True)
        b32 = None if bias is None else bias.float()
        gemm.forward_rows(
            _row_pass_form(),
            hidden,
            weight,
            b32,
            labels,
            rows,
            1.0 / temperature,
            step,
            logp,
            lse,
            softcap=softcap,
            lsq=lsq,
        )
        return logp, lse, rows
    step = chunk_rows(weight.shape[0], chunk_tokens)
    w32, b32 = _as_acc(weight, weight), _as_acc(bias, weight)
    eager.forward_rows(hidden, w32, b32, labels, rows, 1.0 / temperature, step, logp, lse, softcap=softcap, lsq=lsq)
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
    inv_temp = 1.0 / temperature
    if fused_pass_enabled(hidden):
        step = chunk_rows(weight.shape[0], chunk_tokens, cuda=True)
        b32 = None if bias is None else bias.float()
        gemm.backward_rows(
            _row_pass_form(),
            grad.float(),
            hidden,
            weight,
            b32,
            labels,
            lse,
            rows,
            inv_temp,
            step,
            dh,
            dw,
            db,
            softcap=softcap,
        )
        return dh, _cast(dw, weight), _cast(db, bias)
    step = chunk_rows(weight.shape[0], chunk_tokens, buffers=1 if softcap is None else 2)
    w32, b32 = _as_acc(weight, weight), _as_acc(bias, weight)
    eager.backward_rows(
        grad.to(_acc_dtype(weight)), hidden, w32, b32, labels, lse, rows, inv_temp, step, dh, dw, db, softcap=softcap
    )
    return dh, _cast(dw, weight), _cast(db, bias)


PairGrad = Callable[[int, int, torch.Tensor, torch.Tensor | None], torch.Tensor]


def _pair_row_starts(row_seq: torch.Tensor, n_pairs: int) -> list[int]:
    """Offsets [n_pairs + 1] of each pair's scored rows in the scored-row list (pairs are
    contiguous): row_seq int64 [M] is the sequence of each scored row."""
    starts = [0]
    for c in torch.bincount(row_seq // 2, minlength=n_pairs).tolist():
        starts.append(starts[-1] + c)
    return starts


def _pair_groups(starts: list[int], budget: int):
    """(p0, p1): runs of consecutive pairs whose scored rows fit in ``budget`` rows together (a
    run of one pair may exceed it)."""
    n_pairs = len(starts) - 1
    p0 = 0
    while p0 < n_pairs:
        p1 = p0 + 1
        while p1 < n_pairs and starts[p1 + 1] - starts[p0] <= budget:
            p1 += 1
        yield p0, p1
        p0 = p1


class _RowsGrad:
    """The pairs p0..p1-1 of one chunk (``local``: int64 [C], each row's sequence within the run;
    ``tw``: float [C] token weights of the rows or None): ``__call__(logp_rows [C], lsq_rows [C]
    or None)`` sums the (weighted) rows into the group's sequence log-probs [2k] in ``like``'s
    dtype and returns (group, per-row upstream gradient [C] of the pair loss, times the row's
    weight). With lsq_rows (WPO) the sequences' log-weights go to ``wpo_out[2 p0 : 2 p1]``."""

    def __init__(self, pair_grad: PairGrad, p0: int, p1: int, local, like, tw=None, wpo_out=None):
        self.pair_grad, self.p0, self.p1, self.local, self.like = pair_grad, p0, p1, local, like
        self.tw, self.wpo_out = tw, wpo_out

    def __call__(self, logp_rows: torch.Tensor, lsq_rows: torch.Tensor | None = None):
        """(group [2k], g_rows [C]) of the chunk's rows (see the class)."""
        k2 = 2 * (self.p1 - self.p0)
        w_logp = logp_rows if self.tw is None else logp_rows * self.tw.to(logp_rows.dtype)
        group = self.like.new_zeros(k2).index_add_(0, self.local, w_logp)
        log_w = None
        if lsq_rows is not None and self.wpo_out is not None:
            count = torch.zeros(k2, dtype=torch.float32, device=logp_rows.device)
            count.index_add_(0, self.local, torch.ones_like(logp_rows, dtype=torch.float32))
            tot = torch.zeros_like(count).index_add_(0, self.local, (logp_rows - lsq_rows).float())
            log_w = tot / count.clamp(min=1.0)
            self.wpo_out[2 * self.p0 : 2 * self.p1] = log_w
        g_seq = self.pair_grad(self.p0, self.p1, group, log_w).to(group.dtype)
        g_rows = g_seq.index_select(0, self.local)
        return group, g_rows if self.tw is None else g_rows * self.tw.to(g_rows.dtype)


class _PairSweep:
    """The per-call state of ``pair_forward_backward``: the form (CUDA or elementwise), the head
    in that form's dtype, the chunk budget and buffers, and the gradient accumulators."""

    def __init__(self, hidden, weight, bias, labels, temperature, needs, chunk_tokens, softcap, n_rows, wpo=False):
        self.fused, self.wpo = fused_pass_enabled(hidden), wpo
        self.hidden, self.labels, self.softcap = hidden, labels, softcap
        self.inv_temp = 1.0 / temperature
        # the CUDA form keeps the weight in its own dtype (16-bit GEMMs with float32 results)
        self.w = weight if self.fused else _as_acc(weight, weight)
        self.b = None if bias is None else (bias.float() if self.fused else _as_acc(bias, weight))
        self.dh, self.dw, self.db = _grad_buffers(hidden, weight, needs)
        # the elementwise form holds the cap's derivative in a second chunk buffer: half the rows each
        two_buffers = softcap is not None and not self.fused
        self.budget = chunk_rows(weight.shape[0], chunk_tokens, cuda=self.fused, buffers=2 if two_buffers else 1)
        rows = min(self.budget, n_rows)
        self.buf = gemm.fp_buffer(rows, self.w) if self.fused else eager.chunk_buffer(rows, self.w)
        self.fbuf = eager.chunk_buffer(rows, self.w) if two_buffers else None
        self.rp = _row_pass_form() if self.fused else None

    def chunk(self, r: torch.Tensor, rows_grad: _RowsGrad) -> torch.Tensor:
        """Whole pairs whose rows ``r`` fit in one chunk: one sweep, gradient formed in hand."""
        grads = (self.dh, self.dw, self.db)
        if self.fused:
            return gemm.pair_chunk(
                self.rp,
                self.hidden,
                self.w,
                self.b,
                self.labels,
                r,
                self.inv_temp,
                self.buf,
                self.softcap,
                rows_grad,
                *grads,
                lsq=self.wpo,
            )
        return eager.pair_chunk(
            self.hidden,
            self.w,
            self.b,
            self.labels,
            r,
            self.inv_temp,
            self.buf,
            self.fbuf,
            self.softcap,
            rows_grad,
            *grads,
            lsq=self.wpo,
        )

    def two_pass(self, r: torch.Tensor, rows_grad) -> torch.Tensor:
        """One pair longer than the budget: forward in pieces, then recompute for the gradient."""
        logp = self.hidden.new_zeros(self.hidden.shape[0], dtype=_acc_dtype(self.w))
        lse = torch.zeros_like(logp)
        lsq = torch.zeros_like(logp) if self.wpo else None
        head = (self.hidden, self.w, self.b, self.labels)
        if self.fused:
            gemm.forward_rows(self.rp, *head, r, self.inv_temp, self.budget, logp, lse, self.buf, self.softcap, lsq)
        else:
            eager.forward_rows(*head, r, self.inv_temp, self.budget, logp, lse, self.buf, self.softcap, lsq)
        group, g_rows = rows_grad(logp.index_select(0, r), None if lsq is None else lsq.index_select(0, r))
        g_tok = torch.zeros_like(logp).index_copy_(0, r, g_rows)
        tail = (lse, r, self.inv_temp, self.budget, self.dh, self.dw, self.db, self.buf, self.softcap)
        if self.fused:
            gemm.backward_rows(self.rp, g_tok, *head, *tail)
        else:
            eager.backward_rows(g_tok, *head, *tail, self.fbuf)
        return group


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
    token_weights: torch.Tensor | None = None,
    wpo_out: torch.Tensor | None = None,
):
    """Sequence log-probs of a packed pair batch and, in the same sweep, the loss gradients.

    hidden [N, d], weight [V, d], labels int [N], seq_ids int64 [N] (sequence of each token, in
    pair order c0, r0, c1, r1, ...), n_seqs = S (even). ``pair_grad(p0, p1, seq_logps, log_w)``
    takes the float32 log-probs [2k] of pairs p0..p1-1 (k = p1 - p0) and their WPO log-weights
    [2k] (None without WPO) and returns d loss / d logp [2k]; None means forward only.
    token_weights: None or float [N], each token's weight inside its sequence's sum (and on its
    gradient). wpo_out: None or float32 [S], filled with each sequence's WPO log-weight (the
    mean over its scored tokens of logp - log sum p^2), formed in the same sweep. Whole pairs go into one chunk, so the chunk's softmax is turned into
    its gradient at once; a pair larger than the chunk budget is done in two passes (recompute).
    softcap: None or the cap of the soft-capped logits, cap * tanh(z / T / cap) (Gemma-2).

    Returns (seq_logps float32 [S], dH, dW, db) with None for grads not asked or not computed.
    """
    seq_logps = hidden.new_zeros(n_seqs, dtype=_acc_dtype(weight))
    if pair_grad is None:
        lsq = None if wpo_out is None else torch.zeros(hidden.shape[0], dtype=seq_logps.dtype, device=hidden.device)
        logp, _, _ = token_logprobs_forward(
            hidden, weight, bias, labels, ignore_index, temperature, chunk_tokens, softcap=softcap, lsq=lsq
        )
        if wpo_out is not None:
            lengths = torch.zeros(n_seqs, dtype=torch.int64, device=hidden.device)
            lengths.index_add_(0, seq_ids, (labels != ignore_index).long())
            wpo_out.copy_(wpo_log_weights(logp, lsq, seq_ids, lengths))
        seq_logps.index_add_(0, seq_ids, logp if token_weights is None else logp * token_weights.to(logp.dtype))
        return seq_logps, None, None, None
    rows = scored_rows(labels, ignore_index)
    row_seq = seq_ids.index_select(0, rows)
    starts = _pair_row_starts(row_seq, n_seqs // 2)
    wpo = wpo_out is not None
    sweep = _PairSweep(hidden, weight, bias, labels, temperature, needs, chunk_tokens, softcap, rows.numel(), wpo)
    if wpo:
        wpo_out.zero_()  # a sequence without scored rows keeps log-weight 0
    for p0, p1 in _pair_groups(starts, sweep.budget):
        r = rows[starts[p0] : starts[p1]]
        local = row_seq[starts[p0] : starts[p1]] - 2 * p0
        tw = None if token_weights is None else token_weights.index_select(0, r)
        rows_grad = _RowsGrad(pair_grad, p0, p1, local, seq_logps, tw, wpo_out)
        run = sweep.chunk if r.numel() <= sweep.budget else sweep.two_pass
        seq_logps[2 * p0 : 2 * p1] = run(r, rows_grad)
    return seq_logps, sweep.dh, _cast(sweep.dw, weight), _cast(sweep.db, bias)
