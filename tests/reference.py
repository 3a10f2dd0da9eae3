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
    actual = actual.detach().double()
    expected = expected.detach().double()
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3e} > {tol:.1e} * {scale:.3e}"
