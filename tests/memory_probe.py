"""Run one forward+backward in this fresh process and print the resident-memory growth (MB).

Usage: python memory_probe.py {sequence,fused,naive} N H V
Growth = peak RSS (ru_maxrss) after the call minus peak RSS once inputs exist and a tiny warm-up
call has loaded every code path, so it counts only what the call itself allocated at its peak
(including the returned gradients).
"""
import resource
import sys

import torch

import lrdpo_fast as lf


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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


def main():
    kind, n, h, v = sys.argv[1], *map(int, sys.argv[2:5])
    torch.set_num_threads(2)
    small = make(64, h, 128)
    run(kind, *small)
    del small
    inputs = make(n, h, v)
    base = peak_mb()
    run(kind, *inputs)
    print(f"{peak_mb() - base:.1f}")


if __name__ == "__main__":
    main()
