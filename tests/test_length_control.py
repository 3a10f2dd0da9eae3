"""LD-DPO and SamPO token weights and WPO (issue 24) in ``sequence_logprobs`` and
``fused_lrdpo_loss``, both backends, against float64 references that materialize the logits."""

import pytest
import torch
from cases import backend_device, leaf, to_device
from reference import (
    assert_close,
    assert_within,
    grad_tolerance,
    ld_weights_loop,
    logit_grad_scales,
    sequence_logprobs,
    weighted_pair_loss64,
)
from test_fused import _pair_case

import lrdpo_fast as lf
from lrdpo_fast.ops import torch_backend

BACKENDS = ["torch", "triton"]


def _weights(kind, labels, cu, seed=0):
    if kind == "ld":
        return lf.ld_token_weights(labels, cu, 0.3)
    if kind == "sampo":
        return lf.sampo_token_weights(labels, cu, seed)
    return None


def _fused(backend, hidden, weight, labels, cu, ref, tw, wpo, **kw):
    dev = backend_device(backend)
    h, w = leaf(*to_device(dev, hidden, weight))
    tw = None if tw is None else tw.to(dev)
    lab, cu_ = to_device(dev, labels, cu)
    loss, m = lf.fused_lrdpo_loss(
        h, w, lab, cu_, ref_logps=ref.to(dev), backend=backend, token_weights=tw, wpo=wpo, **kw
    )
    loss.backward()
    return loss.detach().cpu(), {k: v.cpu() for k, v in m.items()}, h.grad.cpu(), w.grad.cpu()


# ---- the builders ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ld_alpha", [0.0, 0.3, 1.0])
def test_ld_token_weights_match_the_loop(ld_alpha):
    _, _, labels, cu = _pair_case(n_pairs=5, seed=3)
    got = lf.ld_token_weights(labels, cu, ld_alpha)
    assert got.dtype == torch.float32 and got.shape == labels.shape
    assert_close(got, ld_weights_loop(labels, cu, ld_alpha), 1e-7, "ld weights")  # float32(ld_alpha)
    if ld_alpha == 1.0:  # 1 is DPO: every response token counts once
        assert torch.equal(got, (labels != -100).float())


def test_sampo_positions():
    _, _, labels, cu = _pair_case(n_pairs=6, seed=5)
    seq = torch.repeat_interleave(torch.arange(cu.numel() - 1), cu[1:].long() - cu[:-1].long())
    lengths = torch.zeros(cu.numel() - 1, dtype=torch.int64).index_add(0, seq, (labels != -100).long())
    lp = torch.minimum(lengths[0::2], lengths[1::2]).repeat_interleave(2)
    w = lf.sampo_token_weights(labels, cu, 11)
    assert set(w.unique().tolist()) <= {0.0, 1.0} and bool((w[labels == -100] == 0).all())
    kept = torch.zeros(cu.numel() - 1).index_add(0, seq, w)
    assert torch.equal(kept.long(), lp), "exactly l_p positions per response"
    assert torch.equal(lf.sampo_token_weights(labels, cu, 11), w), "the same seed draws the same positions"
    others = [lf.sampo_token_weights(labels, cu, s) for s in (12, 13, 14)]
    assert any(not torch.equal(o, w) for o in others), "another seed (epoch) draws other positions"
    per_pair = lf.sampo_token_weights(labels, cu, [7, 8, 9, 10, 11, 12])
    assert torch.equal(lf.sampo_token_weights(labels, cu, torch.tensor([7, 8, 9, 10, 11, 12])), per_pair)


def test_bad_token_weights_refused():
    hidden, weight, labels, cu = _pair_case()
    ref = -torch.rand(cu.numel() - 1) * 20
    n = labels.numel()
    bad = {  # what is wrong -> weights
        "shape": torch.ones(n + 1),
        "dtype": torch.ones(n, dtype=torch.float64),
        "negative": torch.full((n,), -1.0),
        "non-finite": torch.full((n,), float("nan")),
    }
    for tw in bad.values():
        with pytest.raises(ValueError, match="token_weights"):
            lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_logps=ref, backend="torch", token_weights=tw)
        with pytest.raises(ValueError, match="token_weights"):
            lf.sequence_logprobs(hidden, weight, labels, cu, backend="torch", token_weights=tw)
    with pytest.raises(ValueError, match="token_weights"):
        lf.sequence_logprobs(
            hidden, weight, labels, cu, token_weights=torch.ones(n, dtype=torch.float32, device="meta")
        )
    for a in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="ld_alpha"):
            lf.ld_token_weights(labels, cu, a)
    with pytest.raises(ValueError, match="wpo"):
        lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_logps=ref, wpo=1)


