"""fused_lrdpo_loss / LRDPOLoss: the whole objective from hidden states, both backends."""

import pytest
import torch
from cases import backend_device, leaf, make_case, to_device
from reference import (
    assert_close,
    assert_within,
    grad_tolerance,
    logit_grad_scales,
    mean_pair_loss,
    sequence_logprobs,
)

import lrdpo_fast as lf

BACKENDS = ["torch", "triton"]
KWS = [
    dict(loss_type="sigmoid", beta=0.1),
    dict(loss_type="sigmoid", beta=0.1, alpha=0.03),
    dict(loss_type="sigmoid", beta=0.3, alpha=0.01, label_smoothing=0.1),
    dict(loss_type="hinge", beta=0.2, alpha=0.01),
    dict(loss_type="ipo", beta=0.5),
    dict(loss_type="sigmoid_norm", beta=1.0, alpha=0.02),
    dict(loss_type="simpo", beta=2.0, gamma=0.5, alpha=0.01),
]


def _pair_case(n_pairs=3, d=20, v=61, dtype=torch.float32, seed=0):
    # each sequence: 2-4 prompt tokens (ignored), 1-6 response tokens, last position ignored
    g = torch.Generator().manual_seed(seed)
    lens, labels = [], []
    for _ in range(2 * n_pairs):
        p = int(torch.randint(2, 5, (1,), generator=g))
        r = int(torch.randint(1, 7, (1,), generator=g))
        lab = [-100] * (p - 1) + torch.randint(0, v, (r,), generator=g).tolist() + [-100]
        lens.append(len(lab))
        labels += lab
    n = len(labels)
    hidden, weight, _, _, _ = make_case(n, d, v, dtype=dtype, seed=seed)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    return hidden, weight, torch.tensor(labels), cu


def _reference(hidden, weight, labels, cu, ref, kw, ignore_index=-100, scales=False):
    """float64 loss and grads from materialized logits and the hand-written pair formula.

    With ``scales`` also the element-wise sums of |terms| of dH and dW (``logit_grad_scales``), the
    scale 16-bit tolerances are relative to."""
    hidden, weight, labels, cu, ref = (t.cpu() for t in (hidden, weight, labels, cu, ref))
    rh, rw = leaf(hidden.double(), weight.double())
    logps, lengths = sequence_logprobs(rh, rw, labels, cu, ignore_index=ignore_index)
    logps.retain_grad()
    kw64 = {k: v for k, v in kw.items()}
    loss, _ = lf.lrdpo_loss(
        logps[0::2], logps[1::2], ref[0::2].double(), ref[1::2].double(), lengths[0::2], lengths[1::2], **kw64
    )
    expected = mean_pair_loss(logps.detach(), ref.double(), lengths, **kw)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-9)
    loss.backward()
    out = (loss.detach(), rh.grad, rw.grad, logps.detach())
    if not scales:
        return out
    seq_ids = torch.repeat_interleave(torch.arange(len(lengths)), cu[1:].long() - cu[:-1].long())
    return out + logit_grad_scales(rh, rw, labels, logps.grad[seq_ids], ignore_index=ignore_index)[:2]


def _run(backend, hidden, weight, labels, cu, ref, **kw):
    """fused_lrdpo_loss forward + backward on the backend's device: (loss, metrics, dH, dW) on the CPU."""
    dev = backend_device(backend)
    h, w = leaf(*to_device(dev, hidden, weight))
    loss, metrics = lf.fused_lrdpo_loss(h, w, *to_device(dev, labels, cu), ref_logps=ref.to(dev), backend=backend, **kw)
    loss.backward()
    assert h.grad.dtype == hidden.dtype and w.grad.dtype == weight.dtype
    return loss.detach().cpu(), {k: v.cpu() for k, v in metrics.items()}, h.grad.cpu(), w.grad.cpu()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", KWS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_fused_matches_reference(backend, kw):
    hidden, weight, labels, cu = _pair_case()
    ref = -torch.rand(cu.numel() - 1) * 20
    loss, metrics, dh, dw = _run(backend, hidden, weight, labels, cu, ref, **kw)
    ref_loss, ref_dh, ref_dw, ref_logps = _reference(hidden, weight, labels, cu, ref, kw)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close(loss, ref_loss, 1e-5, "loss")
    assert_close(dh, ref_dh, 1e-5, "dhidden")
    assert_close(dw, ref_dw, 1e-5, "dweight")
    assert_close(metrics["logps/sequences"], ref_logps, 1e-5, "seq logps")
    assert float(metrics["logps/chosen"]) == pytest.approx(float(ref_logps[0::2].mean()), rel=1e-5)


