"""Input builders for kernel tests: packed batches with odd shapes and ignored prompts."""

from __future__ import annotations

import torch

CUDA = torch.cuda.is_available()


def backend_device(backend: str) -> torch.device:
    """Where a test runs ``backend``: the Triton kernels compiled on CUDA when there is a GPU (the
    interpreter is off then, see conftest.py), else on CPU tensors through the interpreter."""
    return torch.device("cuda" if backend == "triton" and CUDA else "cpu")


def to_device(device, *tensors):
    """The tensors on ``device`` (None passes through)."""
    return [None if t is None else t.to(device) for t in tensors]


def make_case(
    n, d, v, *, dtype=torch.float32, scale=1.0, ignore_frac=0.3, n_seqs=None, seed=0, bias=False, device="cpu"
):
    """hidden [n, d], weight [v, d], labels int64 [n] (some -100), cu_seqlens int32, bias [v]|None.

    ``scale`` multiplies the logits' typical magnitude (1e4 tests the large-logit path). Built on
    the CPU from a seeded generator (the same values on every machine), then moved to ``device``.
    """
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64)
    weight = torch.randn(v, d, generator=g, dtype=torch.float64) / max(d, 1) ** 0.5
    hidden = (hidden * scale).to(dtype)
    weight = weight.to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < ignore_frac] = -100
    if n_seqs is None:
        n_seqs = max(1, n // 5)
    cuts = sorted(torch.randint(0, n + 1, (n_seqs - 1,), generator=g).tolist())
    cu = torch.tensor([0, *cuts, n], dtype=torch.int32)
    b = (torch.randn(v, generator=g, dtype=torch.float64)).to(dtype) if bias else None
    return (*to_device(device, hidden, weight, labels, cu), None if b is None else b.to(device))


def leaf(*tensors):
    """Detached copies that require grad (None passes through)."""
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in tensors]
