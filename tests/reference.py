"""Plain float64 references with materialized logits: what every kernel is checked against."""
from __future__ import annotations

import math

import torch


def token_logprobs(hidden, weight, labels, bias=None, ignore_index=-100, temperature=1.0):
    """float64 [N] log p(label) from materialized [N, V] logits; 0 where label == ignore_index."""
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    z = z / temperature
    logp = z.log_softmax(-1)
    scored = labels != ignore_index
    safe = torch.where(scored, labels, torch.zeros_like(labels)).long()
    return logp.gather(1, safe[:, None]).squeeze(1) * scored


def sequence_logprobs(hidden, weight, labels, cu_seqlens, bias=None, ignore_index=-100, temperature=1.0):
    """(float64 [S] sums, int64 [S] scored counts) over cu_seqlens segments."""
    tok = token_logprobs(hidden, weight, labels, bias, ignore_index, temperature)
    cu = cu_seqlens.tolist()
    logps = torch.stack([tok[a:b].sum() for a, b in zip(cu[:-1], cu[1:])])
    lengths = torch.tensor([int((labels[a:b] != ignore_index).sum()) for a, b in zip(cu[:-1], cu[1:])])
    return logps, lengths


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def pair_loss(pw, pl, rw, rl, lw, ll, *, beta, alpha=0.0, loss_type="sigmoid", gamma=0.0, label_smoothing=0.0):
    """One pair's loss written out by hand from ALGORITHMS.md (python floats)."""
    eps = label_smoothing
    if loss_type in ("sigmoid", "hinge"):
        z = beta * ((pw - rw) - (pl - rl)) + alpha * (lw - ll)
    elif loss_type == "sigmoid_norm":
        z = beta * ((pw - rw) / lw - (pl - rl) / ll) + alpha * (lw - ll)
    elif loss_type == "simpo":
        z = beta * (pw / lw - pl / ll) - gamma + alpha * (lw - ll)
    elif loss_type == "ipo":
        h = (pw - rw) / lw - (pl - rl) / ll
        return (h - 1.0 / (2.0 * beta)) ** 2
    else:
        raise AssertionError(loss_type)
    if loss_type == "hinge":
        return max(0.0, 1.0 - z)
    return -(1 - eps) * _log_sigmoid(z) - eps * _log_sigmoid(-z)


def mean_pair_loss(seq_logps, ref_logps, lengths, **kw) -> float:
    """Mean of ``pair_loss`` over pairs laid out [c0, r0, c1, r1, ...]."""
    s, r, n = seq_logps.tolist(), ref_logps.tolist(), lengths.tolist()
    losses = [pair_loss(s[i], s[i + 1], r[i], r[i + 1], n[i], n[i + 1], **kw) for i in range(0, len(s), 2)]
    return sum(losses) / len(losses)


def assert_close(actual, expected, tol, what=""):
    """max |a - e| <= tol * max(1, max |e|): relative to the tensor's scale, robust near zero."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3e} > {tol:.1e} * {scale:.3e}"


# ---- tolerances from the dtype's resolution -----------------------------------------------------
# Unit roundoff u = eps / 2 of the dtypes the kernels take (bf16 keeps 8 significant bits: 2^-8;
# fp16 11: 2^-11; fp32 24: 2^-24): one rounding to the dtype moves a value by at most u times its
# magnitude.
UNIT_ROUNDOFF = {dt: torch.finfo(dt).eps / 2 for dt in (torch.float32, torch.bfloat16, torch.float16)}


def logit_grad_scales(hidden, weight, labels, g_tok, bias=None, ignore_index=-100, temperature=1.0):
    """float64 sums of |terms| of the LM-head gradients: (S_h [N, d], S_w [V, d], S_b [V]).

    With dz = g_t (onehot(label_t) - softmax(z_t)) / T (the logits' gradient), dH = dz W and
    dW = dz^T H; S_h = |dz| |W| and S_w = |dz|^T |H| bound |dH| and |dW| element by element and
    are the scale that any rounding of dz, H or W is relative to.
    """
    h, w = hidden.detach().double(), weight.detach().double()
    z = h @ w.T
    if bias is not None:
        z = z + bias.detach().double()
    p = (z / temperature).softmax(-1)
    scored = labels != ignore_index
    onehot = torch.zeros_like(p)
    rows = torch.nonzero(scored).flatten()
    onehot[rows, labels[rows].long()] = 1.0
    g = (g_tok.detach().double().to(p.device) * scored)[:, None]
    dz = (g * (onehot - p) / temperature).abs()
    return dz @ w.abs(), dz.T @ h.abs(), dz.sum(0)


def grad_tolerance(scale, dtype, n_terms):
    """Element-wise bound on a 16-bit (or fp32) LM-head gradient's error, from the dtype's resolution.

    ``scale`` = the sum of |terms| of each element (``logit_grad_scales``). Two roundings to
    ``dtype`` (on CUDA the gradient tile is rounded to the input dtype before the dW/dH dots, then
    the result is rounded to the parameter's dtype): 2 u(dtype) * scale; float32 accumulation over
    ``n_terms`` terms grows like sqrt(n): 16 * 2^-24 * sqrt(n) * scale; plus fp16's subnormal step.
    """
    fi = torch.finfo(dtype)
    rel = 2 * UNIT_ROUNDOFF[dtype] + 16 * 2.0**-24 * math.sqrt(max(1, n_terms))
    return rel * scale + fi.tiny * fi.eps


def assert_within(actual, expected, bound, what=""):
    """|a - e| <= bound element by element (bound: a tensor shaped like ``expected`` or a float)."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    b = bound.detach().double().cpu() if isinstance(bound, torch.Tensor) else torch.tensor(float(bound))
    err = (a - e).abs()
    bad = err > b
    if bool(bad.any()):
        ratio = (err / b.clamp_min(1e-300)).max()
        i = int(torch.argmax((err / b.expand_as(err).clamp_min(1e-300)).flatten()))
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{err.numel()} elements outside the bound, worst at flat index {i}: "
            f"|{a.flatten()[i]:.6e} - {e.flatten()[i]:.6e}| = {err.flatten()[i]:.3e} > "
            f"{b.expand_as(err).flatten()[i]:.3e} ({float(ratio):.1f}x the bound)"
        )
