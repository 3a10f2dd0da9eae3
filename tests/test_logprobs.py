"""linear_logprobs / sequence_logprobs, both backends, against the float64 reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lrdpo_fast as lf
from cases import leaf, make_case
from reference import assert_close, sequence_logprobs, token_logprobs

BACKENDS = ["torch", "triton"]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def _check_tokens(backend, hidden, weight, labels, bias=None, temperature=1.0, tol=1e-5):
    h, w, b = leaf(hidden, weight, bias)
    out = lf.linear_logprobs(h, w, labels, bias=b, temperature=temperature, backend=backend)
    assert out.dtype == torch.float32 and out.shape == labels.shape
    upstream = torch.randn(labels.shape[0], dtype=torch.float64)
    (out.double() * upstream).sum().backward()
    rh, rw, rb = leaf(hidden.double(), weight.double(), None if bias is None else bias.double())
    ref = token_logprobs(rh, rw, labels, rb, temperature=temperature)
    (ref * upstream).sum().backward()
    assert_close(out, ref, tol, "logp")
    assert (out[labels == -100] == 0).all()
    assert_close(h.grad, rh.grad, tol, "dhidden")
    assert_close(w.grad, rw.grad, tol, "dweight")
    assert h.grad.dtype == hidden.dtype and w.grad.dtype == weight.dtype
    if bias is not None:
        assert_close(b.grad, rb.grad, tol, "dbias")


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
    hidden, weight, labels, _, _ = make_case(40, 32, 90, dtype=dtype, scale=3.0)
    _check_tokens(backend, hidden, weight, labels, tol=TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_logits(backend):
    # logits of order 1e4: the online log-sum-exp must not overflow or lose the label term
    hidden, weight, labels, _, _ = make_case(24, 16, 77, scale=2.5e3)
    z = hidden.double() @ weight.double().T
    assert z.abs().max() > 5e3
    _check_tokens(backend, hidden, weight, labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_ignored(backend):
    hidden, weight, labels, _, _ = make_case(10, 16, 40)
    labels[:] = -100
    h, w = leaf(hidden, weight)
    out = lf.linear_logprobs(h, w, labels, backend=backend)
    assert (out == 0).all()
    out.sum().backward()
    assert (h.grad == 0).all() and (w.grad == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_ignore_index_inside_vocab(backend):
    # ignore_index may be a real token id (e.g. a pad id); those rows are skipped, others scored
    hidden, weight, labels, _, _ = make_case(20, 16, 30, ignore_frac=0.0)
    labels[::3] = 5
    out = lf.linear_logprobs(hidden, weight, labels, ignore_index=5, backend=backend)
    ref = token_logprobs(hidden, weight, labels, ignore_index=5)
    assert_close(out, ref, 1e-5, "logp")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_logprobs_edge_sequences(backend):
    # one-token sequences, an empty sequence, a fully ignored sequence (logp 0, length 0)
    hidden, weight, labels, _, _ = make_case(12, 16, 45, ignore_frac=0.0)
    labels[4:8] = -100
    cu = torch.tensor([0, 1, 2, 2, 4, 8, 12], dtype=torch.int32)
    h, w = leaf(hidden, weight)
    logps, lengths = lf.sequence_logprobs(h, w, labels, cu, backend=backend)
    ref, ref_len = sequence_logprobs(hidden, weight, labels, cu)
    assert logps.dtype == torch.float32 and lengths.dtype == torch.int64
    assert lengths.tolist() == ref_len.tolist() == [1, 1, 0, 2, 0, 4]
    assert logps[2] == 0 and logps[4] == 0
    assert_close(logps, ref, 1e-5, "seq logps")
    upstream = torch.randn(6, dtype=torch.float64)
    (logps.double() * upstream).sum().backward()
    rh, rw = leaf(hidden.double(), weight.double())
    (sequence_logprobs(rh, rw, labels, cu)[0] * upstream).sum().backward()
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
    h, w = leaf(hidden, weight)
    logps, lengths = lf.sequence_logprobs(h, w, labels, cu, backend=backend)
    rh, rw = leaf(hidden.double(), weight.double())
    ref, ref_len = sequence_logprobs(rh, rw, labels, cu)
    assert lengths.tolist() == ref_len.tolist()
    assert_close(logps, ref, 1e-5, "seq logps")
    upstream = torch.randn(len(lengths), dtype=torch.float64)
    (logps.double() * upstream).sum().backward()
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

    hidden, weight, labels, _, _ = make_case(20, 16, 70)

    def grads():
        h, w = leaf(hidden, weight)
        lf.linear_logprobs(h, w, labels, backend="triton").sum().backward()
        return h.grad, w.grad

    exact = grads()
    monkeypatch.setattr(triton_backend, "GRAD_SKIP_THRESHOLD", 1e-30)  # nothing is that small here
    assert all(torch.equal(a, b) for a, b in zip(grads(), exact))
    monkeypatch.setattr(triton_backend, "GRAD_SKIP_THRESHOLD", 1e9)  # every tile skipped
    assert all((g == 0).all() for g in grads())
