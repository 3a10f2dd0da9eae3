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


def grad_tolerance(scale, dtype, n_terms, *, logit_error=0.0, operand_max=0.0):
    """Element-wise bound on a 16-bit (or fp32) LM-head gradient's error, from the dtype's resolution.

    ``scale`` = the sum of |terms| of each element (``logit_grad_scales``). Two roundings to
    ``dtype`` (on CUDA the gradient tile is rounded to the input dtype before the dW/dH dots, then
    the result is rounded to the parameter's dtype): 2 u(dtype) * scale; float32 accumulation over
    ``n_terms`` terms grows like sqrt(n): 16 * 2^-24 * sqrt(n) * scale; an absolute error
    ``logit_error`` in the logits moves each softmax term p by p * logit_error: 2 * logit_error *
    scale; and fp16's subnormal step (the gradient tile underflowing) times ``n_terms`` times the
    other operand's largest |value| ``operand_max``, plus one subnormal step for the result.
    """
    fi = torch.finfo(dtype)
    rel = 2 * UNIT_ROUNDOFF[dtype] + 16 * 2.0**-24 * math.sqrt(max(1, n_terms)) + 2 * logit_error
    return rel * scale + fi.tiny * fi.eps * (1 + n_terms * operand_max)


def logp_tolerance(hidden, weight, labels, bias=None, ignore_index=-100, temperature=1.0):
    """float64 [N] bound on |error| of each token's float32-accumulated log-prob (0 where ignored),
    and the float64 [N] logit error bound it is built from.

    The inputs (any dtype) are exact in float64, so the error is float32 arithmetic only: a logit
    h . W_v summed over d terms moves by 16 u sqrt(d) times its sum of |terms| (random-walk growth,
    16x margin; u = 2^-24), the log-sum-exp by twice the largest logit error plus 16 u sqrt(V)
    relative from summing V exponentials, plus u |logp| for the final subtraction."""
    h, w = hidden.detach().double(), weight.detach().double()
    d, v = w.shape[1], w.shape[0]
    zabs = h.abs() @ w.abs().T
    if bias is not None:
        zabs = zabs + bias.detach().double().abs()
    zabs = zabs.max(-1).values / temperature
    u = UNIT_ROUNDOFF[torch.float32]
    logit_err = 16 * u * math.sqrt(d) * zabs
    ref = token_logprobs(h, w, labels, bias, ignore_index, temperature)
    tol = 2 * logit_err + 16 * u * math.sqrt(v) + 16 * u * ref.abs()
    return tol * (labels.to(tol.device) != ignore_index), logit_err


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


# ---- one training step of a whole model, in float64 -----------------------------------------------
def pair_losses64(pw, pl, rw, rl, lw, ll, *, beta, alpha=0.0, loss_type="sigmoid", gamma=0.0, label_smoothing=0.0):
    """Per-pair losses (float64 tensors [P], differentiable) written out from ALGORITHMS.md."""
    lw, ll = lw.double(), ll.double()
    if loss_type == "ipo":
        h = (pw - rw) / lw - (pl - rl) / ll
        return (h - 1.0 / (2.0 * beta)) ** 2
    if loss_type in ("sigmoid", "hinge"):
        z = beta * ((pw - rw) - (pl - rl))
    elif loss_type == "sigmoid_norm":
        z = beta * ((pw - rw) / lw - (pl - rl) / ll)
    elif loss_type == "simpo":
        z = beta * (pw / lw - pl / ll) - gamma
    else:
        raise AssertionError(loss_type)
    z = z + alpha * (lw - ll)
    if loss_type == "hinge":
        return torch.clamp(1.0 - z, min=0.0)
    eps = label_smoothing
    return -(1 - eps) * torch.nn.functional.logsigmoid(z) - eps * torch.nn.functional.logsigmoid(-z)


def model_sequence_logps64(model, examples, noise_scale=False):
    """(float64 [2P] summed response log-probs, int64 [2P] response lengths) in pair order, each
    sequence run alone through ``model`` (unpacked, no padding, materialized float64 logits).

    With ``noise_scale`` also float64 [2P]: sqrt(sum over scored tokens t of max_v sum_k (h_tk
    W_vk)^2), the random-walk scale of rounding errors in the logits h_t . W_v summed over a
    sequence (u times it is how far a log-prob computed at unit roundoff u typically moves)."""
    out, lengths, noise = [], [], []
    device = next(model.parameters()).device
    head = model.get_output_embeddings().weight.double()
    for ex in examples:
        for resp in (ex.chosen_ids, ex.rejected_ids):
            ids = torch.tensor([list(ex.prompt_ids) + list(resp)], device=device)
            res = model(ids, output_hidden_states=noise_scale)
            logp = res.logits[0].double().log_softmax(-1)
            p = len(ex.prompt_ids)
            out.append(logp[p - 1 : -1].gather(1, ids[0, p:, None]).sum())
            lengths.append(len(resp))
            if noise_scale:
                h = res.hidden_states[-1][0, p - 1 : -1].detach().double()  # after the final norm
                per_token = (h.pow(2) @ head.detach().pow(2).T).max(-1).values  # max_v sum_k (h_k W_vk)^2
                noise.append(per_token.sum().sqrt())
    if noise_scale:
        return torch.stack(out), torch.tensor(lengths), torch.stack(noise).cpu()
    return torch.stack(out), torch.tensor(lengths)


