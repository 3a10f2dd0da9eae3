"""The numerical edge block (issue 14), in one place and on both backends: logits of magnitude
1e4, vocabularies of 1 and 2^17 + 3, bf16 and fp16 inputs, one-token sequences and all-ignored
labels, through the token log-probs and the fused LR-DPO loss (alpha > 0). Every output must be
finite and within the stated tolerance of a float64 reference on the same rounded inputs:
log-probs and the loss to float32 accuracy (1e-5 relative), float32 gradients to 1e-5, 16-bit
gradients within two roundings to their dtype (``grad_tolerance``, tests/README.md)."""

import pytest
import torch
from cases import CUDA, make_case
from reference import assert_close
from test_fused import _check_16bit, _pair_case, _reference, _run
from test_logprobs import _check_tokens

BACKENDS = ["torch", "triton"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]
BIG_V = 2**17 + 3
KW = dict(beta=0.5, alpha=0.05)


def _finite(*tensors):
    for t in tensors:
        assert torch.isfinite(t).all(), t


# ---- token log-probs ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_logits_of_magnitude_1e4(backend, dtype):
    # fp16 tops out at 65504: 1e4 logits are its real range, not a overflow test of the inputs
    hidden, weight, labels, _, _ = make_case(24, 16, 77, dtype=dtype, scale=2.5e3)
    z = hidden.double() @ weight.double().T
    assert 5e3 < z.abs().max() < 6e4
    _check_tokens(backend, hidden, weight, labels)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_vocabulary_of_one(backend, dtype):
    # log softmax over one class is exactly 0, and so are the gradients
    hidden, weight, labels, _, _ = make_case(9, 16, 1, dtype=dtype, scale=30.0)
    _check_tokens(backend, hidden, weight, labels)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_vocabulary_of_2_pow_17_plus_3(backend, dtype):
    # more vocabulary blocks than any tile covers, and a ragged last block
    if backend == "triton" and not CUDA:
        pytest.skip("~2 min per case in Triton's interpreter; test_fused_vocabulary_of_2_pow_17_plus_3 covers it")
    hidden, weight, labels, _, _ = make_case(5, 8, BIG_V, dtype=dtype, ignore_frac=0.2, seed=3)
    labels[0] = BIG_V - 1  # the last column, in the ragged block
    _check_tokens(backend, hidden, weight, labels)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_all_ignored_labels(backend, dtype):
    hidden, weight, labels, _, _ = make_case(10, 16, 40, dtype=dtype)
    labels[:] = -100
    _check_tokens(backend, hidden, weight, labels)


# ---- the fused loss -----------------------------------------------------------------------------
def _check_fused(backend, dtype, hidden, weight, labels, cu, ref):
    got = _run(backend, hidden, weight, labels, cu, ref, **KW)
    loss, metrics, dh, dw = got
    _finite(loss, dh, dw, metrics["logps/sequences"])
    if dtype == torch.float32:
        ref_loss, ref_dh, ref_dw, ref_logps = _reference(hidden, weight, labels, cu, ref, KW)
        assert_close(loss, ref_loss, 1e-5, "loss")
        assert_close(metrics["logps/sequences"], ref_logps, 1e-5, "seq logps")
        assert_close(dh, ref_dh, 1e-5, "dhidden")
        assert_close(dw, ref_dw, 1e-5, "dweight")
    else:
        _check_16bit(dtype, got, _reference(hidden, weight, labels, cu, ref, KW, scales=True), labels.numel())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_fused_one_token_sequences(backend, dtype):
    # every sequence: one prompt token (ignored) and a one-token response
    n_seqs, d, v = 6, 16, 53
    hidden, weight, _, _, _ = make_case(2 * n_seqs, d, v, dtype=dtype, seed=7)
    labels = torch.tensor([-100, 0] * n_seqs)
    labels[1::2] = torch.randint(0, v, (n_seqs,), generator=torch.Generator().manual_seed(1))
    cu = torch.arange(0, 2 * n_seqs + 1, 2, dtype=torch.int32)
    ref = -torch.rand(n_seqs) * 5
    _check_fused(backend, dtype, hidden, weight, labels, cu, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_fused_large_logits(backend, dtype):
    hidden, weight, labels, cu = _pair_case(dtype=torch.float64, seed=11)
    hidden = (hidden * 2.5e3).to(dtype)
    weight = weight.to(dtype)
    z = hidden.double() @ weight.double().T
    assert z.abs().max() > 5e3
    ref = -torch.rand(cu.numel() - 1) * 2e3  # log-probs of this size are what 1e4 logits give
    _check_fused(backend, dtype, hidden, weight, labels, cu, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_vocabulary_of_2_pow_17_plus_3(backend):
    hidden, weight, labels, cu = _pair_case(n_pairs=1, d=8, v=BIG_V, seed=2)
    labels[int((labels >= 0).nonzero()[0])] = BIG_V - 1  # the last column, in the ragged block
    ref = -torch.rand(cu.numel() - 1) * 40
    _check_fused(backend, torch.float32, hidden, weight, labels, cu, ref)
