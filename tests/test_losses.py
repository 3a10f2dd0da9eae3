"""lrdpo_loss and the Triton pair-loss kernel against the hand-written formulas."""

import math

import pytest
import torch
from cases import backend_device
from reference import mean_pair_loss

import lrdpo_fast as lf
from lrdpo_fast.ops.losses import LOSS_TYPE_IDS

CASES = [
    dict(loss_type="sigmoid", beta=0.1),
    dict(loss_type="sigmoid", beta=0.1, alpha=0.02),
    dict(loss_type="sigmoid", beta=0.5, alpha=-0.01, label_smoothing=0.1),
    dict(loss_type="hinge", beta=0.3, alpha=0.01),
    dict(loss_type="ipo", beta=0.2),
    dict(loss_type="sigmoid_norm", beta=2.0, alpha=0.005),
    dict(loss_type="simpo", beta=2.5, gamma=1.2),
    dict(loss_type="simpo", beta=2.5, gamma=1.2, alpha=0.01, label_smoothing=0.05),
]


def _pairs(p=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    seq = -torch.rand(2 * p, generator=g, dtype=torch.float64) * 40
    ref = seq + torch.randn(2 * p, generator=g, dtype=torch.float64) * 3
    lengths = torch.randint(1, 30, (2 * p,), generator=g)
    return seq, ref, lengths


def _split(t):
    return t[0::2], t[1::2]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_loss_matches_formula(kw):
    seq, ref, lengths = _pairs()
    loss, metrics = lf.lrdpo_loss(*_split(seq), *_split(ref), *_split(lengths), **kw)
    expected = mean_pair_loss(seq, ref, lengths, **kw)
    assert math.isclose(float(loss), expected, rel_tol=1e-9, abs_tol=1e-12)
    beta = kw["beta"]
    if kw["loss_type"] == "simpo":
        rc = beta * seq[0::2] / lengths[0::2]
        rr = beta * seq[1::2] / lengths[1::2]
    else:
        rc, rr = beta * (seq[0::2] - ref[0::2]), beta * (seq[1::2] - ref[1::2])
    assert torch.isclose(metrics["rewards/chosen"], rc.mean())
    assert torch.isclose(metrics["rewards/margins"], (rc - rr).mean())
    assert float(metrics["rewards/accuracies"]) == pytest.approx(float((rc > rr).double().mean()))
    assert float(metrics["length/chosen"]) == pytest.approx(float(lengths[0::2].double().mean()))
    assert set(metrics) >= {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "length/chosen",
        "length/rejected",
    }


def test_alpha_zero_is_dpo_and_length_term_sign():
    seq, ref, lengths = _pairs()
    dpo, _ = lf.lrdpo_loss(*_split(seq), *_split(ref), *_split(lengths), beta=0.1)
    lr0, _ = lf.lrdpo_loss(*_split(seq), *_split(ref), *_split(lengths), beta=0.1, alpha=0.0)
    assert dpo == lr0
    # ... and both are DPO, written out here independently of the library: mean -log sigma(beta delta)
    s, r, n = seq.tolist(), ref.tolist(), lengths.tolist()
    delta = [(s[i] - r[i]) - (s[i + 1] - r[i + 1]) for i in range(0, len(s), 2)]
    d_len = [n[i] - n[i + 1] for i in range(0, len(n), 2)]

    def by_hand(alpha):
        return sum(math.log1p(math.exp(-(0.1 * d + alpha * dl))) for d, dl in zip(delta, d_len)) / len(delta)

    assert float(dpo) == pytest.approx(by_hand(0.0), rel=1e-12)
    # alpha > 0 shifts every pair's margin by alpha (|w| - |l|), and the loss by what that implies
    lr, _ = lf.lrdpo_loss(*_split(seq), *_split(ref), *_split(lengths), beta=0.1, alpha=0.05)
    assert float(lr) == pytest.approx(by_hand(0.05), rel=1e-12)
    assert abs(by_hand(0.05) - by_hand(0.0)) > 1e-2 and abs(by_hand(0.05) - by_hand(-0.05)) > 1e-2
    # identical log-ratios, chosen longer: with alpha > 0 the pair sits further from the optimum
    # only if the margin includes +alpha(|w|-|l|) -> the loss falls; i.e. a longer chosen is
    # "already credited" and a longer rejected is pushed down harder
    pw = torch.tensor([-10.0], dtype=torch.float64)
    args = (pw, pw.clone(), pw.clone(), pw.clone())
    longer_chosen = lf.lrdpo_loss(*args, torch.tensor([20]), torch.tensor([10]), alpha=0.1)[0]
    longer_rejected = lf.lrdpo_loss(*args, torch.tensor([10]), torch.tensor([20]), alpha=0.1)[0]
    assert float(longer_chosen) == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    assert float(longer_rejected) > float(longer_chosen)


def test_lrdpo_loss_gradcheck():
    seq, ref, lengths = _pairs(p=4)
    for kw in CASES:
        x = seq.clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda s, kw=kw: lf.lrdpo_loss(s[0::2], s[1::2], *_split(ref), *_split(lengths), **kw)[0], (x,)
        )


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_triton_pair_loss_kernel(kw):
    from lrdpo_fast.ops import triton_backend

    seq, ref, lengths = _pairs(p=150)  # more than one program block
    seq32 = seq.float()
    params = dict(
        beta=kw["beta"],
        alpha=kw.get("alpha", 0.0),
        gamma=kw.get("gamma", 0.0),
        label_smoothing=kw.get("label_smoothing", 0.0),
    )
    dev = backend_device("triton")
    losses, dseq = triton_backend.pair_loss(
        seq32.to(dev), ref.float().to(dev), lengths.to(dev), loss_type_id=LOSS_TYPE_IDS[kw["loss_type"]], **params
    )
    losses, dseq = losses.cpu(), dseq.cpu()
    x = seq32.double().requires_grad_()
    loss, _ = lf.lrdpo_loss(x[0::2], x[1::2], *_split(ref.float().double()), *_split(lengths), **kw)
    loss.backward()
    assert float(losses.double().mean()) == pytest.approx(float(loss.detach()), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(dseq.double(), x.grad, rtol=1e-4, atol=1e-7)
