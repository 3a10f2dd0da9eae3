"""Final-logit soft-capping (Gemma-2's ``final_logit_softcapping``): z -> cap * tanh(z / cap) after
the temperature and before the softmax, in ``linear_logprobs`` / ``sequence_logprobs`` /
``fused_lrdpo_loss``, on both backends (Triton through the interpreter on CPU), against float64
references that materialize the capped logits (allowed in tests only)."""

import math

import pytest
import torch
from cases import CUDA, backend_device, leaf, make_case, to_device
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    assert_close,
    assert_within,
    capped_grad_scales,
    capped_logits,
    capped_sequence_logprobs,
    capped_token_logprobs,
    grad_tolerance,
    pair_losses64,
)
from test_fused import _pair_case
from test_logprobs import _check_tokens

import lrdpo_fast as lf
from lrdpo_fast.ops import torch_backend

BACKENDS = ["torch", "triton"]
# where the torch backend's CUDA form (GEMMs + the Triton row pass) runs: compiled on a GPU, else on
# CPU tensors through the interpreter (``torch_backend.FUSED_PASS = "1"``), as in test_row_pass.py
CUDA_FORM_DEV = torch.device("cuda" if CUDA else "cpu")


def test_reference_is_the_gemma2_formula():
    # the reference itself: the cap is applied after the temperature, and a huge cap is no cap
    h, w, labels, _, _ = make_case(5, 8, 11, scale=20.0, ignore_frac=0.0)
    z = (h.double() @ w.double().T) / 0.5
    want = (30.0 * torch.tanh(z / 30.0)).log_softmax(-1).gather(1, labels[:, None]).squeeze(1)
    assert_close(capped_token_logprobs(h, w, labels, temperature=0.5, softcap=30.0), want, 1e-12, "formula")
    assert float(capped_logits(h, w, temperature=0.5, softcap=30.0).abs().max()) < 30.0
    assert_close(
        capped_token_logprobs(h, w, labels, softcap=1e9), capped_token_logprobs(h, w, labels), 1e-9, "huge cap"
    )


# ---- linear_logprobs / sequence_logprobs ------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "n,d,v,softcap,temperature",
    [(1, 16, 7, 2.0, 1.0), (37, 24, 101, 3.0, 0.7), (23, 33, 61, 5.5, 1.3)],
    ids=["one-token", "37x24x101", "23x33x61"],
)
def test_token_logprobs_softcap(backend, n, d, v, softcap, temperature):
    # logits of std ~4 / T against caps of 2-5.5: most of them deep in tanh's bend (dz'/dz from ~1
    # down to ~1e-3), with a bias and ~30% ignored labels
    hidden, weight, labels, _, bias = make_case(n, d, v, scale=4.0, bias=True, ignore_frac=0.0 if n == 1 else 0.3)
    _check_tokens(backend, hidden, weight, labels, softcap=softcap, bias=bias, temperature=temperature)


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_logprobs_softcap_bf16(backend):
    hidden, weight, labels, _, bias = make_case(29, 20, 70, dtype=torch.bfloat16, scale=4.0, bias=True)
    _check_tokens(backend, hidden, weight, labels, softcap=3.0, bias=bias, temperature=0.8)


