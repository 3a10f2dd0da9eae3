"""fused_lrdpo_loss / LRDPOLoss: the whole objective from hidden states, both backends."""
import pytest
import torch

import lrdpo_fast as lf
from cases import leaf, make_case
from reference import assert_close, mean_pair_loss, sequence_logprobs

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


def _reference(hidden, weight, labels, cu, ref, kw):
    """float64 loss and grads from materialized logits and the hand-written pair formula."""
    rh, rw = leaf(hidden.double(), weight.double())
    logps, lengths = sequence_logprobs(rh, rw, labels, cu)
    kw64 = {k: v for k, v in kw.items()}
    loss, _ = lf.lrdpo_loss(logps[0::2], logps[1::2], ref[0::2].double(), ref[1::2].double(), lengths[0::2],
                            lengths[1::2], **kw64)
    expected = mean_pair_loss(logps.detach(), ref.double(), lengths, **kw)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-9)
    loss.backward()
    return loss.detach(), rh.grad, rw.grad, logps.detach()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", KWS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_fused_matches_reference(backend, kw):
    hidden, weight, labels, cu = _pair_case()
    ref = -torch.rand(cu.numel() - 1) * 20
    h, w = leaf(hidden, weight)
    loss, metrics = lf.fused_lrdpo_loss(h, w, labels, cu, ref_logps=ref, backend=backend, **kw)
    loss.backward()
    ref_loss, ref_dh, ref_dw, ref_logps = _reference(hidden, weight, labels, cu, ref, kw)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close(loss, ref_loss, 1e-5, "loss")
    assert_close(h.grad, ref_dh, 1e-5, "dhidden")
    assert_close(w.grad, ref_dw, 1e-5, "dweight")
    assert_close(metrics["logps/sequences"], ref_logps, 1e-5, "seq logps")
    assert float(metrics["logps/chosen"]) == pytest.approx(float(ref_logps[0::2].mean()), rel=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_bf16(backend):
    hidden, weight, labels, cu = _pair_case(dtype=torch.bfloat16)
    ref = -torch.rand(cu.numel() - 1) * 20
    kw = dict(beta=0.5, alpha=0.02)
    h, w = leaf(hidden, weight)
    loss, _ = lf.fused_lrdpo_loss(h, w, labels, cu, ref_logps=ref, backend=backend, **kw)
    loss.backward()
    ref_loss, ref_dh, ref_dw, _ = _reference(hidden, weight, labels, cu, ref, kw)
    assert_close(loss, ref_loss, 2e-2, "loss")
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    assert_close(h.grad, ref_dh, 2e-2, "dhidden")
    assert_close(w.grad, ref_dw, 2e-2, "dweight")


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_from_hidden_states(backend):
    hidden, weight, labels, cu = _pair_case()
    ref_hidden = hidden + 0.1 * torch.randn_like(hidden)
    ref_weight = weight + 0.05 * torch.randn_like(weight)
    with torch.no_grad():
        ref_logps, _ = lf.sequence_logprobs(ref_hidden, ref_weight, labels, cu, backend="torch")
    a, ma = lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_hidden=ref_hidden, ref_weight=ref_weight,
                                backend=backend, alpha=0.01)
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
    hidden, weight, labels, cu = _pair_case()
    ref = -torch.rand(cu.numel() - 1) * 20
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
