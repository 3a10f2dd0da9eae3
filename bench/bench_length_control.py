"""Token weights (LD-DPO / SamPO) and WPO against the plain fused path (issue 24): CPU, torch
backend, forward + backward of ``fused_lrdpo_loss``; median of REPS runs per variant, interleaved.

    python -m bench.bench_length_control [N d V]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import lrdpo_fast as lf

REPS = 7


def _case(n: int, d: int, v: int):
    """hidden [n, d], weight [v, d] float32, labels [n] (a quarter ignored), cu_seqlens of 8 pairs."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) / d**0.5
    labels = torch.randint(0, v, (n,), generator=g)
    cu = torch.linspace(0, n, 17).long()
    for s in range(16):
        labels[cu[s] : cu[s] + (cu[s + 1] - cu[s]) // 4] = -100
    return hidden, weight, labels, cu


def main(n: int = 2048, d: int = 256, v: int = 8192) -> None:
    """Print the median seconds of each variant and its ratio to the plain path."""
    hidden, weight, labels, cu = _case(n, d, v)
    ref = -torch.rand(cu.numel() - 1) * 50
    variants = {
        "plain": {},
        "ld_token_weights": dict(token_weights=lf.ld_token_weights(labels, cu, 0.5)),
        "wpo": dict(wpo=True),
        "ld+wpo": dict(token_weights=lf.ld_token_weights(labels, cu, 0.5), wpo=True),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(REPS):
        for name, kw in variants.items():
            h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
            t0 = time.perf_counter()
            loss, _ = lf.fused_lrdpo_loss(h, w, labels, cu, ref_logps=ref, backend="torch", **kw)
            loss.backward()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    print(f"N={n} d={d} V={v} torch backend, CPU threads={torch.get_num_threads()}, median of {REPS}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:18s} {med * 1e3:8.1f} ms  x{med / base:.3f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