def test_torch_backend_cuda_form_softcap(monkeypatch):
    """The torch backend's CUDA form (GEMMs + the Triton row pass, here on CPU tensors through the
    interpreter) with the cap: float32 and bf16, tiny chunks (several chunks per call)."""
    monkeypatch.setattr(torch_backend, "FUSED_PASS", "1")
    calls = []
    real = torch_backend.row_pass
    monkeypatch.setattr(torch_backend, "row_pass", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(torch_backend, "CUDA_CHUNK_ELEMENTS", 10 * 61)
    hidden, weight, labels, _, bias = make_case(31, 20, 61, scale=4.0, bias=True)
    _check_tokens("torch", hidden, weight, labels, softcap=2.5, bias=bias, temperature=0.8, device=CUDA_FORM_DEV)
    hb, wb, lb, _, bb = make_case(25, 16, 50, dtype=torch.bfloat16, scale=4.0, bias=True, seed=1)
    _check_tokens("torch", hb, wb, lb, softcap=3.0, bias=bb, device=CUDA_FORM_DEV)
    assert calls, "the CUDA form (row pass) never ran"


def test_torch_backend_small_chunks_softcap(monkeypatch):
    # the elementwise form keeps dz'/dz in a second buffer: many tiny chunks give the same answer
    hidden, weight, labels, cu, _ = make_case(60, 16, 50, scale=4.0)
    full = lf.sequence_logprobs(hidden, weight, labels, cu, softcap=2.0, backend="torch")[0]
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 50 * 8)
    _check_tokens("torch", hidden, weight, labels, softcap=2.0, temperature=0.9)
    chunked = lf.sequence_logprobs(hidden, weight, labels, cu, softcap=2.0, backend="torch")[0]
    assert_close(chunked, full.double(), 1e-6, "chunked")


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 48),
    d=st.integers(1, 40),
    v=st.integers(2, 140),
    n_seqs=st.integers(1, 6),
    ignore_frac=st.sampled_from([0.0, 0.3, 0.9]),
    scale=st.sampled_from([1.0, 8.0, 30.0]),
    softcap=st.floats(0.5, 50.0),
    temperature=st.sampled_from([0.6, 1.0, 1.7]),
    seed=st.integers(0, 2**16),
)
def test_sequence_logprobs_softcap_hypothesis(n, d, v, n_seqs, ignore_frac, scale, softcap, temperature, seed):
    hidden, weight, labels, cu, _ = make_case(n, d, v, n_seqs=n_seqs, ignore_frac=ignore_frac, seed=seed, scale=scale)
    h, w = leaf(hidden, weight)
    logps, lengths = lf.sequence_logprobs(h, w, labels, cu, temperature=temperature, softcap=softcap, backend="torch")
    rh, rw = leaf(hidden.double(), weight.double())
    ref, ref_len = capped_sequence_logprobs(rh, rw, labels, cu, temperature=temperature, softcap=softcap)
    assert lengths.tolist() == ref_len.tolist()
    assert_close(logps, ref, 1e-5, "seq logps")
    upstream = torch.randn(len(lengths), dtype=torch.float64)
    (logps.double() * upstream).sum().backward()
    (ref * upstream).sum().backward()
    assert_close(h.grad, rh.grad, 1e-5, "dhidden")
    # dweight sums hidden-sized terms (|h| ~ scale) that cancel to a small gradient: its float32
    # rounding grows with the hidden scale (CI met 1.6e-5 at scale 30, d=27, v=2)
    assert_close(w.grad, rw.grad, 1e-5 * scale, "dweight")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_logprobs_softcap(backend):
    hidden, weight, labels, cu, _ = make_case(26, 18, 45, n_seqs=4, scale=5.0, seed=3)
    h, w = leaf(*to_device(backend_device(backend), hidden, weight))
    logps, lengths = lf.sequence_logprobs(h, w, *to_device(h.device, labels, cu), softcap=4.0, backend=backend)
    rh, rw = leaf(hidden.double(), weight.double())
    ref, ref_len = capped_sequence_logprobs(rh, rw, labels, cu, softcap=4.0)
    assert lengths.cpu().tolist() == ref_len.tolist()
    assert_close(logps, ref, 1e-5, "seq logps")
    upstream = torch.randn(len(ref_len), dtype=torch.float64)
    (logps.double() * upstream.to(h.device)).sum().backward()
    (ref * upstream).sum().backward()
    assert_close(h.grad, rh.grad, 1e-5, "dhidden")
    assert_close(w.grad, rw.grad, 1e-5, "dweight")


def test_gradcheck_float64_torch_backend_softcap():
    hidden, weight, labels, cu, bias = make_case(9, 5, 11, n_seqs=3, bias=True, scale=3.0)
    args = [t.double().requires_grad_() for t in (hidden, weight, bias)]

    def fn(h, w, b):
        return lf.sequence_logprobs(h, w, labels, cu, bias=b, temperature=1.3, softcap=1.5, backend="torch")[0]

    assert torch.autograd.gradcheck(fn, args)


