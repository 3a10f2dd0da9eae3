"""`python -m bench.gpu_probe --out DIR [--N 16384 --d 4096 --V 128256 --dtype bf16]`: what only a GPU
can say about lrdpo-fast's own choices, at the goal shape, written to DIR/probe.json:

- ``backends``: fused_lrdpo_loss forward + backward with backend="triton" and "torch" (median of
  CUDA-event timings, peak memory), 6NdV TFLOP/s, and their agreement (loss, dH, dW);
- ``dispatch``: what backend="auto" measured and chose for the bucket (``backend_report()``);
- ``autotune``: the config each autotuned kernel picked per key, and every config's timing;
- ``grad_skip``: GRAD_SKIP_THRESHOLD = 2**-12 against exact (0.0) on both paths: time and the
  largest gradient change relative to the gradient's max, on the benchmark's random hidden states
  (flat softmax) and on "peaked" ones (hidden = head row of the label x 14 + noise, a crude stand-in
  for a trained model). Neither is real hidden states: this says whether the filter pays at all
  and what it costs in accuracy, not whether it is safe for training; the default stays exact.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from .inputs import ALPHA, BETA, make_problem


def _time(fn, repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def _step(p, backend, hidden=None):
    import lrdpo_fast as lf

    h = (p.hidden if hidden is None else hidden).detach().requires_grad_(True)
    w = p.weight.detach().requires_grad_(True)

    def run():
        h.grad = w.grad = None
        loss, _ = lf.fused_lrdpo_loss(
            h, w, p.labels, p.cu_seqlens, ref_logps=p.ref_logps, beta=BETA, alpha=ALPHA, backend=backend
        )
        loss.backward()
        return loss.detach()

    return run, h, w


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


def probe_backends(p, flops: float) -> dict:
    out = {}
    grads = {}
    for backend in ("triton", "torch"):
        try:
            run, h, w = _step(p, backend)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            run()  # compiles / autotunes
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t = _time(run)
            peak = torch.cuda.max_memory_allocated() - base
            loss = run()
            grads[backend] = (loss, h.grad.clone(), w.grad.clone())
            out[backend] = {
                "status": "ok",
                "median_ms": t * 1e3,
                "first_call_s": first,
                "tflops_6ndv": flops / t / 1e12,
                "peak_extra_gib": peak / 2**30,
            }
        except Exception as exc:  # report, keep going
            out[backend] = {"status": f"error: {type(exc).__name__}: {exc}"[:500]}
        torch.cuda.empty_cache()
    if len(grads) == 2:
        (l1, h1, w1), (l2, h2, w2) = grads["triton"], grads["torch"]
        out["agreement"] = {
            "loss_abs": float((l1 - l2).abs()),
            "dh_rel_to_max": _rel(h1, h2),
            "dw_rel_to_max": _rel(w1, w2),
        }
    return out


def probe_dispatch(p) -> dict:
    import lrdpo_fast as lf
    from lrdpo_fast.ops import dispatch

    dispatch.clear()
    h = p.hidden.detach().requires_grad_(True)
    w = p.weight.detach().requires_grad_(True)
    t0 = time.perf_counter()
    loss, _ = lf.fused_lrdpo_loss(h, w, p.labels, p.cu_seqlens, ref_logps=p.ref_logps, beta=BETA, alpha=ALPHA)
    loss.backward()
    torch.cuda.synchronize()
    return {
        "first_call_s": time.perf_counter() - t0,
        "report": dispatch.backend_report(),
        "cache_file": str(dispatch.cache_path()),
    }


def probe_autotune() -> dict:
    from lrdpo_fast.kernels.logprob_bwd import logprob_bwd_kernel
    from lrdpo_fast.kernels.logprob_fwd import logprob_fwd_kernel

    def cfg(c):
        kw = c.kwargs
        return f"{kw['BLOCK_N']}x{kw['BLOCK_V']}x{kw['BLOCK_D']}/w{c.num_warps}/s{c.num_stages}"

    table = {}
    for name, k in (("fwd", logprob_fwd_kernel), ("bwd", logprob_bwd_kernel)):
        timings = getattr(k, "configs_timings", None) or {}
        table[name] = {
            "chosen": {str(key): cfg(c) for key, c in k.cache.items()},
            "timings_ms": {
                cfg(c): [round(float(x), 4) for x in (t if isinstance(t, (list, tuple)) else [t])]
                for c, t in timings.items()
            },
            "bench_time_s": getattr(k, "bench_time", None),
        }
    return table


def probe_grad_skip(p, threshold: float = 2.0**-12) -> dict:
    from lrdpo_fast.ops import torch_backend, triton_backend

    # label logit ~14 against N(0, 1) for the rest (head rows have norm ~1): p(label) ~ 0.5 at V=128k
    peaked = (p.weight[p.labels.clamp(min=0)].float() * 14.0 + torch.randn(p.hidden.shape, device=p.hidden.device)).to(
        p.hidden.dtype
    )
    res = {"threshold": threshold}
    for label, hidden in (("random", None), ("peaked", peaked)):
        for backend, mod in (("triton", triton_backend), ("torch", torch_backend)):
            row = {}
            try:
                for thr in (0.0, threshold):
                    mod.GRAD_SKIP_THRESHOLD = thr
                    run, h, w = _step(p, backend, hidden)
                    t = _time(run, repeats=3)
                    run()
                    row[thr] = (t, h.grad.clone(), w.grad.clone())
                (t0, h0, w0), (t1, h1, w1) = row[0.0], row[threshold]
                res[f"{label}/{backend}"] = {
                    "exact_ms": t0 * 1e3,
                    "filtered_ms": t1 * 1e3,
                    "speedup": t0 / t1,
                    "dh_rel_to_max": _rel(h1, h0),
                    "dw_rel_to_max": _rel(w1, w0),
                }
            except Exception as exc:
                res[f"{label}/{backend}"] = {"status": f"error: {type(exc).__name__}: {exc}"[:500]}
            finally:
                mod.GRAD_SKIP_THRESHOLD = 0.0
            del row
            torch.cuda.empty_cache()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_probe")
    ap.add_argument("--out", required=True)
    ap.add_argument("--N", type=int, default=16384)
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--V", type=int, default=128256)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--skip", default="", help="comma list of backends,dispatch,autotune,grad_skip to leave out")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_probe needs CUDA", file=sys.stderr)
        return 2
    skip = set(filter(None, args.skip.split(",")))
    p = make_problem(args.N, args.d, args.V, args.dtype, device="cuda", seed=0)
    flops = 6.0 * args.N * args.d * args.V
    res = {"shape": {"N": args.N, "d": args.d, "V": args.V, "dtype": args.dtype, "scored_tokens": p.scored_tokens}}
    for name, fn in (
        ("backends", lambda: probe_backends(p, flops)),
        ("dispatch", lambda: probe_dispatch(p)),
        ("autotune", probe_autotune),
        ("grad_skip", lambda: probe_grad_skip(p)),
    ):
        if name in skip:
            continue
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as exc:
            res[name] = {"status": f"error: {type(exc).__name__}: {exc}"[:800]}
        print(f"gpu_probe {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