def _check_16bit(dtype, got, want, n_tokens):
    """fused loss in a 16-bit dtype vs the float64 reference on the same rounded inputs.

    The log-probs and the loss accumulate in float32 from inputs the reference sees exactly, so they
    must match to float32 accuracy (1e-5, as in fp32); gradients element by element within two
    roundings to ``dtype`` of their sum of |terms| (``grad_tolerance``)."""
    loss, metrics, dh, dw = got
    ref_loss, ref_dh, ref_dw, ref_logps, s_h, s_w = want
    assert_close(loss, ref_loss, 1e-5, "loss")
    assert_close(metrics["logps/sequences"], ref_logps, 1e-5, "seq logps")
    assert dh.dtype == dtype and dw.dtype == dtype
    assert_within(dh, ref_dh, grad_tolerance(s_h, dtype, ref_dw.shape[0]), "dhidden")
    assert_within(dw, ref_dw, grad_tolerance(s_w, dtype, n_tokens), "dweight")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fused_bf16(backend, dtype):
    # tolerances from the dtype's resolution: the former 2e-2 * max(1, |loss|) let alpha=0, a
    # negated alpha and label smoothing through
    hidden, weight, labels, cu = _pair_case(dtype=dtype)
    ref = -torch.rand(cu.numel() - 1) * 20
    kw = dict(beta=0.5, alpha=0.02)
    got = _run(backend, hidden, weight, labels, cu, ref, **kw)
    _check_16bit(dtype, got, _reference(hidden, weight, labels, cu, ref, kw, scales=True), labels.numel())


@pytest.mark.parametrize("backend", BACKENDS)
def test_length_term_bf16(backend):
    """In bf16 the length term alpha (|w| - |l|) changes the loss and both gradients by what the
    float64 formula says, and by much more than the bf16 tolerance (so a dropped, negated or
    rescaled alpha cannot hide in it)."""
    hidden, weight, labels, cu = _pair_case(n_pairs=4, dtype=torch.bfloat16, seed=5)
    with torch.no_grad():  # the reference near the policy: margins where sigma' is large
        pol, lengths = sequence_logprobs(hidden.double(), weight.double(), labels, cu)
    ref = (pol + 0.3 * torch.randn(pol.shape, dtype=torch.float64)).float()
    d_len = (lengths[0::2] - lengths[1::2]).abs()
    assert d_len.max() >= 3, "the case must have pairs of different lengths"
    runs, refs = {}, {}
    for alpha in (0.0, 0.2):
        kw = dict(beta=0.5, alpha=alpha)
        runs[alpha] = _run(backend, hidden, weight, labels, cu, ref, **kw)
        refs[alpha] = _reference(hidden, weight, labels, cu, ref, kw, scales=True)
        _check_16bit(torch.bfloat16, runs[alpha], refs[alpha], labels.numel())
    (l0, _, dh0, dw0), (l1, _, dh1, dw1) = runs[0.0], runs[0.2]
    r0, r1 = refs[0.0], refs[0.2]
    # the loss: the float64 change to float32 accuracy
    want = float(r1[0] - r0[0])
    assert abs(want) > 1e-2
    assert float(l1 - l0) == pytest.approx(want, rel=1e-4, abs=1e-6)
    # the gradients: each change within the sum of both runs' bf16 bounds ...
    n, v = labels.numel(), weight.shape[0]
    tol_h = grad_tolerance(r0[4], torch.bfloat16, v) + grad_tolerance(r1[4], torch.bfloat16, v)
    tol_w = grad_tolerance(r0[5], torch.bfloat16, n) + grad_tolerance(r1[5], torch.bfloat16, n)
    assert_within(dh1.double() - dh0.double(), r1[1] - r0[1], tol_h, "change of dhidden")
    assert_within(dw1.double() - dw0.double(), r1[2] - r0[2], tol_w, "change of dweight")
    # ... and that change is far above those bounds: the check has teeth
    assert float((r1[1] - r0[1]).abs().max()) > 10 * float(tol_h.max())
    assert float((r1[2] - r0[2]).abs().max()) > 10 * float(tol_w.max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kw",
    [dict(loss_type="sigmoid", beta=0.2, alpha=0.05), dict(loss_type="sigmoid_norm", beta=1.0, alpha=0.02)],
    ids=["sigmoid", "norm"],
)
def test_fused_ignore_index_inside_vocab(backend, kw):
    """ignore_index = a real token id (a pad id): those positions are neither scored nor counted in
    the lengths, forward and backward, on both backends."""
    hidden, weight, labels, cu = _pair_case(n_pairs=3)
    pad = 7
    labels = labels.clone()
    labels[labels == pad] = pad + 1
    labels[labels == -100] = pad
    scored = labels != pad
    labels[torch.nonzero(scored).flatten()[::4]] = pad  # some response positions too
    assert (labels == pad).any() and (labels != pad).any()
    ref = -torch.rand(cu.numel() - 1) * 20
    loss, metrics, dh, dw = _run(backend, hidden, weight, labels, cu, ref, ignore_index=pad, **kw)
    ref_loss, ref_dh, ref_dw, ref_logps = _reference(hidden, weight, labels, cu, ref, kw, ignore_index=pad)
    assert_close(loss, ref_loss, 1e-5, "loss")
    assert_close(metrics["logps/sequences"], ref_logps, 1e-5, "seq logps")
    assert_close(dh, ref_dh, 1e-5, "dhidden")
    assert_close(dw, ref_dw, 1e-5, "dweight")
    lengths = torch.tensor([int((labels[a:b] != pad).sum()) for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())])
    assert float(metrics["length/chosen"]) == pytest.approx(float(lengths[0::2].double().mean()))
    assert (dh[labels == pad] == 0).all()  # ignored positions get no gradient


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_from_hidden_states(backend):
    hidden, weight, labels, cu = to_device(backend_device(backend), *_pair_case())
    ref_hidden = hidden + 0.1 * torch.randn_like(hidden)
    ref_weight = weight + 0.05 * torch.randn_like(weight)
    with torch.no_grad():
        ref_logps, _ = lf.sequence_logprobs(ref_hidden, ref_weight, labels, cu, backend="torch")
    a, ma = lf.fused_lrdpo_loss(
        hidden, weight, labels, cu, ref_hidden=ref_hidden, ref_weight=ref_weight, backend=backend, alpha=0.01
    )
    b, mb = lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_logps=ref_logps, backend=backend, alpha=0.01)
    assert_close(a, b, 1e-6, "loss")
    # ref_weight defaults to weight (a shared, frozen LM head)
    c, _ = lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_hidden=ref_hidden, backend=backend)
    d, _ = lf.fused_lrdpo_loss(
        hidden, weight, labels, cu, ref_logps=lf.sequence_logprobs(ref_hidden, weight, labels, cu)[0], backend=backend
    )
    assert_close(c, d, 1e-6, "loss with shared head")