# ---- the cap matters, and a huge cap is no cap -------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_softcap_changes_large_logits_and_huge_cap_is_identity(backend):
    hidden, weight, labels, _, _ = make_case(24, 16, 40, scale=50.0, device=backend_device(backend))
    assert float((hidden.double() @ weight.double().T).abs().max()) > 60.0  # well past the cap

    def run(softcap):
        h, w = leaf(hidden, weight)
        out = lf.linear_logprobs(h, w, labels, softcap=softcap, backend=backend)
        out.sum().backward()
        return out.detach().cpu(), h.grad.cpu(), w.grad.cpu()

    plain, capped, huge = run(None), run(30.0), run(1e6)
    ref = capped_token_logprobs(hidden.cpu(), weight.cpu(), labels.cpu(), softcap=30.0)
    assert_close(capped[0], ref, 1e-5, "capped logp")
    scale = max(1.0, float(plain[0].abs().max()))
    assert float((capped[0] - plain[0]).abs().max()) > 1e3 * 1e-5 * scale  # far beyond the tolerance
    assert float((capped[1] - plain[1]).abs().max()) > 1e3 * 1e-5 * max(1.0, float(plain[1].abs().max()))
    for name, a, b in zip(("logp", "dhidden", "dweight"), huge, plain):
        assert_close(a, b.double(), 1e-5, f"cap 1e6 vs none: {name}")


# ---- fused_lrdpo_loss -----------------------------------------------------------------------------------
def _fused_reference(hidden, weight, labels, cu, ref, kw, temperature, softcap):
    """float64 (loss, dH, dW, seq logps) of the LR-DPO objective from capped materialized logits and
    the hand-written pair formula (``pair_losses64``)."""
    rh, rw = leaf(hidden.double().cpu(), weight.double().cpu())
    logps, lengths = capped_sequence_logprobs(rh, rw, labels.cpu(), cu.cpu(), temperature=temperature, softcap=softcap)
    ref = ref.double().cpu()
    loss = pair_losses64(logps[0::2], logps[1::2], ref[0::2], ref[1::2], lengths[0::2], lengths[1::2], **kw).mean()
    loss.backward()
    return loss.detach(), rh.grad, rw.grad, logps.detach()


