"""linear_logprobs / sequence_logprobs, both backends, against the float64 reference."""

import pytest
import torch
from cases import backend_device, leaf, make_case, to_device
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import (
    assert_close,
    assert_within,
    capped_grad_scales,
    capped_token_logprobs,
    grad_tolerance,
    logit_grad_scales,
    sequence_logprobs,
    token_logprobs,
)

import lrdpo_fast as lf

BACKENDS = ["torch", "triton"]


def _check_tokens(
    backend, hidden, weight, labels, bias=None, temperature=1.0, tol=1e-5, ignore_index=-100, softcap=None, device=None
):
    """linear_logprobs and its gradients against the float64 reference on the same (rounded) inputs
    (the soft-capped reference when ``softcap``; ``device`` overrides the backend's).

    The forward accumulates in float32 whatever the input dtype, and the reference sees exactly the
    inputs the kernel sees, so log-probs must agree to float32 accuracy (``tol``) in every dtype.
    Gradients: float32 to ``tol``; 16-bit ones element by element within ``grad_tolerance`` (two
    roundings to the dtype relative to each element's sum of |terms|, plus float32 accumulation).
    """
    dev = backend_device(backend) if device is None else device
    hidden, weight, labels, bias = to_device(dev, hidden, weight, labels, bias)
    h, w, b = leaf(hidden, weight, bias)
    kw = dict(bias=b, temperature=temperature, ignore_index=ignore_index, backend=backend)
    out = lf.linear_logprobs(h, w, labels, **kw, **({} if softcap is None else {"softcap": softcap}))
    assert out.dtype == torch.float32 and out.shape == labels.shape and out.device == hidden.device
    upstream = torch.randn(labels.shape[0], dtype=torch.float64)
    (out.double() * upstream.to(dev)).sum().backward()
    rh, rw, rb = leaf(*(None if t is None else t.double().cpu() for t in (hidden, weight, bias)))
    labels = labels.cpu()
    if softcap is None:
        ref = token_logprobs(rh, rw, labels, rb, ignore_index=ignore_index, temperature=temperature)
    else:
        ref = capped_token_logprobs(rh, rw, labels, rb, ignore_index, temperature, softcap)
    (ref * upstream).sum().backward()
    assert_close(out, ref, tol, "logp")
    assert (out.cpu()[labels == ignore_index] == 0).all()
    assert h.grad.dtype == hidden.dtype and w.grad.dtype == weight.dtype
    if hidden.dtype == torch.float32:
        assert_close(h.grad, rh.grad, tol, "dhidden")
        assert_close(w.grad, rw.grad, tol, "dweight")
        if bias is not None:
            assert_close(b.grad, rb.grad, tol, "dbias")
        return
    if softcap is None:
        s_h, s_w, s_b = logit_grad_scales(rh, rw, labels, upstream, rb, ignore_index, temperature)
    else:
        s_h, s_w, s_b = capped_grad_scales(rh, rw, labels, upstream, rb, ignore_index, temperature, softcap)
    n, v = labels.shape[0], weight.shape[0]
    assert_within(h.grad, rh.grad, grad_tolerance(s_h, hidden.dtype, v), "dhidden")
    assert_within(w.grad, rw.grad, grad_tolerance(s_w, weight.dtype, n), "dweight")
    if bias is not None:
        assert_within(b.grad, rb.grad, grad_tolerance(s_b, bias.dtype, n), "dbias")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,d,v", [(1, 16, 7), (37, 24, 101), (50, 33, 129), (16, 16, 32)])