# ---- sequence_logprobs -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_logprobs_token_weights(backend):
    hidden, weight, labels, cu = _pair_case(n_pairs=3, d=13, v=37, seed=1)
    tw = _weights("ld", labels, cu)
    dev = backend_device(backend)
    h, w = leaf(*to_device(dev, hidden, weight))
    got, _ = lf.sequence_logprobs(h, w, *to_device(dev, labels, cu), backend=backend, token_weights=tw.to(dev))
    g = torch.linspace(-1.0, 2.0, got.numel())
    (got * g.to(dev)).sum().backward()
    rh, rw = leaf(hidden.double(), weight.double())
    tok = torch.zeros(cu.numel() - 1, dtype=torch.float64)
    seq = torch.repeat_interleave(torch.arange(cu.numel() - 1), cu[1:].long() - cu[:-1].long())
    ref_tok = (rh @ rw.T).log_softmax(-1).gather(1, labels.clamp(min=0)[:, None]).squeeze(1) * (labels != -100)
    want = tok.index_add(0, seq, ref_tok * tw.double())
    (want * g.double()).sum().backward()
    assert_close(got.detach().cpu(), want.detach(), 1e-5, "weighted logps")
    assert_close(h.grad.cpu(), rh.grad, 1e-5, "dhidden")
    assert_close(w.grad.cpu(), rw.grad, 1e-5, "dweight")
    plain, _ = sequence_logprobs(hidden.double(), weight.double(), labels, cu)
    assert not torch.allclose(want, plain), "the weights change the sums on this case"