FUSED_KWS = [
    dict(loss_type="sigmoid", beta=0.2, alpha=0.03),
    dict(loss_type="sigmoid_norm", beta=1.0, alpha=0.02),
    dict(loss_type="simpo", beta=2.0, gamma=0.5, alpha=0.01),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", FUSED_KWS, ids=lambda kw: kw["loss_type"])
def test_fused_softcap_precomputed_ref(backend, kw):
    hidden, weight, labels, cu = _pair_case(n_pairs=3, d=20, v=61)
    hidden = hidden * 4.0  # logits of std ~4 / T against a cap of 3
    ref = -torch.rand(cu.numel() - 1) * 20
    dev = backend_device(backend)
    h, w = leaf(*to_device(dev, hidden, weight))
    loss, metrics = lf.fused_lrdpo_loss(
        h, w, *to_device(dev, labels, cu), ref_logps=ref.to(dev), backend=backend, temperature=0.8, softcap=3.0, **kw
    )
    loss.backward()
    want_loss, want_dh, want_dw, want_logps = _fused_reference(hidden, weight, labels, cu, ref, kw, 0.8, 3.0)
    assert_close(loss, want_loss, 1e-5, "loss")
    assert_close(metrics["logps/sequences"], want_logps, 1e-5, "seq logps")
    assert_close(h.grad, want_dh, 1e-5, "dhidden")
    assert_close(w.grad, want_dw, 1e-5, "dweight")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_softcap_ref_hidden(backend):
    """ref_hidden goes through the same head transform (temperature, cap) as the policy."""
    hidden, weight, labels, cu = _pair_case(n_pairs=3, d=20, v=61, seed=2)
    hidden = hidden * 4.0
    g = torch.Generator().manual_seed(7)
    ref_hidden = hidden + 0.5 * torch.randn(hidden.shape, generator=g)
    ref_weight = weight + 0.05 * torch.randn(weight.shape, generator=g)
    kw = dict(loss_type="sigmoid", beta=0.1, alpha=0.02)
    temperature, softcap = 0.7, 2.5
    ref = capped_sequence_logprobs(ref_hidden, ref_weight, labels, cu, temperature=temperature, softcap=softcap)[0]
    uncapped = capped_sequence_logprobs(ref_hidden, ref_weight, labels, cu, temperature=temperature)[0]
    assert float((ref - uncapped).abs().max()) > 1.0  # the reference's cap matters here
    dev = backend_device(backend)
    h, w = leaf(*to_device(dev, hidden, weight))
    rh, rw, lab, cu_d = to_device(dev, ref_hidden, ref_weight, labels, cu)
    loss, metrics = lf.fused_lrdpo_loss(
        h, w, lab, cu_d, ref_hidden=rh, ref_weight=rw, backend=backend, temperature=temperature, softcap=softcap, **kw
    )
    loss.backward()
    want_loss, want_dh, want_dw, want_logps = _fused_reference(
        hidden, weight, labels, cu, ref, kw, temperature, softcap
    )
    assert_close(loss, want_loss, 1e-5, "loss")
    assert_close(metrics["logps/sequences"], want_logps, 1e-5, "seq logps")
    assert_close(h.grad, want_dh, 1e-5, "dhidden")
    assert_close(w.grad, want_dw, 1e-5, "dweight")
    # the module wrapper carries the same two arguments
    mod = lf.LRDPOLoss(beta=0.1, alpha=0.02, backend=backend, temperature=temperature, softcap=softcap)
    assert "softcap=2.5" in repr(mod) and "temperature=0.7" in repr(mod)
    m_loss, _ = mod(*to_device(dev, hidden, weight), lab, cu_d, ref_hidden=rh, ref_weight=rw)
    assert_close(m_loss, want_loss, 1e-5, "module loss")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_softcap_bf16(backend):
    """bf16 inputs: loss and log-probs to float32 accuracy (exact inputs, float32 accumulation);
    gradients element by element within ``grad_tolerance`` (bf16 unit roundoff) of the capped
    gradient's sum of |terms|."""
    hidden, weight, labels, cu = _pair_case(n_pairs=3, d=20, v=61, seed=4)
    hidden = (hidden * 4.0).bfloat16()
    weight = weight.bfloat16()
    ref = -torch.rand(cu.numel() - 1) * 20
    kw = dict(loss_type="sigmoid", beta=0.5, alpha=0.02)
    dev = backend_device(backend)
    h, w = leaf(*to_device(dev, hidden, weight))
    loss, metrics = lf.fused_lrdpo_loss(
        h, w, *to_device(dev, labels, cu), ref_logps=ref.to(dev), backend=backend, softcap=3.0, **kw
    )
    loss.backward()
    want_loss, want_dh, want_dw, want_logps = _fused_reference(hidden, weight, labels, cu, ref, kw, 1.0, 3.0)
    assert_close(loss, want_loss, 1e-5, "loss")
    assert_close(metrics["logps/sequences"], want_logps, 1e-5, "seq logps")
    assert h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.bfloat16
    # the upstream gradient of each token is d loss / d logp of its sequence
    lp = want_logps.clone().requires_grad_(True)
    lengths = capped_sequence_logprobs(hidden, weight, labels, cu)[1]
    r = ref.double()
    pair_losses64(lp[0::2], lp[1::2], r[0::2], r[1::2], lengths[0::2], lengths[1::2], **kw).mean().backward()
    seq_ids = torch.repeat_interleave(torch.arange(len(lengths)), cu[1:].long() - cu[:-1].long())
    s_h, s_w, _ = capped_grad_scales(hidden, weight, labels, lp.grad[seq_ids], softcap=3.0)
    assert_within(h.grad, want_dh, grad_tolerance(s_h, torch.bfloat16, weight.shape[0]), "dhidden")
    assert_within(w.grad, want_dw, grad_tolerance(s_w, torch.bfloat16, labels.numel()), "dweight")


def test_fused_softcap_cuda_form_and_pairs_bigger_than_chunk(monkeypatch):
    """The torch backend's fused pair sweep with the cap in its three shapes: elementwise chunks
    holding whole pairs, a pair bigger than the chunk (forward, then recompute), and the CUDA form
    (the row pass: compiled on a GPU, through the interpreter on CPU); all equal float64."""
    hidden, weight, labels, cu = _pair_case(n_pairs=4, d=16, v=40, seed=3)
    hidden = hidden * 4.0
    ref = -torch.rand(cu.numel() - 1) * 20
    kw = dict(loss_type="sigmoid", beta=0.3, alpha=0.05)
    want_loss, want_dh, want_dw, _ = _fused_reference(hidden, weight, labels, cu, ref, kw, 1.2, 2.0)

    def check(what):
        dev = CUDA_FORM_DEV if torch_backend.FUSED_PASS == "1" else torch.device("cpu")
        h, w = leaf(*to_device(dev, hidden, weight))
        lab, cu_d, ref_d = to_device(dev, labels, cu, ref)
        loss, _ = lf.fused_lrdpo_loss(
            h, w, lab, cu_d, ref_logps=ref_d, backend="torch", temperature=1.2, softcap=2.0, **kw
        )
        loss.backward()
        assert_close(loss, want_loss, 1e-5, f"{what}: loss")
        assert_close(h.grad, want_dh, 1e-5, f"{what}: dhidden")
        assert_close(w.grad, want_dw, 1e-5, f"{what}: dweight")

    # chunks shrink to their floor of 8 rows; some pair has more scored rows than that
    per_pair = (labels != -100).long().split((cu[1:] - cu[:-1]).tolist())
    per_pair = [int(a.sum() + b.sum()) for a, b in zip(per_pair[0::2], per_pair[1::2])]
    assert max(per_pair) > 8 >= min(per_pair), per_pair
    check("whole pairs")
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 3 * weight.shape[0])
    check("pair bigger than chunk")
    monkeypatch.setattr(torch_backend, "FUSED_PASS", "1")
    monkeypatch.setattr(torch_backend, "CUDA_CHUNK_ELEMENTS", 3 * weight.shape[0])
    check("cuda form, pair bigger than chunk")
    monkeypatch.setattr(torch_backend, "CUDA_CHUNK_ELEMENTS", 10**6)
    check("cuda form, whole pairs")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_huge_softcap_is_no_softcap(backend):
    hidden, weight, labels, cu = to_device(backend_device(backend), *_pair_case(n_pairs=2, d=16, v=40))
    ref = (-torch.rand(cu.numel() - 1) * 20).to(hidden.device)
    outs = []
    for softcap in (None, 1e6):
        h, w = leaf(hidden, weight)
        loss, _ = lf.fused_lrdpo_loss(h, w, labels, cu, ref_logps=ref, backend=backend, alpha=0.02, softcap=softcap)
        loss.backward()
        outs.append((loss.detach(), h.grad, w.grad))
    for name, a, b in zip(("loss", "dhidden", "dweight"), *outs):
        assert_close(a, b, 1e-5, name)


