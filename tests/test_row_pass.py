"""The chunked path's CUDA form: GEMMs + one Triton row pass per chunk (kernels/softmax_grad.py),
against float64. On a CPU machine it runs on CPU tensors through Triton's interpreter
(``torch_backend.FUSED_PASS = "1"``); on a GPU machine on CUDA tensors, compiled."""

import pytest
import torch
from cases import CUDA, leaf, make_case
from reference import assert_close, assert_within, grad_tolerance, logit_grad_scales, token_logprobs
from test_fused import _check_16bit, _pair_case, _reference

import lrdpo_fast as lf
from lrdpo_fast.ops import torch_backend

DEV = torch.device("cuda" if CUDA else "cpu")


@pytest.fixture(autouse=True)
def _cuda_form(monkeypatch):
    """Route the torch backend through the CUDA form, with tiny chunks; count row-pass launches."""
    monkeypatch.setattr(torch_backend, "FUSED_PASS", "1")
    calls = []
    real = torch_backend.row_pass
    monkeypatch.setattr(torch_backend, "row_pass", lambda *a, **k: calls.append(1) or real(*a, **k))
    yield calls
    assert calls, "the CUDA form (row pass) never ran"


def _logits_case(c, v, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(c, v, generator=g, dtype=torch.float64) * scale
    lab = torch.randint(0, v, (c,), generator=g)
    gr = torch.randn(c, generator=g, dtype=torch.float64)
    return z, lab, gr


@pytest.mark.parametrize(
    "dtype,c,v,temp",
    [
        (torch.float32, 5, 37, 0.7),
        (torch.bfloat16, 3, 100, 1.3),
        (torch.float16, 1, 7, 1.0),
        (torch.bfloat16, 4, 16, 1.0),
    ],
    ids=["fp32", "bf16", "fp16", "bf16-one-block"],
)
def test_row_kernel_against_float64(dtype, c, v, temp):
    z64, lab, g64 = _logits_case(c, v)
    z = z64.float().to(DEV).contiguous()
    lab_d, g = lab.to(DEV), g64.float().to(DEV)
    lse, logp = torch.empty(c, device=DEV), torch.empty(c, device=DEV)
    torch_backend.row_pass(z, lab_d, lse, logp, None, dtype, 1.0 / temp)
    zt = z.double().cpu() / temp  # what the kernel read (float32 logits)
    want_lse = torch.logsumexp(zt, dim=1)
    assert_close(lse, want_lse, 1e-6, "lse")
    assert_close(logp, zt.gather(1, lab[:, None]).squeeze(1) - want_lse, 1e-6, "logp")
    block_v, _ = torch_backend._row_block(DEV)
    bm = torch.zeros(-(-v // block_v), device=DEV)
    ptr = z.data_ptr()
    e = torch_backend.row_pass(z, lab_d, lse, None, g, dtype, 1.0 / temp, bm)
    assert e.dtype == dtype and e.shape == (c, v) and e.data_ptr() == ptr  # in place, in the input dtype
    want = (torch.nn.functional.one_hot(lab, v).double() - torch.softmax(zt, dim=1)) * g64[:, None] / temp
    res = {torch.float32: 2**-22, torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]
    assert_within(e, want, want.abs() * res + 1e-7, "gradient")
    blocks = torch.nn.functional.pad(want.abs(), (0, bm.numel() * block_v - v)).view(c, -1, block_v).amax(dim=(0, 2))
    assert_close(bm, blocks, 1e-2 if dtype != torch.float32 else 1e-6, "block max")


def _check_tokens(hidden, weight, labels, bias=None, temperature=1.0):
    """linear_logprobs (torch backend, CUDA form) and its gradients against float64."""
    hidden, weight, labels = hidden.to(DEV), weight.to(DEV), labels.to(DEV)
    bias = None if bias is None else bias.to(DEV)
    h, w, b = leaf(hidden, weight, bias)
    out = lf.linear_logprobs(h, w, labels, bias=b, temperature=temperature, backend="torch")
    up = torch.randn(labels.shape[0], dtype=torch.float64)
    (out.double() * up.to(DEV)).sum().backward()
    rh, rw, rb = leaf(*(None if t is None else t.double().cpu() for t in (hidden, weight, bias)))
    ref = token_logprobs(rh, rw, labels.cpu(), rb, temperature=temperature)
    (ref * up).sum().backward()
    assert_close(out, ref, 1e-5, "logp")
    assert h.grad.dtype == hidden.dtype and w.grad.dtype == weight.dtype
    if hidden.dtype == torch.float32:
        for got, want, what in ((h.grad, rh.grad, "dh"), (w.grad, rw.grad, "dw")) + (
            ((b.grad, rb.grad, "db"),) if bias is not None else ()
        ):
            assert_close(got, want, 1e-5, what)
        return
    s_h, s_w, s_b = logit_grad_scales(rh, rw, labels.cpu(), up, rb, -100, temperature)
    n, v = labels.shape[0], weight.shape[0]
    assert_within(h.grad, rh.grad, grad_tolerance(s_h, hidden.dtype, v), "dh")
    assert_within(w.grad, rw.grad, grad_tolerance(s_w, weight.dtype, n), "dw")
    if bias is not None:
        assert_within(b.grad, rb.grad, grad_tolerance(s_b, bias.dtype, n), "db")


@pytest.mark.parametrize(
    "dtype,n,d,v",
    [(torch.float32, 37, 24, 101), (torch.bfloat16, 37, 24, 101), (torch.bfloat16, 1, 16, 7)],
    ids=["fp32", "bf16", "bf16-one-token"],
)
def test_tokens_odd_shapes_several_chunks(monkeypatch, dtype, n, d, v):
    monkeypatch.setattr(torch_backend, "CUDA_CHUNK_ELEMENTS", 8 * v)  # 8-row chunks
    hidden, weight, labels, _, _ = make_case(n, d, v, dtype=dtype, scale=2.0, ignore_frac=0.0 if n == 1 else 0.3)
    _check_tokens(hidden, weight, labels)


def test_tokens_bias_temperature_fp16():
    hidden, weight, labels, _, bias = make_case(29, 20, 70, dtype=torch.float16, scale=2.0, bias=True)
    _check_tokens(hidden, weight, labels, bias=bias, temperature=0.7)


@pytest.mark.parametrize(
    "dtype,chunk",
    [(torch.float32, 5), (torch.bfloat16, 1000), (torch.bfloat16, 5)],
    ids=["fp32-pair-bigger-than-chunk", "bf16-pairs-per-chunk", "bf16-pair-bigger-than-chunk"],
)
def test_fused_loss_through_the_cuda_form(monkeypatch, dtype, chunk):
    hidden, weight, labels, cu = _pair_case(dtype=dtype)
    monkeypatch.setattr(torch_backend, "CUDA_CHUNK_ELEMENTS", chunk * weight.shape[0])
    ref = -torch.rand(cu.numel() - 1) * 20
    kw = dict(beta=0.5, alpha=0.02)
    h, w = leaf(hidden.to(DEV), weight.to(DEV))
    loss, metrics = lf.fused_lrdpo_loss(h, w, labels.to(DEV), cu.to(DEV), ref_logps=ref.to(DEV), backend="torch", **kw)
    loss.backward()
    got = (loss.detach().cpu(), {k: v.cpu() for k, v in metrics.items()}, h.grad.cpu(), w.grad.cpu())
    want = _reference(hidden, weight, labels, cu, ref, kw, scales=True)
    if dtype == torch.float32:
        assert_close(got[0], want[0], 1e-5, "loss")
        assert_close(got[2], want[1], 1e-5, "dh")
        assert_close(got[3], want[2], 1e-5, "dw")
        assert_close(got[1]["logps/sequences"], want[3], 1e-5, "seq logps")
    else:
        _check_16bit(dtype, got, want, labels.numel())


def test_gradient_filter(monkeypatch):
    """GRAD_SKIP_THRESHOLD (16-bit only): off by default; a threshold nothing is below changes
    nothing; one everything is below drops every block; fp32 is never filtered."""
    assert torch_backend.GRAD_SKIP_THRESHOLD == 0.0
    monkeypatch.setattr(torch_backend, "CUDA_CHUNK_ELEMENTS", 8 * 90)

    def grads(dtype):
        hidden, weight, labels, _, _ = make_case(16, 16, 90, dtype=dtype, scale=2.0, ignore_frac=0.0)
        h, w = leaf(hidden.to(DEV), weight.to(DEV))
        lf.linear_logprobs(h, w, labels.to(DEV), backend="torch").sum().backward()
        return h.grad, w.grad

    exact = grads(torch.bfloat16)
    monkeypatch.setattr(torch_backend, "SKIP_MAX_LIVE_FRACTION", 1.0)  # filter whenever asked
    monkeypatch.setattr(torch_backend, "GRAD_SKIP_THRESHOLD", 1e-30)
    assert all(torch.equal(a, b) for a, b in zip(grads(torch.bfloat16), exact))
    monkeypatch.setattr(torch_backend, "GRAD_SKIP_THRESHOLD", 1e9)
    assert all((g == 0).all() for g in grads(torch.bfloat16))
    assert all((g != 0).any() for g in grads(torch.float32))
