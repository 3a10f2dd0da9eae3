"""One forward+backward in a fresh process (bench/harness.py), and its resident-memory growth (MB).

``probe({"kind": "sequence" | "fused" | "naive", "N": ..., "H": ..., "V": ...})`` is run by
``bench.harness.run_isolated("tests/memory_probe.py:probe", spec)``; by hand:
``python tests/memory_probe.py {sequence,fused,naive} N H V``. Growth = the harness's peak
measurement (``peak_growth``: resident high-water growth after malloc_trim, large blocks unmapped
on free) around the call, once the inputs exist and a tiny warm-up call has loaded every code
path, so it counts only what the call itself allocated at its peak (the returned gradients included).
"""

import sys
from pathlib import Path

import torch

import lrdpo_fast as lf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ lives at the repo root
from bench.harness import peak_growth  # noqa: E402


def make(n, h, v):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    weight = torch.randn(v, h, generator=g).div_(h**0.5).requires_grad_()  # in place: no freed [V, h] temporary
    labels = torch.randint(0, v, (n,), generator=g)
    seq = 256 if n >= 512 else n // 2  # even number of sequences (pairs)
    cu = torch.arange(0, n + 1, seq, dtype=torch.int32)
    labels[(torch.arange(n) % seq) < seq // 4] = -100  # a prompt at the start of every sequence
    return hidden, weight, labels, cu


def run(kind, hidden, weight, labels, cu):
    if kind == "sequence":
        logps, _ = lf.sequence_logprobs(hidden, weight, labels, cu, backend="torch")
        logps.sum().backward()
    elif kind == "fused":
        ref = torch.zeros(cu.numel() - 1)
        loss, _ = lf.fused_lrdpo_loss(hidden, weight, labels, cu, ref_logps=ref, backend="torch")
        loss.backward()
    else:  # naive: materialized logits
        logp = torch.log_softmax(hidden @ weight.T, -1)
        scored = labels != -100
        logp.gather(1, labels.clamp(min=0)[:, None]).squeeze(1).mul(scored).sum().backward()


def probe(spec: dict) -> dict:
    kind, n, h, v = spec["kind"], spec["N"], spec["H"], spec["V"]
    torch.set_num_threads(2)
    small = make(64, h, 128)
    run(kind, *small)
    del small
    inputs = make(n, h, v)
    mem = peak_growth(lambda: run(kind, *inputs), "cpu")
    return {"status": "ok", "growth_mb": mem["peak_bytes"] / 2**20, "method": mem["method"]}


if __name__ == "__main__":
    kind, n, h, v = sys.argv[1], *map(int, sys.argv[2:5])
    print(f"{probe({'kind': kind, 'N': n, 'H': h, 'V': v})['growth_mb']:.1f}")