def reference_step(
    policy, examples, *, ref_model=None, beta, alpha=0.0, loss_type="sigmoid", gamma=0.0, label_smoothing=0.0
):
    """The first step of LR-DPO training on ``examples`` (all in one batch), in float64 on the CPU.

    ``policy`` (and ``ref_model``, default: the policy itself, as the Trainer's default reference)
    are copied to float64; returns a namespace with ``loss`` (float), ``grads`` {parameter name:
    float64 gradient of the mean pair loss}, ``grad_norm``, the TRL-named ``metrics``, and per
    sequence ``logps``, ``ref_logps``, ``lengths`` and ``logp_noise`` (``model_sequence_logps64``).
    Independent of the packed path, the fused kernels and the trainer's accumulation.
    """
    import copy
    from types import SimpleNamespace

    pol = copy.deepcopy(policy).cpu().double().eval()
    pol.zero_grad(set_to_none=True)
    logps, lengths, noise = model_sequence_logps64(pol, examples, noise_scale=True)
    if loss_type == "simpo":
        ref = torch.zeros_like(logps)
    else:
        with torch.no_grad():
            ref = model_sequence_logps64(
                copy.deepcopy(ref_model if ref_model is not None else policy).cpu().double().eval(), examples
            )[0]
    losses = pair_losses64(
        logps[0::2],
        logps[1::2],
        ref[0::2],
        ref[1::2],
        lengths[0::2],
        lengths[1::2],
        beta=beta,
        alpha=alpha,
        loss_type=loss_type,
        gamma=gamma,
        label_smoothing=label_smoothing,
    )
    loss = losses.mean()
    loss.backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach() for n, p in pol.named_parameters()}
    lp = logps.detach()
    if loss_type == "simpo":
        rewards = beta * lp / lengths.double()
    else:
        rewards = beta * (lp - ref)
    metrics = {
        "rewards/chosen": float(rewards[0::2].mean()),
        "rewards/rejected": float(rewards[1::2].mean()),
        "rewards/margins": float((rewards[0::2] - rewards[1::2]).mean()),
        "rewards/accuracies": float((rewards[0::2] > rewards[1::2]).double().mean()),
        "logps/chosen": float(lp[0::2].mean()),
        "logps/rejected": float(lp[1::2].mean()),
        "length/chosen": float(lengths[0::2].double().mean()),
        "length/rejected": float(lengths[1::2].double().mean()),
    }
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
    return SimpleNamespace(
        loss=float(loss.detach()),
        grads=grads,
        grad_norm=norm,
        metrics=metrics,
        logps=lp,
        ref_logps=ref,
        lengths=lengths,
        logp_noise=noise,
    )


def adamw_first_step(p0, g, *, lr, weight_decay, eps=1e-8, max_grad_norm=None, grad_norm=None):
    """Parameters after AdamW's first step from ``p0`` with gradient ``g`` (float64): the bias-
    corrected m / sqrt(v) is g / |g|, so p1 = p0 (1 - lr wd) - lr c g / (c |g| + eps), with c the
    clipping factor min(1, max_norm / (norm + 1e-6))."""
    c = 1.0 if not max_grad_norm else min(1.0, max_grad_norm / (grad_norm + 1e-6))
    return p0.double() * (1 - lr * weight_decay) - lr * c * g / (c * g.abs() + eps)


# ---- final-logit soft-capping (Gemma 2): z -> cap * tanh(z / cap) after the temperature ---------------
def capped_logits(hidden, weight, bias=None, temperature=1.0, softcap=None):
    """float64 [N, V]: cap * tanh(((h W^T + b) / T) / cap) (no cap when softcap is None)."""
    z = hidden.double() @ weight.double().T
    if bias is not None:
        z = z + bias.double()
    z = z / temperature
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z


def capped_token_logprobs(hidden, weight, labels, bias=None, ignore_index=-100, temperature=1.0, softcap=None):
    """float64 [N]: log_softmax of the capped logits at the labels; 0 where label == ignore_index."""
    logp = capped_logits(hidden, weight, bias, temperature, softcap).log_softmax(-1)
    scored = labels != ignore_index
    safe = torch.where(scored, labels, torch.zeros_like(labels)).long()
    return logp.gather(1, safe[:, None]).squeeze(1) * scored


