"""`python -m bench.gpu_check [--budget-min 20]` (what `./dev gpu-check` runs after its installs):
everything a lent GPU should tell us, in one command, within the budget, written under
bench/results/<gpu>/ with the device, versions and commit:

1. the GPU tests (`pytest -m gpu`) and the kernel test files on CUDA (compiled Triton, the chunked
   path's CUDA form, the dispatch) -> tests.log;
2. `bench.gpu_probe` at the goal shape: both backends, what backend="auto" chose, the autotune
   table, the gradient filter on and off -> probe.json;
3. `python -m bench --profile gpu --only kernel` with lrdpo-fast (auto, triton, torch) and the peers
   (Liger, cut-cross-entropy, torch LCE, naive), in two groups -> kernel-1/, kernel-2/, merged
   rows in results.json;
4. gpu_check.json + gpu_check.md: the summary; the short table and the goal line print last.

A lent device machine runs one command for at most 10 minutes: there, run it in two parts,
``./dev gpu-check --part a`` (tests + probe) then ``./dev gpu-check --part b`` (benchmark), each
within 8.5 minutes; with $OUT set the result files are copied there (part-a-*, part-b-*).

Goal (bf16, N=16384, d=4096, V=128256 on an H100): >= 600 TFLOP/s counting 6NdV, faster than
Liger's and cut-cross-entropy's fused losses in the same run, peak memory <= cut-cross-entropy's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .env import REPO, device_slug, metadata_record

GOAL_TFLOPS = 600.0
GOAL_SHAPE = {"N": 16384, "d": 4096, "V": 128256, "dtype": "bf16"}
# two groups, each its own `python -m bench` run (a run writes its results only at its end): the
# goal's contenders first, so a budget cut loses at most the second group
KERNEL_GROUPS = [["lrdpo_fast", "lrdpo_fast_triton", "lrdpo_fast_torch", "cce", "liger"], ["torch_lce", "naive"]]
TEST_FILES = [
    "tests/test_logprobs.py",
    "tests/test_fused.py",
    "tests/test_softcap.py",  # the soft-capped kernel variants, compiled
    "tests/test_row_pass.py",
    "tests/test_dispatch.py",
]


class Clock:
    def __init__(self, budget_s: float):
        self.t0, self.budget = time.monotonic(), budget_s

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)


def _run(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> dict:
    """Run, tee to ``log``; {"rc", "wall_s", "tail"} (rc 124 on timeout)."""
    t0 = time.monotonic()
    print(f"$ {' '.join(cmd)}  (timeout {timeout:.0f} s)", flush=True)
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        try:
            proc = subprocess.run(
                cmd,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=max(10.0, timeout),
                env={**os.environ, **(env or {})},
            )
            out, rc = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout) or ""
            rc = 124
        f.write(out)
    tail = out.strip().splitlines()[-1:] or [""]
    return {"rc": rc, "wall_s": round(time.monotonic() - t0, 1), "tail": tail[0][-300:]}


def _kernel_rows(results: dict) -> list[dict]:
    return [r for r in (results.get("kernel") or {}).get("rows", []) if r.get("status") == "ok"]


def goal_lines(results: dict) -> list[str]:
    """'met' / 'not met' lines for the issue's goal, per lrdpo-fast row (auto first)."""
    rows = {
        r["contender"]: r
        for r in _kernel_rows(results)
        if (r["N"], r["d"], r["V"]) == (GOAL_SHAPE["N"], GOAL_SHAPE["d"], GOAL_SHAPE["V"])
    }
    lines = []
    liger, cce = rows.get("liger"), rows.get("cce")
    for key in ("lrdpo_fast", "lrdpo_fast_triton", "lrdpo_fast_torch"):
        me = rows.get(key)
        if me is None:
            lines.append(f"goal [{key}]: not measured (no ok row at the goal shape)")
            continue
        t = me["timing"]["median_s"]
        tflops = 6.0 * me["N"] * me["d"] * me["V"] / t / 1e12
        checks = [(f"{tflops:.0f} TFLOP/s >= {GOAL_TFLOPS:.0f}", tflops >= GOAL_TFLOPS)]
        for name, peer in (("Liger", liger), ("CCE", cce)):
            if peer is None:
                checks.append((f"vs {name}: peer did not run", False))
            else:
                pt = peer["timing"]["median_s"]
                checks.append((f"{t * 1e3:.0f} ms < {name} {pt * 1e3:.0f} ms", t < pt))
        if cce is None:
            checks.append(("memory vs CCE: peer did not run", False))
        else:
            m, mc = me["memory"]["peak_bytes"], cce["memory"]["peak_bytes"]
            checks.append((f"peak {m / 2**30:.2f} GiB <= CCE {mc / 2**30:.2f} GiB", m <= mc))
        met = all(ok for _, ok in checks)
        lines.append(
            f"goal [{key}]: {'MET' if met else 'NOT MET'} -- "
            + "; ".join(f"{txt} {'ok' if ok else 'NO'}" for txt, ok in checks)
        )
    return lines


