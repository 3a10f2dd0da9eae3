"""One function per library: the DPO objective from hidden [N, d] and LM head [V, d], forward and
backward, with precomputed reference log-probs wherever the library's API accepts them.

Each ``prepare_*`` takes a ``Problem`` and returns a ``Contender`` whose ``step()`` runs one
forward+backward (gradients w.r.t. hidden and weight land in the leaves' ``.grad``). A library
that is missing, or that cannot run here, raises ``Unavailable(reason)``: the table shows
"n/a: reason" instead of crashing. Heavy optional imports stay inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .inputs import ALPHA, BETA, IGNORE_INDEX, Problem, dpo_from_sequence_logps, padded_pairs, unpad_pairs


class Unavailable(RuntimeError):
    """This contender cannot run in this environment; the message says why."""


@dataclass
class Contender:
    name: str
    loss_fn: Callable[[], torch.Tensor]  # forward only: the scalar loss
    leaves: list[torch.Tensor]  # [hidden-like leaf, weight leaf]
    notes: list[str] = field(default_factory=list)
    packed_grad_hidden: Callable[[torch.Tensor], torch.Tensor] = lambda g: g  # leaf grad -> [N, d]
    check_fn: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    def zero_grad(self) -> None:
        for t in self.leaves:
            t.grad = None

    def step(self) -> torch.Tensor:
        """One forward + backward; returns the detached loss."""
        self.zero_grad()
        loss = self.loss_fn()
        loss.backward()
        return loss.detach()

    def check(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, dH [N, d] packed, dW [V, d]) of the benchmark problem, for the correctness check."""
        if self.check_fn is not None:
            return self.check_fn()
        loss = self.step()
        return loss, self.packed_grad_hidden(self.leaves[0].grad), self.leaves[1].grad


