"""Launch to the first sample of ``lf.iterate`` (issue 27's "time to the first sample").

``python -m bench.bench_start [--repeats 3] [--threads 2]``

bench_loop's lrdpo-fast side (same start policy, prompts and run config: ``bench_loop.iterate_config``),
each repeat in a fresh interpreter with bench_loop's engine environment, stopped where iteration 0's
sample phase would start. Per run: the wall time from the launch of the interpreter, the process's CPU
time (user + system, every thread) and the garbage collector's share, and the 1-minute load; then the
medians. The CPU time is the steadier number on shared cores. Prints only; writes no results file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARK = "BENCH_START "


def child(spec: dict) -> None:
    """In a fresh process: ``lf.iterate`` up to the start of iteration 0's sample phase, then print
    the measurements (one ``MARK`` line) and exit without running it."""
    import gc
    import resource

    collected = {"s": 0.0, "n": 0, "t0": 0.0}

    def on_collection(phase: str, info: dict) -> None:
        if phase == "start":
            collected["t0"] = time.perf_counter()
        else:
            collected["s"] += time.perf_counter() - collected["t0"]
            collected["n"] += 1

    gc.callbacks.append(on_collection)
    import torch

    torch.set_num_threads(spec["threads"])
    import lrdpo_fast as lf
    from bench.bench_loop import iterate_config
    from lrdpo_fast.loop import phases

    def stop(state, i) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out = {
            "wall_s": time.time() - spec["launch"],
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "gc_s": collected["s"],
            "collections": collected["n"],
            "enforce_eager": state.sampler.enforce_eager,
        }
        print(MARK + json.dumps(out), flush=True)
        os._exit(0)  # the run stops here: no sampling, no shutdown

    phases.PHASE_FUNCS["sample"] = stop
    lf.iterate(iterate_config(spec), progress=False)
    raise RuntimeError("the sample phase of iteration 0 was not reached")


def run_once(spec: dict, timeout: float = 600) -> dict:
    """One fresh interpreter through ``child``; its measurements and the load at its launch."""
    from bench.bench_loop import ENGINE_ENV
    from bench.harness import REPO, child_env

    load = os.getloadavg()[0]
    spec = {**spec, "launch": time.time()}
    code = "import json, sys; from bench.bench_start import child; child(json.loads(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(spec)],
        cwd=REPO,
        env=child_env(ENGINE_ENV),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return {**json.loads(line[len(MARK) :]), "load": load}
    raise RuntimeError(f"bench_start child failed (rc {proc.returncode}): {proc.stderr[-2000:]}")


def measure(repeats: int = 3, threads: int = 2, log=print) -> dict:
    """``repeats`` runs on one start policy (built once, as bench_loop builds it); the runs and medians."""
    from bench.bench_loop import DEFAULTS, _write_jsonl, make_prompts
    from bench.train_data import build_model, build_tokenizer

    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    cfg = dict(DEFAULTS, threads=threads)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        tmp = Path(tmp)
        build_model(seed=cfg["seed"]).save_pretrained(tmp / "policy_0")
        build_tokenizer().save_pretrained(tmp / "policy_0")
        _write_jsonl(tmp / "prompts.jsonl", [{"prompt": p} for p in make_prompts(cfg)])
        spec = {
            **{k: cfg[k] for k in ("n", "max_new_tokens", "max_model_len", "seed", "threads", "beta")},
            **{k: cfg[k] for k in ("learning_rate", "pairs_per_step", "alpha")},
            "policy": str(tmp / "policy_0"),
            "prompts": str(tmp / "prompts.jsonl"),
            "prompts_n": cfg["prompts"],
            "iterations": 3,
        }
        for k in range(repeats):
            r = run_once({**spec, "run_dir": str(tmp / f"run-{k}")})
            runs.append(r)
            log(
                f"  run {k}: first sample {r['wall_s']:.2f} s from launch, CPU {r['cpu_s']:.2f} s, "
                f"GC {r['gc_s']:.2f} s ({r['collections']} collections), load {r['load']:.2f}"
            )
    med = {key: statistics.median(r[key] for r in runs) for key in ("wall_s", "cpu_s", "gc_s", "load")}
    return {"runs": runs, "median": med}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_start", description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    res = measure(args.repeats, args.threads)
    m = res["median"]
    print(
        f"bench_start: median of {args.repeats}: first sample {m['wall_s']:.2f} s from launch, "
        f"CPU {m['cpu_s']:.2f} s, GC {m['gc_s']:.2f} s (load {m['load']:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