def test_token_logprobs_odd_shapes(backend, n, d, v):
    hidden, weight, labels, _, _ = make_case(n, d, v, ignore_frac=0.0 if n == 1 else 0.3)
    _check_tokens(backend, hidden, weight, labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bias_and_temperature(backend):
    hidden, weight, labels, _, bias = make_case(29, 20, 70, bias=True)
    _check_tokens(backend, hidden, weight, labels, bias=bias, temperature=0.7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(backend, dtype):
    # 16-bit inputs, float32 accumulation: log-probs as exact as in float32 (1e-5, not 2e-2, which
    # let 0.38 nats through), gradients within their dtype's resolution element by element
    hidden, weight, labels, _, bias = make_case(40, 32, 90, dtype=dtype, scale=3.0, bias=True)
    _check_tokens(backend, hidden, weight, labels)
    _check_tokens(backend, hidden, weight, labels, bias=bias, temperature=0.7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits(backend):
    # logits of order 1e4: the online log-sum-exp must not overflow or lose the label term
    hidden, weight, labels, _, _ = make_case(24, 16, 77, scale=2.5e3)
    z = hidden.double() @ weight.double().T
    assert z.abs().max() > 5e3
    _check_tokens(backend, hidden, weight, labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored(backend):
    hidden, weight, labels, _, _ = make_case(10, 16, 40, device=backend_device(backend))
    labels[:] = -100
    h, w = leaf(hidden, weight)
    out = lf.linear_logprobs(h, w, labels, backend=backend)
    assert (out == 0).all()
    out.sum().backward()
    assert (h.grad == 0).all() and (w.grad == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_ignore_index_inside_vocab(backend):
    # ignore_index may be a real token id (e.g. a pad id); those rows are skipped, others scored,
    # forward AND backward: the skipped rows' label column gets no onehot, their rows no gradient
    hidden, weight, labels, _, _ = make_case(20, 16, 30, ignore_frac=0.0)
    labels[::3] = 5
    assert (labels == 5).sum() > 1 and (labels != 5).sum() > 1
    out = lf.linear_logprobs(
        *to_device(backend_device(backend), hidden, weight, labels), ignore_index=5, backend=backend
    )
    ref = token_logprobs(hidden, weight, labels, ignore_index=5)
    assert_close(out, ref, 1e-5, "logp")
    _check_tokens(backend, hidden, weight, labels, ignore_index=5)
    # -100 is then an ordinary (out-of-range) label: still rejected
    labels[1] = -100
    with pytest.raises(ValueError, match="labels"):
        lf.linear_logprobs(hidden, weight, labels, ignore_index=5, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_logprobs_edge_sequences(backend):
    # one-token sequences, an empty sequence, a fully ignored sequence (logp 0, length 0)
    hidden, weight, labels, _, _ = make_case(12, 16, 45, ignore_frac=0.0)
    labels[4:8] = -100
    cu = torch.tensor([0, 1, 2, 2, 4, 8, 12], dtype=torch.int32)
    h, w = leaf(*to_device(backend_device(backend), hidden, weight))
    logps, lengths = lf.sequence_logprobs(h, w, *to_device(h.device, labels, cu), backend=backend)
    logps, lengths = logps.cpu(), lengths.cpu()
    ref, ref_len = sequence_logprobs(hidden, weight, labels, cu)
    assert logps.dtype == torch.float32 and lengths.dtype == torch.int64
    assert lengths.tolist() == ref_len.tolist() == [1, 1, 0, 2, 0, 4]
    assert logps[2] == 0 and logps[4] == 0
    assert_close(logps, ref, 1e-5, "seq logps")
    upstream = torch.randn(6, dtype=torch.float64)
    (logps.double() * upstream).sum().backward()
    rh, rw = leaf(hidden.double(), weight.double())
    (sequence_logprobs(rh, rw, labels, cu)[0] * upstream).sum().backward()
    assert h.grad.device == h.device
    assert_close(h.grad, rh.grad, 1e-5, "dhidden")
    assert_close(w.grad, rw.grad, 1e-5, "dweight")


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 48),
    d=st.integers(1, 40),
    v=st.integers(2, 140),
    n_seqs=st.integers(1, 6),
    ignore_frac=st.sampled_from([0.0, 0.3, 0.9]),
    seed=st.integers(0, 2**16),
)
def test_sequence_logprobs_hypothesis(backend, n, d, v, n_seqs, ignore_frac, seed):
    hidden, weight, labels, cu, _ = make_case(n, d, v, n_seqs=n_seqs, ignore_frac=ignore_frac, seed=seed)
    h, w = leaf(*to_device(backend_device(backend), hidden, weight))
    logps, lengths = lf.sequence_logprobs(h, w, *to_device(h.device, labels, cu), backend=backend)
    rh, rw = leaf(hidden.double(), weight.double())
    ref, ref_len = sequence_logprobs(rh, rw, labels, cu)
    assert lengths.tolist() == ref_len.tolist()
    assert_close(logps, ref, 1e-5, "seq logps")
    upstream = torch.randn(len(lengths), dtype=torch.float64)
    (logps.double() * upstream.to(h.device)).sum().backward()
    (ref * upstream).sum().backward()
    assert_close(h.grad, rh.grad, 1e-5, "dhidden")
    assert_close(w.grad, rw.grad, 1e-5, "dweight")


def test_torch_backend_chunking_is_exact(monkeypatch):
    # many tiny chunks give the same answer as one chunk
    from lrdpo_fast.ops import torch_backend

    hidden, weight, labels, cu, _ = make_case(60, 16, 50)
    full = lf.sequence_logprobs(hidden, weight, labels, cu, backend="torch")[0]
    monkeypatch.setattr(torch_backend, "CHUNK_ELEMENTS", 50 * 8)
    chunked = lf.sequence_logprobs(hidden, weight, labels, cu, backend="torch")[0]
    assert_close(chunked, full.double(), 1e-6, "chunked")


def test_gradcheck_float64_torch_backend():
    hidden, weight, labels, cu, bias = make_case(9, 5, 11, n_seqs=3, bias=True)
    args = [t.double().requires_grad_() for t in (hidden, weight, bias)]

    def fn(h, w, b):
        return lf.sequence_logprobs(h, w, labels, cu, bias=b, temperature=1.3, backend="torch")[0]

    assert torch.autograd.gradcheck(fn, args)


def test_auto_backend_is_torch_on_cpu():
    from lrdpo_fast.ops.logprobs import resolve_backend

    assert resolve_backend("auto", torch.device("cpu")) == "torch"


def test_triton_gradient_tile_skipping(monkeypatch):
    from lrdpo_fast.ops import triton_backend

    hidden, weight, labels, _, _ = make_case(20, 16, 70, device=backend_device("triton"))

    def grads():
        h, w = leaf(hidden, weight)
        lf.linear_logprobs(h, w, labels, backend="triton").sum().backward()
        return h.grad, w.grad

    exact = grads()
    monkeypatch.setattr(triton_backend, "GRAD_SKIP_THRESHOLD", 1e-30)  # nothing is that small here
    assert all(torch.equal(a, b) for a, b in zip(grads(), exact))
    monkeypatch.setattr(triton_backend, "GRAD_SKIP_THRESHOLD", 1e9)  # every tile skipped
    assert all((g == 0).all() for g in grads())
