"""The compiled Triton kernels on CUDA against float64 references: `pytest -m gpu` on a GPU machine.

On the CPU the Triton tests of test_logprobs.py / test_fused.py run Triton's interpreter, which
differs from what users get: operands upcast to float32 (UPCAST=True), 16x32x16 tiles, the
gradient tile kept in float32. Here, with TRITON_INTERPRET left unset by conftest.py, the kernels
run compiled: tensor-core tiles chosen by triton.autotune (kernels/autotune.py: BLOCK_N >= 64,
BLOCK_V >= 64; LRDPO_AUTOTUNE=0 pins 64 x 128 x 64, 8 warps, for a quick run), 16-bit operands
straight into tl.dot, the gradient tile rounded to the input dtype before the dH/dW dots, the
vocabulary split across programs for short batches, float32 atomics. Shapes are chosen to cross
block boundaries with remainders (d = 200 = 3 x 64 + 8, V = 1000 = 7 x 128 + 104, N of hundreds
of tokens in long-tailed pairs) and to force vocabulary splits (40 tokens x V = 32000).

Tolerances (reference.py): the forward accumulates in float32 from inputs the float64 reference
sees exactly, so log-probs are bounded by float32 arithmetic on the logits' scale
(``logp_tolerance``), the loss by those errors times |d loss / d logp|; gradients element by
element by two roundings to the input dtype plus float32 accumulation (``grad_tolerance``).
Skipped without CUDA. To edit these tests without a GPU, LRDPO_GPU_TESTS_DRY_RUN=1 runs their
logic on the CPU through the interpreter (slow; proves nothing about the compiled kernels).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from cases import leaf
from reference import assert_within, grad_tolerance, logit_grad_scales, logp_tolerance, token_logprobs

import lrdpo_fast as lf

DRY_RUN = os.environ.get("LRDPO_GPU_TESTS_DRY_RUN") == "1" and not torch.cuda.is_available()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available() and not DRY_RUN,
        reason="needs a CUDA GPU: runs the compiled Triton kernels (the CPU suite runs them "
        "through Triton's interpreter in test_logprobs.py / test_fused.py)",
    ),
]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DT_IDS = ["fp32", "bf16", "fp16"]
CUDA = torch.device("cpu" if DRY_RUN else "cuda")


@pytest.fixture(autouse=True)
def _ieee_fp32_matmuls():
    """float32 references and model bodies without TF32 (the kernels choose their own precision)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved[0]
    torch.set_float32_matmul_precision(saved[1])


@pytest.mark.skipif(DRY_RUN, reason="dry run on the CPU: the interpreter")
def test_compiled_kernels_at_real_block_sizes():
    from lrdpo_fast.kernels import autotune
    from lrdpo_fast.kernels.logprob_bwd import logprob_bwd_kernel
    from lrdpo_fast.kernels.logprob_fwd import logprob_fwd_kernel
    from triton.runtime.jit import JITFunction

    from lrdpo_fast.ops import triton_backend
    from lrdpo_fast.ops.logprobs import resolve_backend

    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "the GPU tests must run the compiled kernels"
    assert not triton_backend._interpreting() and not autotune.interpreting()
    for kernel in (logprob_fwd_kernel, logprob_bwd_kernel):
        inner = getattr(kernel, "fn", kernel)  # the autotuner wraps the jitted kernel
        assert isinstance(inner, JITFunction), type(inner)  # compiled, not triton's InterpretedFunction
        tiles = [
            (c.kwargs["BLOCK_N"], c.kwargs["BLOCK_V"], c.kwargs["BLOCK_D"]) for c in getattr(kernel, "configs", [])
        ]
        assert tiles and all(bn >= 64 and bv >= 64 and bd >= 32 for bn, bv, bd in tiles), tiles  # tensor-core tiles
    assert resolve_backend("triton", CUDA, torch.bfloat16) == "triton"


# ---- inputs ------------------------------------------------------------------------------------
def tokens_case(n, d, v, dtype, *, seed=0, ignore_frac=0.3, bias=False):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64)
    weight = torch.randn(v, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignore_frac] = -100
    b = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    cast = [t.to(dtype).to(CUDA) for t in (hidden, weight)]
    return cast[0], cast[1], labels.to(CUDA), None if b is None else b.to(dtype).to(CUDA)