# ---- dispatch and validation ----------------------------------------------------------------------------
def test_dispatch_measures_capped_calls_apart(monkeypatch):
    from lrdpo_fast.ops import fused, logprobs

    seen = []
    for mod in (logprobs, fused):
        real = mod.choose_backend
        monkeypatch.setattr(mod, "choose_backend", lambda op, *a, real=real: seen.append(op) or real(op, *a))
    hidden, weight, labels, cu = _pair_case(n_pairs=1, d=8, v=20)
    lf.linear_logprobs(hidden, weight, labels)
    lf.linear_logprobs(hidden, weight, labels, softcap=30.0)
    lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_logps=torch.zeros(2))
    lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_logps=torch.zeros(2), softcap=30.0)
    assert seen == ["logprobs", "logprobs+softcap", "fused", "fused+softcap"]


BAD = [0, 0.0, -1, -1.0, math.nan, math.inf, -math.inf, True, False, "30", torch.tensor(30.0)]


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_bad_softcap_rejected(bad):
    hidden, weight, labels, cu = _pair_case(n_pairs=1, d=8, v=20)
    calls = [
        lambda: lf.linear_logprobs(hidden, weight, labels, softcap=bad),
        lambda: lf.sequence_logprobs(hidden, weight, labels, cu, softcap=bad),
        lambda: lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_logps=torch.zeros(2), softcap=bad),
        lambda: lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_hidden=hidden, softcap=bad),
        lambda: lf.LRDPOLoss(softcap=bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="softcap"):
            call()


def test_integer_and_numpy_softcap_accepted():
    np = pytest.importorskip("numpy")
    hidden, weight, labels, _, _ = make_case(10, 8, 20, scale=10.0)
    want = lf.linear_logprobs(hidden, weight, labels, softcap=30.0)
    assert torch.equal(lf.linear_logprobs(hidden, weight, labels, softcap=30), want)
    assert torch.equal(lf.linear_logprobs(hidden, weight, labels, softcap=np.float32(30.0)), want)
