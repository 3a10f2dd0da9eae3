"""Peak resident memory of the torch backend stays O(chunk), never O(tokens x vocab)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ lives at the repo root, not in the package

from bench.harness import run_isolated  # noqa: E402

N, H, V = 4096, 512, 32000
LIMIT_MB = 200  # the naive path needs about 1.5 GB at this shape


def growth_mb(kind: str) -> float:
    """One call in a fresh process through the bench's subprocess harness (tests/memory_probe.py)."""
    out = run_isolated("tests/memory_probe.py:probe", {"kind": kind, "N": N, "H": H, "V": V}, timeout=600)
    assert out.get("status") == "ok", out
    return out["growth_mb"]


@pytest.mark.parametrize("kind", ["sequence", "fused"])
def test_torch_backend_peak_memory(kind):
    mb = growth_mb(kind)
    print(f"{kind}: +{mb:.0f} MB")
    assert mb <= LIMIT_MB, f"{kind} forward+backward grew resident memory by {mb:.0f} MB (limit {LIMIT_MB})"


def test_probe_sees_the_naive_path():
    """Positive control: the same probe at the same shape measures the materialized-logits path
    ([N, V] logits, their softmax and gradient: about 1.5 GB) far above the limit, so the limit
    above bounds what the measurement can see, not a blind spot of it."""
    mb = growth_mb("naive")
    print(f"naive: +{mb:.0f} MB")
    assert mb > 4 * LIMIT_MB, f"the probe measured only {mb:.0f} MB for the naive path (expected > {4 * LIMIT_MB})"