@pytest.mark.parametrize("backend", BACKENDS)
def test_upstream_gradient_scaling_and_frozen_head(backend):
    hidden, weight, labels, cu = to_device(backend_device(backend), *_pair_case())
    ref = (-torch.rand(cu.numel() - 1) * 20).to(hidden.device)
    h1, w1 = leaf(hidden, weight)
    (3.0 * lf.fused_lrdpo_loss(h1, w1, labels, cu, ref_logps=ref, backend=backend)[0]).backward()
    h2, w2 = leaf(hidden, weight)
    lf.fused_lrdpo_loss(h2, w2, labels, cu, ref_logps=ref, backend=backend)[0].backward()
    assert_close(h1.grad, 3 * h2.grad, 1e-6, "scaled dhidden")
    assert_close(w1.grad, 3 * w2.grad, 1e-6, "scaled dweight")
    h3 = leaf(hidden)[0]
    lf.fused_lrdpo_loss(h3, weight, labels, cu, ref_logps=ref, backend=backend)[0].backward()  # frozen LM head
    assert_close(h3.grad, h2.grad, 1e-6, "dhidden with frozen head")


def test_torch_pairs_bigger_than_chunk(monkeypatch):
    # the chunk budget smaller than a pair: two-pass path (forward, then recompute) is exact too
    from lrdpo_fast.ops import torch_backend

    hidden, weight, labels, cu = _pair_case(n_pairs=4)
    ref = -torch.rand(cu.numel() - 1) * 20
    h1, w1 = leaf(hidden, weight)
    a = lf.fused_lrdpo_loss(h1, w1, labels, cu, ref_logps=ref, backend="torch", alpha=0.02)[0]
    a.backward()
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 3 * weight.shape[0])
    h2, w2 = leaf(hidden, weight)
    b = lf.fused_lrdpo_loss(h2, w2, labels, cu, ref_logps=ref, backend="torch", alpha=0.02)[0]
    b.backward()
    assert_close(b, a, 1e-6, "loss")
    assert_close(h2.grad, h1.grad, 1e-6, "dhidden")
    assert_close(w2.grad, w1.grad, 1e-6, "dweight")


def test_no_grad_forward_only():
    hidden, weight, labels, cu = _pair_case()
    ref = -torch.rand(cu.numel() - 1) * 20
    with torch.no_grad():
        loss, _ = lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_logps=ref)
    assert not loss.requires_grad


def test_module_wrapper():
    hidden, weight, labels, cu = _pair_case()
    ref = -torch.rand(cu.numel() - 1) * 20
    mod = lf.LRDPOLoss(beta=0.2, alpha=0.01, backend="torch")
    a, _ = mod(hidden, weight, labels, cu, ref_logps=ref)
    b, _ = lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_logps=ref, beta=0.2, alpha=0.01)
    assert a == b
    assert "alpha=0.01" in repr(mod)
