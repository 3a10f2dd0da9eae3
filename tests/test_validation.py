"""Bad input gets a ValueError naming the argument, never a silent NaN."""

import pytest
import torch
from cases import backend_device, make_case, to_device

import lrdpo_fast as lf


@pytest.fixture
def case():
    hidden, weight, labels, _, _ = make_case(12, 8, 20, ignore_frac=0.0)
    cu = torch.tensor([0, 3, 6, 9, 12], dtype=torch.int32)
    return hidden, weight, labels, cu


def _raises(match, fn, *args, **kw):
    with pytest.raises(ValueError, match=match):
        fn(*args, **kw)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_label_range(case, backend):
    hidden, weight, labels, cu = to_device(backend_device(backend), *case)
    bad = labels.clone()
    bad[3] = 20
    _raises("labels", lf.linear_logprobs, hidden, weight, bad, backend=backend)
    bad[3] = -1
    _raises("labels", lf.sequence_logprobs, hidden, weight, bad, cu, backend=backend)
    bad[3] = -100  # the ignore_index itself is fine
    lf.linear_logprobs(hidden, weight, bad, backend=backend)


def test_cu_seqlens(case):
    hidden, weight, labels, _ = case
    for cu, what in [([1, 6, 12], "start at 0"), ([0, 8, 6, 12], "non-decreasing"), ([0, 6, 11], "end at")]:
        _raises(f"cu_seqlens.*{what}", lf.sequence_logprobs, hidden, weight, labels, torch.tensor(cu))
    _raises("cu_seqlens", lf.sequence_logprobs, hidden, weight, labels, torch.tensor([0.0, 12.0]))
    _raises("cu_seqlens", lf.sequence_logprobs, hidden, weight, labels, torch.tensor([12]))


def test_odd_number_of_sequences(case):
    hidden, weight, labels, _ = case
    cu = torch.tensor([0, 4, 8, 12], dtype=torch.int32)
    _raises("cu_seqlens.*3 sequences", lf.fused_lrdpo_loss, hidden, weight, labels, cu, ref_logps=torch.zeros(3))


@pytest.mark.parametrize("loss_type", ["ipo", "sigmoid_norm", "simpo"])
def test_empty_response_in_length_normalized_loss(case, loss_type):
    hidden, weight, labels, cu = case
    labels = labels.clone()
    labels[3:6] = -100  # the rejected of pair 0 has no response tokens
    _raises(
        "labels.*pair 0 has no rejected",
        lf.fused_lrdpo_loss,
        hidden,
        weight,
        labels,
        cu,
        ref_logps=torch.zeros(4),
        loss_type=loss_type,
    )
    z = torch.zeros(2)
    _raises(
        "rejected_lengths", lf.lrdpo_loss, z, z, z, z, torch.tensor([3, 3]), torch.tensor([0, 2]), loss_type=loss_type
    )


def test_shape_dtype_device_mismatch(case):
    hidden, weight, labels, cu = case
    _raises("weight.*hidden size", lf.linear_logprobs, hidden, weight[:, :5], labels)
    _raises("weight dtype", lf.linear_logprobs, hidden, weight.double(), labels)
    _raises("hidden must have 2 dimensions", lf.linear_logprobs, hidden[None], weight, labels)
    _raises("labels has 11 entries", lf.linear_logprobs, hidden, weight, labels[:-1])
    _raises("labels must be int", lf.linear_logprobs, hidden, weight, labels.float())
    _raises("hidden must be float", lf.linear_logprobs, hidden.long(), weight, labels)
    _raises("weight is on meta", lf.linear_logprobs, hidden, weight.to("meta"), labels)
    _raises("bias has 3 entries", lf.linear_logprobs, hidden, weight, labels, bias=torch.zeros(3))
    _raises("cu_seqlens is on meta", lf.sequence_logprobs, hidden, weight, labels, cu.to("meta"))
    _raises(
        "ref_logps must be a float tensor of shape \\[4\\]",
        lf.fused_lrdpo_loss,
        hidden,
        weight,
        labels,
        cu,
        ref_logps=torch.zeros(3),
    )
    _raises("ref_hidden", lf.fused_lrdpo_loss, hidden, weight, labels, cu, ref_hidden=hidden[:, :4])
    _raises("pass ref_logps .S. or ref_hidden", lf.fused_lrdpo_loss, hidden, weight, labels, cu)
    _raises("triton.*float64", lf.linear_logprobs, hidden.double(), weight.double(), labels, backend="triton")


def test_non_finite(case):
    hidden, weight, labels, cu = case
    bad = hidden.clone()
    bad[2, 1] = float("nan")
    _raises("hidden contains non-finite", lf.linear_logprobs, bad, weight, labels)
    bad[2, 1] = float("inf")
    _raises("hidden contains non-finite", lf.fused_lrdpo_loss, bad, weight, labels, cu, ref_logps=torch.zeros(4))
    _raises(
        "ref_logps contains non-finite",
        lf.fused_lrdpo_loss,
        hidden,
        weight,
        labels,
        cu,
        ref_logps=torch.tensor([0.0, float("nan"), 0.0, 0.0]),
    )


def test_hyper_parameters(case):
    hidden, weight, labels, cu = case
    ref = torch.zeros(4)
    fused = lf.fused_lrdpo_loss
    _raises("loss_type", fused, hidden, weight, labels, cu, ref_logps=ref, loss_type="kto")
    _raises("beta", fused, hidden, weight, labels, cu, ref_logps=ref, beta=0.0)
    _raises(
        "alpha must be 0 with loss_type='ipo'",
        fused,
        hidden,
        weight,
        labels,
        cu,
        ref_logps=ref,
        loss_type="ipo",
        alpha=0.1,
    )
    _raises("gamma", fused, hidden, weight, labels, cu, ref_logps=ref, gamma=0.5)
    _raises("label_smoothing", fused, hidden, weight, labels, cu, ref_logps=ref, label_smoothing=0.7)
    _raises("backend", fused, hidden, weight, labels, cu, ref_logps=ref, backend="cuda")
    _raises("temperature", lf.linear_logprobs, hidden, weight, labels, temperature=0.0)
    _raises("loss_type", lf.LRDPOLoss, loss_type="dpo")


def test_triton_on_cpu_needs_interpreter(case, monkeypatch):
    hidden, weight, labels, _ = case
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    _raises("TRITON_INTERPRET", lf.linear_logprobs, hidden, weight, labels, backend="triton")