def pairs_case(n_pairs, d, v, dtype, *, seed=0):
    """Long-tailed packed pairs: 5-60 prompt tokens (ignored), 1-150 response tokens, last ignored."""
    g = torch.Generator().manual_seed(seed)
    labels, lens = [], []
    for _ in range(2 * n_pairs):
        p = int(torch.randint(5, 61, (1,), generator=g))
        r = int(torch.randint(1, MAX_RESPONSE + 1, (1,), generator=g))
        lab = [-100] * (p - 1) + torch.randint(0, v, (r,), generator=g).tolist() + [-100]
        lens.append(len(lab))
        labels += lab
    hidden, weight, _, _ = tokens_case(len(labels), d, v, dtype, seed=seed + 1)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=CUDA)
    return hidden, weight, torch.tensor(labels, device=CUDA), cu


# ---- token and sequence log-probs ----------------------------------------------------------------
SHAPES = (
    [(70, 24, 100), (8, 40, 600), (33, 16, 64)] if DRY_RUN else [(700, 200, 1000), (40, 320, 32000), (129, 64, 4096)]
)
D, V = (24, 100) if DRY_RUN else (200, 1000)  # pairs cases
MAX_RESPONSE = 20 if DRY_RUN else 150


# the Triton kernels, and the chunked path's CUDA form (cuBLAS GEMMs + a Triton row pass), which
# backend="auto" may pick on a GPU
BACKENDS = ["triton", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("n,d,v", SHAPES, ids=["long", "wide-vocab-splits", "exact-blocks"])
def test_gpu_linear_logprobs(dtype, n, d, v, backend):
    hidden, weight, labels, _ = tokens_case(n, d, v, dtype)
    _check_linear(hidden, weight, labels, backend=backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
def test_gpu_linear_logprobs_bias_temperature_ignore_index(dtype):
    hidden, weight, labels, bias = tokens_case(*SHAPES[0], dtype, bias=True)
    _check_linear(hidden, weight, labels, bias=bias, temperature=0.7)
    labels = torch.where(labels == -100, torch.full_like(labels, 5), labels)  # an in-vocabulary pad id
    _check_linear(hidden, weight, labels, ignore_index=5)


def _check_linear(hidden, weight, labels, bias=None, temperature=1.0, ignore_index=-100, backend="triton"):
    h, w, b = leaf(hidden, weight, bias)
    out = lf.linear_logprobs(h, w, labels, bias=b, temperature=temperature, ignore_index=ignore_index, backend=backend)
    assert out.dtype == torch.float32 and out.device.type == CUDA.type
    upstream = torch.randn(labels.shape[0], dtype=torch.float64, device=CUDA)
    (out.double() * upstream).sum().backward()
    rh, rw, rb = leaf(*(None if t is None else t.double() for t in (hidden, weight, bias)))
    ref = token_logprobs(rh, rw, labels, rb, ignore_index=ignore_index, temperature=temperature)
    (ref * upstream).sum().backward()
    tol, logit_err = logp_tolerance(hidden, weight, labels, bias, ignore_index, temperature)
    assert_within(out, ref, tol, "logp")
    assert (out[labels == ignore_index] == 0).all()
    _check_grads(
        h.grad,
        w.grad,
        rh,
        rw,
        labels,
        upstream,
        logit_err,
        b=b,
        rb=rb,
        ignore_index=ignore_index,
        temperature=temperature,
    )


def _check_grads(dh, dw, rh, rw, labels, g_tok, logit_err, *, b=None, rb=None, ignore_index=-100, temperature=1.0):
    """Kernel gradients (input dtype) vs float64 ones, element by element within ``grad_tolerance``."""
    dtype = dh.dtype
    s_h, s_w, s_b = logit_grad_scales(rh, rw, labels, g_tok, rb, ignore_index, temperature)
    n, v = labels.shape[0], rw.shape[0]
    err = float(logit_err.max())
    assert_within(
        dh, rh.grad, grad_tolerance(s_h, dtype, v, logit_error=err, operand_max=float(rw.abs().max())), "dhidden"
    )
    assert_within(
        dw, rw.grad, grad_tolerance(s_w, dtype, n, logit_error=err, operand_max=float(rh.abs().max())), "dweight"
    )
    if b is not None:
        assert_within(b.grad, rb.grad, grad_tolerance(s_b, dtype, n, logit_error=err), "dbias")


# ---- the fused objective ---------------------------------------------------------------------------
OBJECTIVES = [
    dict(loss_type="sigmoid", beta=0.1, alpha=0.02),
    dict(loss_type="sigmoid", beta=0.3, alpha=0.01, label_smoothing=0.1),
    dict(loss_type="hinge", beta=0.05, alpha=0.01),
    dict(loss_type="ipo", beta=0.5),
    dict(loss_type="sigmoid_norm", beta=1.0, alpha=0.02),
    dict(loss_type="simpo", beta=2.0, gamma=0.5, alpha=0.01),
]


def _seq_logps64(hidden, weight, labels, cu, ignore_index=-100):
    """float64 per-sequence log-probs and lengths from materialized logits, differentiable w.r.t.
    the returned float64 leaves (rh, rw)."""
    rh, rw = leaf(hidden.double(), weight.double())
    tok = token_logprobs(rh, rw, labels, ignore_index=ignore_index)
    seq_ids = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=CUDA), (cu[1:] - cu[:-1]).long())
    logps = torch.zeros(cu.numel() - 1, dtype=torch.float64, device=CUDA).index_add(0, seq_ids, tok)
    lengths = torch.zeros(cu.numel() - 1, dtype=torch.int64, device=CUDA).index_add(
        0, seq_ids, (labels != ignore_index).long()
    )
    return logps, lengths, seq_ids, rh, rw