def _leaves(p: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    return p.hidden.detach().requires_grad_(True), p.weight.detach().requires_grad_(True)


def _segment_sum(tok: torch.Tensor, p: Problem) -> torch.Tensor:
    return tok.new_zeros(p.n_seqs).index_add(0, p.seq_ids, tok)


def prepare_naive(p: Problem, device: str) -> Contender:
    """Plain PyTorch: materialized [N, V] logits, float32 log_softmax, gather, per-sequence sums."""
    h, w = _leaves(p)
    mask = (p.labels != IGNORE_INDEX).float()
    safe = p.labels.clamp(min=0)[:, None]

    def loss_fn():
        logits = h @ w.t()
        logp = torch.log_softmax(logits.float(), dim=-1)
        tok = logp.gather(1, safe).squeeze(1) * mask
        return dpo_from_sequence_logps(_segment_sum(tok, p), p)

    return Contender("naive", loss_fn, [h, w], ["materializes [N, V] logits and log-softmax"])


REFERENCE64_MAX_LOGITS = 2**26  # float64 [N, V] logits of at most 512 MiB: the small profiles only


def tests_reference():
    """tests/reference.py, the float64 references every kernel test checks against (Liger-style: the
    benchmark takes its reference from the tests instead of a copy of its own)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tests" / "reference.py"
    if not path.is_file():
        raise Unavailable(f"{path} not found (a source checkout is needed)")
    spec = importlib.util.spec_from_file_location("lrdpo_tests_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_reference64(p: Problem, device: str) -> Contender:
    """The tests' float64 reference (tests/reference.py): materialized float64 logits, log_softmax,
    per-sequence sums, the pair loss written out. The correctness reference where it fits in memory."""
    if p.n_tokens * p.weight.shape[0] > REFERENCE64_MAX_LOGITS:
        raise Unavailable(
            f"float64 [N, V] logits of N*V = {p.n_tokens * p.weight.shape[0]} > "
            f"{REFERENCE64_MAX_LOGITS}: small sizes only"
        )
    ref = tests_reference()
    h = p.hidden.detach().double().requires_grad_(True)
    w = p.weight.detach().double().requires_grad_(True)
    ref_logps = p.ref_logps.double()

    def loss_fn():
        logps, _ = ref.sequence_logprobs(h, w, p.labels, p.cu_seqlens, ignore_index=IGNORE_INDEX)
        return ref.pair_losses64(
            logps[0::2],
            logps[1::2],
            ref_logps[0::2],
            ref_logps[1::2],
            p.lengths[0::2],
            p.lengths[1::2],
            beta=BETA,
            alpha=ALPHA,
        ).mean()

    return Contender("reference64", loss_fn, [h, w], ["float64 reference from tests/reference.py"])


def prepare_torch_lce(p: Problem, device: str) -> Contender:
    """torch.nn.functional.linear_cross_entropy, chunked (LinearCrossEntropyOptions), reduction='none'."""
    if not hasattr(F, "linear_cross_entropy") or not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        raise Unavailable(f"torch {torch.__version__} has no F.linear_cross_entropy with LinearCrossEntropyOptions")
    h, w = _leaves(p)
    opts = torch.nn.LinearCrossEntropyOptions()

    def loss_fn():
        nll = F.linear_cross_entropy(h, w, p.labels, reduction="none", ignore_index=IGNORE_INDEX, options=opts)
        return dpo_from_sequence_logps(_segment_sum(-nll.float(), p), p)

    return Contender("torch linear_cross_entropy", loss_fn, [h, w], ["chunked options=LinearCrossEntropyOptions()"])


def _prepare_cce(p: Problem, device: str, impl: str) -> Contender:
    try:
        from cut_cross_entropy import linear_cross_entropy
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        raise Unavailable(f"cut-cross-entropy not importable ({type(e).__name__}: {e})") from None
    if impl == "cce" and not device.startswith("cuda"):
        try:  # a tiny probe: record the library's own error, not an assumption
            x = torch.randn(8, 4, requires_grad=True)
            linear_cross_entropy(x, torch.randn(16, 4), torch.zeros(8, dtype=torch.long), reduction="none", impl=impl)
        except Exception as e:  # noqa: BLE001
            msg = (str(e).strip().splitlines() or [""])[0][:120]
            raise Unavailable(
                f"Triton kernels need a GPU ({type(e).__name__}: {msg}); see impl=torch_compile"
            ) from None
    h, w = _leaves(p)

    def loss_fn():
        nll = linear_cross_entropy(h, w, p.labels, ignore_index=IGNORE_INDEX, reduction="none", impl=impl)
        return dpo_from_sequence_logps(_segment_sum(-nll.float(), p), p)

    notes = (
        ["impl=cce, filter_eps='high' (skips tiny-gradient blocks)"]
        if impl == "cce"
        else ["impl=torch_compile: compiled logits + cross_entropy over scored rows"]
    )
    return Contender(f"cut-cross-entropy ({impl})", loss_fn, [h, w], notes)


def prepare_cce(p: Problem, device: str) -> Contender:
    return _prepare_cce(p, device, "cce")


def prepare_cce_compile(p: Problem, device: str) -> Contender:
    return _prepare_cce(p, device, "torch_compile")


def prepare_liger(p: Problem, device: str) -> Contender:
    """liger_kernel.chunked_loss.LigerFusedLinearDPOLoss on Liger's padded [2P, T, d] layout.

    Its API takes no precomputed reference log-probs, only a reference model's hidden states (an
    extra forward), so the timed run uses use_ref_model=False (reference = 0: identical FLOPs to
    the other contenders, a different loss value); the correctness check runs it with ref_input =
    the reference hidden states, which reproduces the precomputed reference log-probs exactly.
    """
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
    except Exception as e:  # noqa: BLE001
        raise Unavailable(f"liger-kernel not importable ({type(e).__name__}: {e})") from None
    hp = padded_pairs(p, p.hidden.detach(), 0.0).requires_grad_(True)
    w = p.weight.detach().requires_grad_(True)
    tp = padded_pairs(p, p.labels, IGNORE_INDEX)
    kw = dict(
        ignore_index=IGNORE_INDEX,
        beta=BETA,
        compute_nll_loss=False,
        average_log_prob=False,
        chunk_size=1,
        loss_type="sigmoid",
    )
    timed = LigerFusedLinearDPOLoss(use_ref_model=False, **kw)
    padded_tokens = hp.shape[0] * hp.shape[1]
    notes = [
        f"padded layout {padded_tokens} token rows for {p.n_tokens} tokens",
        "timed with use_ref_model=False (API takes no precomputed ref logps)",
    ]
    if ALPHA != 0:
        notes.append("no length term (alpha ignored)")

    def loss_fn():
        return timed(w, hp, tp)[0]

    def check_fn():
        ref = LigerFusedLinearDPOLoss(use_ref_model=True, **kw)
        ref_in = padded_pairs(p, p.ref_hidden, 0.0)
        hp.grad = w.grad = None
        loss = ref(w, hp, tp, ref_input=ref_in, ref_weight=p.weight)[0]
        loss.backward()
        return loss.detach(), unpad_pairs(p, hp.grad), w.grad

    return Contender(
        "liger-kernel LigerFusedLinearDPOLoss",
        loss_fn,
        [hp, w],
        notes,
        packed_grad_hidden=lambda g: unpad_pairs(p, g),
        check_fn=check_fn,
    )


def prepare_liger_pairs(p: Problem, device: str) -> Contender:
    """LigerFusedLinearDPOLoss called once per pair on [2, T_pair, d]: no padding across pairs.

    The packed hidden states are the leaf; each call gathers its pair (a differentiable copy), so
    the padding waste of the batched layout disappears at the price of one call per pair.
    """
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss
    except Exception as e:  # noqa: BLE001
        raise Unavailable(f"liger-kernel not importable ({type(e).__name__}: {e})") from None
    h, w = _leaves(p)
    kw = dict(
        ignore_index=IGNORE_INDEX,
        beta=BETA,
        compute_nll_loss=False,
        average_log_prob=False,
        chunk_size=1,
        loss_type="sigmoid",
    )
    cu = p.cu_seqlens.tolist()
    pairs = []
    for i in range(p.n_pairs):
        (c0, c1), (r0, r1) = (cu[2 * i], cu[2 * i + 1]), (cu[2 * i + 1], cu[2 * i + 2])
        t = max(c1 - c0, r1 - r0)
        idx = torch.full((2, t), -1, dtype=torch.long)
        idx[0, : c1 - c0] = torch.arange(c0, c1)
        idx[1, : r1 - r0] = torch.arange(r0, r1)
        valid = (idx >= 0).to(p.hidden.device)
        idx = idx.clamp(min=0).to(p.hidden.device)
        lab = torch.where(valid, p.labels[idx], torch.full_like(idx, IGNORE_INDEX))
        pairs.append((idx, valid, lab))

    def run(fn, hidden_src, ref_src=None):
        total = 0.0
        for idx, valid, lab in pairs:
            x = hidden_src[idx] * valid[..., None].to(hidden_src.dtype)
            extra = (
                {}
                if ref_src is None
                else dict(ref_input=ref_src[idx] * valid[..., None].to(ref_src.dtype), ref_weight=p.weight)
            )
            total = total + fn(w, x, lab, **extra)[0]
        return total / p.n_pairs

    timed = LigerFusedLinearDPOLoss(use_ref_model=False, **kw)
    pad = sum(2 * idx.shape[1] for idx, _, _ in pairs)
    notes = [
        f"{p.n_pairs} calls, {pad} token rows for {p.n_tokens} tokens",
        "timed with use_ref_model=False (API takes no precomputed ref logps)",
    ]

    def check_fn():
        ref = LigerFusedLinearDPOLoss(use_ref_model=True, **kw)
        h.grad = w.grad = None
        loss = run(ref, h, p.ref_hidden)
        loss.backward()
        return loss.detach(), h.grad, w.grad

    return Contender("liger-kernel per pair", lambda: run(timed, h), [h, w], notes, check_fn=check_fn)


def prepare_lrdpo_fast(p: Problem, device: str) -> Contender:
    """lrdpo_fast.fused_lrdpo_loss (backend auto: torch chunked on CPU, Triton on CUDA)."""
    import lrdpo_fast as lf

    h, w = _leaves(p)

    def loss_fn():
        loss, _ = lf.fused_lrdpo_loss(h, w, p.labels, p.cu_seqlens, ref_logps=p.ref_logps, beta=BETA, alpha=ALPHA)
        return loss

    note = (
        "backend=auto (the faster, measured on the first call)" if device.startswith("cuda") else "backend=auto (torch)"
    )
    return Contender("lrdpo-fast fused_lrdpo_loss", loss_fn, [h, w], [note])


def _lrdpo_fast_forced(backend: str):
    def prepare(p: Problem, device: str) -> Contender:
        """fused_lrdpo_loss with backend forced (both run on CUDA: auto measures them)."""
        import lrdpo_fast as lf

        h, w = _leaves(p)

        def loss_fn():
            loss, _ = lf.fused_lrdpo_loss(
                h, w, p.labels, p.cu_seqlens, ref_logps=p.ref_logps, beta=BETA, alpha=ALPHA, backend=backend
            )
            return loss

        return Contender(f"lrdpo-fast fused_lrdpo_loss ({backend})", loss_fn, [h, w], [f"backend={backend}"])

    return prepare


def prepare_lrdpo_fast_lean(p: Problem, device: str) -> Contender:
    """fused_lrdpo_loss with 16 MiB torch chunks: pairs larger than a chunk rebuild their logits
    (4 matmuls per token instead of 3) for a lower peak. No effect on CUDA (Triton backend)."""
    from lrdpo_fast.ops import torch_backend

    torch_backend.CHUNK_ELEMENTS = 16 * 2**20 // 4
    c = prepare_lrdpo_fast(p, device)
    return Contender(
        "lrdpo-fast fused_lrdpo_loss (16 MiB chunks)", c.loss_fn, c.leaves, c.notes + ["LRDPO_TORCH_CHUNK_MB=16"]
    )


def prepare_lrdpo_fast_unfused(p: Problem, device: str) -> Contender:
    """lrdpo_fast.sequence_logprobs + lrdpo_loss: the two-call path (logits rebuilt in backward)."""
    import lrdpo_fast as lf

    h, w = _leaves(p)

    def loss_fn():
        seq, lens = lf.sequence_logprobs(h, w, p.labels, p.cu_seqlens)
        ref = p.ref_logps
        loss, _ = lf.lrdpo_loss(
            seq[0::2], seq[1::2], ref[0::2], ref[1::2], lens[0::2], lens[1::2], beta=BETA, alpha=ALPHA
        )
        return loss

    return Contender("lrdpo-fast sequence_logprobs + lrdpo_loss", loss_fn, [h, w], ["unfused: 4 matmuls per token"])


# key -> (prepare function, display name); the order is the table's row order
CONTENDERS: dict[str, Callable[[Problem, str], Contender]] = {
    "lrdpo_fast": prepare_lrdpo_fast,
    "lrdpo_fast_triton": _lrdpo_fast_forced("triton"),
    "lrdpo_fast_torch": _lrdpo_fast_forced("torch"),
    "lrdpo_fast_lean": prepare_lrdpo_fast_lean,
    "lrdpo_fast_unfused": prepare_lrdpo_fast_unfused,
    "naive": prepare_naive,
    "reference64": prepare_reference64,
    "torch_lce": prepare_torch_lce,
    "liger": prepare_liger,
    "liger_pairs": prepare_liger_pairs,
    "cce": prepare_cce,
    "cce_compile": prepare_cce_compile,
}
DISPLAY = {
    "lrdpo_fast": "lrdpo-fast fused_lrdpo_loss",
    "lrdpo_fast_triton": "lrdpo-fast fused_lrdpo_loss (backend=triton)",
    "lrdpo_fast_torch": "lrdpo-fast fused_lrdpo_loss (backend=torch: GEMMs + row pass)",
    "lrdpo_fast_lean": "lrdpo-fast fused_lrdpo_loss (16 MiB chunks)",
    "lrdpo_fast_unfused": "lrdpo-fast sequence_logprobs+lrdpo_loss",
    "naive": "naive PyTorch (materialized logits)",
    "reference64": "float64 reference (tests/reference.py)",
    "torch_lce": "torch F.linear_cross_entropy (chunked)",
    "liger": "liger-kernel LigerFusedLinearDPOLoss (padded batch)",
    "liger_pairs": "liger-kernel LigerFusedLinearDPOLoss (one call per pair)",
    "cce": "cut-cross-entropy (impl=cce)",
    "cce_compile": "cut-cross-entropy (impl=torch_compile)",
}
PEERS = ("naive", "torch_lce", "liger", "liger_pairs", "cce", "cce_compile")