def short_table(results: dict, probe: dict, tests: dict) -> str:
    out = ["| contender | ms | 6NdV TFLOP/s | peak GiB | check |", "|---|---:|---:|---:|---|"]
    for r in (results.get("kernel") or {}).get("rows", []):
        if r.get("status") != "ok":
            out.append(f"| {r['contender']} | {str(r.get('status'))[:60]} | | | |")
            continue
        t = r["timing"]["median_s"]
        out.append(
            f"| {r['contender']} | {t * 1e3:.1f} | {6.0 * r['N'] * r['d'] * r['V'] / t / 1e12:.0f} | "
            f"{r['memory']['peak_bytes'] / 2**30:.2f} | {r.get('check', {}).get('verdict', '-')} |"
        )
    lines = ["\n".join(out)]
    rep = (probe.get("dispatch") or {}).get("report") or {}
    for key, dec in rep.items():
        lines.append(f"auto: {key} -> {dec.get('backend')} ({dec.get('source')}, ms {dec.get('times_ms')})")
    for kind, tab in (probe.get("autotune") or {}).items():
        if isinstance(tab, dict):
            lines.append(f"autotune {kind}: {tab.get('chosen')}")
    for key, g in (probe.get("grad_skip") or {}).items():
        if isinstance(g, dict) and "speedup" in g:
            lines.append(
                f"grad_skip {key}: x{g['speedup']:.2f} faster, dH err {g['dh_rel_to_max']:.1e}, "
                f"dW err {g['dw_rel_to_max']:.1e} (rel. to max)"
            )
    for name, t in tests.items():
        lines.append(f"tests {name}: rc={t['rc']} {t['tail']}")
    return "\n".join(lines)