def _fused_reference(hidden, weight, labels, cu, ref, kw, ignore_index=-100):
    """float64 loss, seq log-probs, dL/dlogp and grads from materialized logits (on the GPU)."""
    logps, lengths, seq_ids, rh, rw = _seq_logps64(hidden, weight, labels, cu, ignore_index)
    logps.retain_grad()
    loss, _ = lf.lrdpo_loss(
        logps[0::2], logps[1::2], ref[0::2].double(), ref[1::2].double(), lengths[0::2], lengths[1::2], **kw
    )
    loss.backward()
    return loss.detach(), logps.detach(), logps.grad, seq_ids, rh, rw


def _run_fused(hidden, weight, labels, cu, ref, kw, ignore_index=-100, backend="triton"):
    h, w = leaf(hidden, weight)
    loss, metrics = lf.fused_lrdpo_loss(
        h, w, labels, cu, ref_logps=ref, backend=backend, ignore_index=ignore_index, **kw
    )
    loss.backward()
    assert loss.dtype == torch.float32 and h.grad.dtype == hidden.dtype and w.grad.dtype == weight.dtype
    return loss.detach(), metrics, h.grad, w.grad


def _check_fused(hidden, weight, labels, cu, ref, kw, ignore_index=-100, backend="triton"):
    loss, metrics, dh, dw = _run_fused(hidden, weight, labels, cu, ref, kw, ignore_index, backend)
    r_loss, r_logps, g_seq, seq_ids, rh, rw = _fused_reference(hidden, weight, labels, cu, ref, kw, ignore_index)
    tok_tol, logit_err = logp_tolerance(hidden, weight, labels, ignore_index=ignore_index)
    seq_tol = torch.zeros_like(r_logps).index_add(0, seq_ids, tok_tol)
    assert_within(metrics["logps/sequences"], r_logps, seq_tol, "sequence log-probs")
    # first-order propagation of the log-prob errors into the loss, plus float32 rounding of the loss
    loss_tol = float((g_seq.abs() * seq_tol).sum()) + 1e-6 * max(1.0, abs(float(r_loss)))
    assert_within(loss, r_loss, loss_tol, "loss")
    _check_grads(dh, dw, rh, rw, labels, g_seq[seq_ids], logit_err, ignore_index=ignore_index)
    return loss, dh, dw, (r_loss, rh.grad, rw.grad, g_seq, seq_ids, rh, rw, logit_err)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DT_IDS)