# ---- fused_lrdpo_loss --------------------------------------------------------------------------------
CASES = [
    ("ld", False, dict(loss_type="sigmoid", beta=0.1, alpha=0.02)),
    ("sampo", False, dict(loss_type="sigmoid", beta=0.2)),
    ("none", True, dict(loss_type="sigmoid", beta=0.1)),
    ("ld", True, dict(loss_type="hinge", beta=0.2, alpha=0.01)),
    ("sampo", True, dict(loss_type="sigmoid", beta=0.3, label_smoothing=0.1)),
    ("none", True, dict(loss_type="ipo", beta=0.5)),
    ("ld", True, dict(loss_type="simpo", beta=2.0, gamma=0.5)),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,wpo,kw", CASES, ids=[f"{k}-wpo={w}-{kw['loss_type']}" for k, w, kw in CASES])
def test_fused_matches_float64(backend, kind, wpo, kw):
    # odd shapes: 7 pairs, d=13, V=37 (the Triton interpreter keeps them small)
    hidden, weight, labels, cu = _pair_case(n_pairs=7, d=13, v=37, seed=2)
    hidden = hidden * 3.0  # peaked softmax: WPO's weights far from 1
    ref = -torch.rand(cu.numel() - 1) * 20
    tw = _weights(kind, labels, cu)
    loss, m, dh, dw = _fused(backend, hidden, weight, labels, cu, ref, tw, wpo, **kw)
    want, w_dh, w_dw, w_logps, w_pw, _ = weighted_pair_loss64(hidden, weight, labels, cu, ref, kw, tw, wpo)
    assert_close(loss, want, 1e-5, "loss")
    assert_close(dh, w_dh, 1e-5, "dhidden")
    assert_close(dw, w_dw, 1e-5, "dweight")
    assert_close(m["logps/sequences"], w_logps, 1e-5, "seq logps")
    if wpo:
        assert_close(m["wpo/weight"], w_pw, 1e-5, "wpo weight")
        assert abs(float(w_pw) - 1.0) > 1e-2, "WPO's weights must matter on this case"
    else:
        assert "wpo/weight" not in m


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_bf16_ld_wpo(backend):
    dtype = torch.bfloat16
    hidden, weight, labels, cu = _pair_case(n_pairs=3, d=13, v=37, dtype=dtype, seed=4)
    ref = -torch.rand(cu.numel() - 1) * 20
    tw, kw = _weights("ld", labels, cu), dict(beta=0.5, alpha=0.02)
    loss, m, dh, dw = _fused(backend, hidden, weight, labels, cu, ref, tw, True, **kw)
    want, w_dh, w_dw, w_logps, w_pw, g_seq = weighted_pair_loss64(hidden, weight, labels, cu, ref, kw, tw, True)
    assert_close(loss, want, 1e-5, "loss")
    assert_close(m["logps/sequences"], w_logps, 1e-5, "seq logps")
    assert_close(m["wpo/weight"], w_pw, 1e-5, "wpo weight")
    # the 16-bit tolerance is relative to the sum of |terms| of each gradient element, with the
    # per-token upstream gradient d loss / d seq logp times the token's weight
    seq = torch.repeat_interleave(torch.arange(cu.numel() - 1), cu[1:].long() - cu[:-1].long())
    s_h, s_w = logit_grad_scales(hidden.double(), weight.double(), labels, g_seq[seq] * tw.double())[:2]
    assert_within(dh, w_dh, grad_tolerance(s_h, dtype, weight.shape[0]), "dhidden")
    assert_within(dw, w_dw, grad_tolerance(s_w, dtype, labels.numel()), "dweight")


def test_torch_two_pass_and_cuda_form(monkeypatch):
    # a pair larger than the chunk (forward, then recompute) and the GEMM + row-pass form (the
    # CUDA form, interpreted) give the same weighted loss and WPO weights
    hidden, weight, labels, cu = _pair_case(n_pairs=4, d=13, v=37, seed=6)
    hidden = hidden * 3.0
    ref = -torch.rand(cu.numel() - 1) * 20
    tw, kw = _weights("sampo", labels, cu), dict(beta=0.2, alpha=0.01)
    want, w_dh, w_dw, _, w_pw, _ = weighted_pair_loss64(hidden, weight, labels, cu, ref, kw, tw, True)
    for setting in ("CHUNK_ELEMENTS", "FUSED_PASS"):
        with monkeypatch.context() as mp:
            mp.setattr(torch_backend, setting, 3 * weight.shape[0] if setting == "CHUNK_ELEMENTS" else "1")
            loss, m, dh, dw = _fused("torch", hidden, weight, labels, cu, ref, tw, True, **kw)
        assert_close(loss, want, 1e-5, f"loss ({setting})")
        assert_close(dh, w_dh, 1e-5, f"dhidden ({setting})")
        assert_close(dw, w_dw, 1e-5, f"dweight ({setting})")
        assert_close(m["wpo/weight"], w_pw, 1e-5, f"wpo weight ({setting})")


@pytest.mark.parametrize("backend", BACKENDS)
def test_reference_hidden_uses_the_same_weights_and_no_grad(backend):
    hidden, weight, labels, cu = _pair_case(n_pairs=3, d=13, v=37, seed=7)
    ref_hidden = hidden + 0.1 * torch.randn_like(hidden)
    tw = _weights("ld", labels, cu)
    dev = backend_device(backend)
    h, w, rh, lab, cu_, tw_ = to_device(dev, hidden, weight, ref_hidden, labels, cu, tw)
    a, _ = lf.fused_lrdpo_loss(h, w, lab, cu_, ref_hidden=rh, backend=backend, token_weights=tw_, wpo=True)
    ref, _ = lf.sequence_logprobs(rh, w, lab, cu_, backend=backend, token_weights=tw_)
    b, _ = lf.fused_lrdpo_loss(h, w, lab, cu_, ref_logps=ref, backend=backend, token_weights=tw_, wpo=True)
    assert_close(a.cpu(), b.cpu(), 1e-6, "ref_hidden with the weights")
    with torch.no_grad():  # forward only (no gradient sweep): the same loss and weights
        c, m = lf.fused_lrdpo_loss(h, w, lab, cu_, ref_logps=ref, backend=backend, token_weights=tw_, wpo=True)
    assert_close(c.cpu(), b.cpu(), 1e-6, "forward only")
    assert float(m["wpo/weight"]) > 0


def test_trainer_sampo_same_positions_for_policy_and_reference(tmp_path):
    # step 1: the live reference is the policy; SamPO's positions, drawn once per micro-batch and
    # used by both, leave every log-ratio at 0 (loss ln 2); a new epoch draws new positions
    import math

    from helpers import random_records, tiny_model, tiny_tokenizer

    from lrdpo_fast.data.packing import pack_pairs
    from lrdpo_fast.train import micro_batches
    from lrdpo_fast.train.config import TrainConfig
    from lrdpo_fast.train.trainer import Trainer

    tok = tiny_tokenizer()
    cfg = TrainConfig(
        sampo=True, live_reference=True, max_steps=1, dtype="fp32", device="cpu", progress=False, plot=False,
        save_final=False, pairs_per_step=4, output_dir=str(tmp_path),
    )  # fmt: skip
    trainer = Trainer(tiny_model("llama", seed=0), tok, random_records(4, seed=3, max_words=8), cfg)
    (row,) = trainer.train()
    assert row["loss"] == pytest.approx(math.log(2), abs=1e-6) and abs(row["rewards/margins"]) < 1e-6
    batch = pack_pairs(trainer.examples)
    w0, w1 = (micro_batches.token_weights(batch, [0, 1, 2, 3], cfg, e) for e in (0, 1))
    assert torch.equal(w0, micro_batches.token_weights(batch, [0, 1, 2, 3], cfg, 0))
    assert not torch.equal(w0, w1), "another epoch draws other positions"