def capped_sequence_logprobs(hidden, weight, labels, cu_seqlens, ignore_index=-100, temperature=1.0, softcap=None):
    """(float64 [S] per-sequence sums, int64 [S] scored counts) of ``capped_token_logprobs``."""
    tok = capped_token_logprobs(hidden, weight, labels, None, ignore_index, temperature, softcap)
    cu = cu_seqlens.tolist()
    logps = torch.stack([tok[a:b].sum() for a, b in zip(cu[:-1], cu[1:])])
    lengths = torch.tensor([int((labels[a:b] != ignore_index).sum()) for a, b in zip(cu[:-1], cu[1:])])
    return logps, lengths


def capped_grad_scales(hidden, weight, labels, g_tok, bias=None, ignore_index=-100, temperature=1.0, softcap=None):
    """float64 sums of |terms| (S_h [N, d], S_w [V, d], S_b [V]) of the LM-head gradients with the
    cap: dz = g (onehot - softmax(z')) (1 - tanh(z / cap)^2) / T, dH = dz W, dW = dz^T H."""
    h, w = hidden.detach().double(), weight.detach().double()
    z = capped_logits(h, w, None if bias is None else bias.detach(), temperature, None)
    t = torch.tanh(z / softcap)
    p = (softcap * t).softmax(-1)
    scored = labels != ignore_index
    onehot = torch.zeros_like(p)
    rows = torch.nonzero(scored).flatten()
    onehot[rows, labels[rows].long()] = 1.0
    g = (g_tok.detach().double() * scored)[:, None]
    dz = (g * (onehot - p) * (1 - t * t) / temperature).abs()
    return dz @ w.abs(), dz.T @ h.abs(), dz.sum(0)


# ---- length control (LD-DPO, SamPO) and WPO ----------------------------------------------------------
def ld_weights_loop(labels, cu_seqlens, ld_alpha, ignore_index=-100):
    """LD-DPO's token weights written out with python loops: float64 [N]."""
    out = [0.0] * labels.numel()
    cu, lab = cu_seqlens.tolist(), labels.tolist()
    for p in range(len(cu) // 2):
        spans = [range(cu[2 * p + k], cu[2 * p + k + 1]) for k in (0, 1)]
        scored = [[t for t in s if lab[t] != ignore_index] for s in spans]
        lp = min(len(scored[0]), len(scored[1]))
        for rows in scored:
            for i, t in enumerate(rows):
                out[t] = 1.0 if i < lp else ld_alpha
    return torch.tensor(out, dtype=torch.float64)


def weighted_pair_loss64(hidden, weight, labels, cu, ref, kw, token_weights=None, wpo=False, ignore_index=-100):
    """float64 (loss, dH, dW, seq logps, mean WPO pair weight, d loss / d seq logps) from
    materialized logits: each
    sequence's sum of w_t log p(y_t); with ``wpo`` each pair's loss times exp(mean (log p(y_t) -
    (logsumexp(2 z_t) - 2 logsumexp(z_t)))) of both responses, no gradient through it."""
    rh, rw = (t.detach().double().clone().requires_grad_(True) for t in (hidden, weight))
    z = rh @ rw.T
    scored = labels != ignore_index
    lab = labels.clamp(min=0)
    logp = (z.log_softmax(-1).gather(1, lab[:, None]).squeeze(1)) * scored
    seq = torch.repeat_interleave(torch.arange(cu.numel() - 1), cu[1:].long() - cu[:-1].long())
    tw = torch.ones(labels.numel(), dtype=torch.float64) if token_weights is None else token_weights.double()
    seq_logps = torch.zeros(cu.numel() - 1, dtype=torch.float64).index_add(0, seq, logp * tw)
    seq_logps.retain_grad()
    lengths = torch.zeros(cu.numel() - 1, dtype=torch.int64).index_add(0, seq, scored.long())
    losses = pair_losses64(
        seq_logps[0::2], seq_logps[1::2], ref[0::2].double(), ref[1::2].double(), lengths[0::2], lengths[1::2], **kw
    )
    pw = torch.ones_like(losses)
    if wpo:
        with torch.no_grad():
            lsq = torch.logsumexp(2.0 * z, -1) - 2.0 * torch.logsumexp(z, -1)
            tot = torch.zeros_like(seq_logps).index_add(0, seq, (logp - lsq) * scored)
            log_w = tot / lengths.clamp(min=1).double()
            pw = torch.exp(log_w[0::2] + log_w[1::2])
    loss = (losses * pw).mean()
    loss.backward()
    return loss.detach(), rh.grad, rw.grad, seq_logps.detach(), pw.mean(), seq_logps.grad