@pytest.mark.parametrize("kw", OBJECTIVES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_gpu_fused_lrdpo_loss(dtype, kw, backend):
    hidden, weight, labels, cu = pairs_case(4, D, V, dtype)
    assert DRY_RUN or hidden.shape[0] > 4 * 64  # several token blocks
    _check_fused(hidden, weight, labels, cu, _near_reference(hidden, weight, labels, cu), kw, backend=backend)


def _near_reference(hidden, weight, labels, cu, ignore_index=-100, noise=2.0):
    """Reference log-probs = the policy's plus noise: margins of order 1, where every loss has a
    gradient (a far reference saturates the sigmoid and hides errors)."""
    with torch.no_grad():
        pol = _seq_logps64(hidden, weight, labels, cu, ignore_index)[0]
    g = torch.Generator().manual_seed(1)
    return (pol + noise * torch.randn(pol.shape, generator=g, dtype=torch.float64).to(CUDA)).float()


def test_gpu_fused_ignore_index_inside_vocab():
    hidden, weight, labels, cu = pairs_case(3, D, V, torch.bfloat16, seed=2)
    pad = 7
    labels = torch.where(labels == pad, torch.full_like(labels, pad + 1), labels)
    labels = torch.where(labels == -100, torch.full_like(labels, pad), labels)
    ref = _near_reference(hidden, weight, labels, cu, ignore_index=pad)
    _check_fused(hidden, weight, labels, cu, ref, dict(loss_type="sigmoid", beta=0.1, alpha=0.02), ignore_index=pad)


def test_gpu_length_term_bf16():
    """The length term changes the compiled bf16 loss and gradients by what float64 says, and by
    much more than the bf16 tolerance."""
    hidden, weight, labels, cu = pairs_case(4, D, V, torch.bfloat16, seed=5)
    ref = _near_reference(hidden, weight, labels, cu, noise=0.3)  # margins near 0, where sigma' is large
    out = {
        a: _check_fused(hidden, weight, labels, cu, ref, dict(loss_type="sigmoid", beta=0.1, alpha=a))
        for a in (0.0, 0.05)
    }
    (l0, dh0, dw0, r0), (l1, dh1, dw1, r1) = out[0.0], out[0.05]
    want = float(r1[0] - r0[0])
    assert abs(want) > 1e-2
    assert float(l1 - l0) == pytest.approx(want, rel=1e-4, abs=1e-5)
    n, v = labels.shape[0], weight.shape[0]
    tol_h = tol_w = 0
    for r in (r0, r1):
        s_h, s_w, _ = logit_grad_scales(r[5], r[6], labels, r[3][r[4]])
        err = float(r[7].max())
        tol_h = tol_h + grad_tolerance(s_h, torch.bfloat16, v, logit_error=err)
        tol_w = tol_w + grad_tolerance(s_w, torch.bfloat16, n, logit_error=err)
    assert_within(dh1.double() - dh0.double(), r1[1] - r0[1], tol_h, "change of dhidden")
    assert_within(dw1.double() - dw0.double(), r1[2] - r0[2], tol_w, "change of dweight")
    assert float((r1[1] - r0[1]).abs().max()) > 10 * float(tol_h.max())
    assert float((r1[2] - r0[2]).abs().max()) > 10 * float(tol_w.max())


# ---- the trainer on the compiled kernels -------------------------------------------------------------
def test_gpu_trainer_triton_fp32(tmp_path):
    from test_trainer_reference import check_adamw_step, check_metrics, run_first_step

    trainer, row, want, start = run_first_step(tmp_path, alpha=0.1, backend="triton", device=CUDA.type, dtype="fp32")
    assert next(trainer.model.parameters()).device.type == CUDA.type
    check_metrics(row, want, rel=1e-4, abs_=1e-5)
    assert row["grad_norm"] == pytest.approx(want.grad_norm, rel=1e-3)
    check_adamw_step(trainer, row, want, start, atol=1e-6)


def test_gpu_trainer_triton_bf16(tmp_path):
    from test_trainer_reference import check_bf16_first_step, run_first_step

    trainer, row, want, start = run_first_step(tmp_path, alpha=0.1, backend="triton", device=CUDA.type, dtype="bf16")
    check_bf16_first_step(trainer, row, want, start)