def _run_tests(py: str, out: Path, clock, env: dict) -> dict[str, dict]:
    """The GPU-marked tests, then the kernel test files untuned; {name: {rc, tail}}."""
    tests: dict[str, dict] = {}
    tests["gpu-marker"] = _run(
        [py, "-m", "pytest", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider", "-x", "--timeout=240"]
        if _has_timeout_plugin()
        else [py, "-m", "pytest", "-q", "-m", "gpu", "tests", "-p", "no:cacheprovider"],
        out / "tests.log",
        min(300, clock.left() * 0.3),
        env,
    )
    # one untuned tile here: compiling every config for every small test shape would take
    # minutes; the probe checks the tuned kernels against the torch path at the goal shape
    tests["kernel-files"] = _run(
        [py, "-m", "pytest", "-q", *TEST_FILES, "-p", "no:cacheprovider"],
        out / "tests.log",
        min(240, clock.left() * 0.3),
        {**env, "LRDPO_AUTOTUNE": "0"},
    )
    return tests


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check")
    ap.add_argument(
        "--budget-min",
        type=float,
        default=None,
        help="stop starting steps past this (minutes; default 19, or 8.5 with --part a|b)",
    )
    ap.add_argument("--out", default=None, help="default bench/results/<device>/")
    ap.add_argument("--skip", default="", help="comma list of tests,probe,kernel")
    ap.add_argument(
        "--part",
        choices=["all", "a", "b"],
        default="all",
        help="a = tests + probe, b = kernel benchmark: two runs of < 10 minutes each",
    )
    ap.add_argument(
        "--copy-to",
        default=os.environ.get("OUT"),
        help="also copy the result files here (default $OUT, set on a lent device machine)",
    )
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    if args.budget_min is None:
        args.budget_min = 19.0 if args.part == "all" else 8.5
    clock = Clock(args.budget_min * 60)
    skip = set(filter(None, args.skip.split(",")))
    skip |= {"a": {"kernel"}, "b": {"tests", "probe"}, "all": set()}[args.part]
    meta = metadata_record("cuda")
    out = Path(args.out) if args.out else REPO / "bench" / "results" / device_slug("cuda")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    print(
        f"gpu-check: {meta['device_name']}, torch {meta['versions'].get('torch')}, "
        f"triton {meta['versions'].get('triton')}, commit {meta['git_commit']} -> {out}",
        flush=True,
    )
    py = sys.executable
    env = {"LRDPO_CACHE_DIR": str(out / "dispatch_cache"), "PYTHONUNBUFFERED": "1"}
    tests = _run_tests(py, out, clock, env) if "tests" not in skip else {}
    probe = {}
    if "probe" not in skip and clock.left() > 240:
        r = _run(
            [py, "-m", "bench.gpu_probe", "--out", str(out)],
            out / "probe.log",
            clock.left() - (150 if "kernel" not in skip else 20),
            env,
        )
        probe_file = out / "probe.json"
        probe = json.loads(probe_file.read_text()) if probe_file.is_file() else {"status": r}
    results = {}
    if "kernel" not in skip:
        merged: dict = {}
        for i, group in enumerate(KERNEL_GROUPS):
            if clock.left() < 90:
                print(f"gpu-check: no time left for {group}", flush=True)
                break
            sub = out / f"kernel-{i + 1}"
            _run(
                [
                    py,
                    "-m",
                    "bench",
                    "--profile",
                    "gpu",
                    "--only",
                    "kernel",
                    "--contenders",
                    ",".join(group),
                    "--out",
                    str(sub),
                ],
                out / "bench.log",
                clock.left() - 15,
                env,
            )
            if (sub / "results.json").is_file():
                part = json.loads((sub / "results.json").read_text())
                if not merged:
                    merged = part
                else:
                    merged["kernel"]["rows"] += part.get("kernel", {}).get("rows", [])
        if merged:
            (out / "results.json").write_text(json.dumps(merged, indent=1, default=str))
    res_file = out / "results.json"
    if res_file.is_file():
        results = json.loads(res_file.read_text())
    goals = goal_lines(results)
    summary = {
        "meta": meta,
        "tests": tests,
        "probe": probe,
        "goals": goals,
        "wall_s": round(args.budget_min * 60 - clock.left(), 1),
    }
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
    table = short_table(results, probe, tests)
    (out / "gpu_check.md").write_text(
        f"# gpu-check {meta['device_name']} ({meta['git_commit']}, {meta['date_utc']})\n\n"
        f"{table}\n\n" + "\n".join(goals) + "\n"
    )
    print()
    print(table)
    for line in goals:
        print(line)
    print(f"gpu-check: wrote {out} ({summary['wall_s']} s)")
    if args.copy_to:
        import shutil

        dest = Path(args.copy_to)
        dest.mkdir(parents=True, exist_ok=True)
        names = ["gpu_check.md", "gpu_check.json", "probe.json", "results.json", "tests.log", "bench.log", "probe.log"]
        for name in names:
            if (out / name).is_file():
                shutil.copy(out / name, dest / f"part-{args.part}-{name}")
    return 0 if all(t["rc"] == 0 for t in tests.values()) else 1


def _has_timeout_plugin() -> bool:
    try:
        import pytest_timeout  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
