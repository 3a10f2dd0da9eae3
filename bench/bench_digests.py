"""What the run directory's digests cost (issue 28's benchmark): the size + sha256 of every output a
phase marker vouches for, and of the run's inputs, against the iteration's wall time.

``python -m bench.bench_digests RUN_DIR [RUN_DIR ...]`` reads finished run directories (e.g. the
two of ``lrdpo-fast demo``: out/demo/alpha_0 out/demo/alpha_0.065), recomputes each iteration's
digests (``RunDir.mark_done``'s work: samples, scores, pairs, the saved policy) three times and
keeps the fastest, and sets them against the iteration's phases (the markers' ``wall_s``).
Goal: under 2% of an iteration. Prints a markdown table; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

GOAL_SHARE = 0.02


def iteration_cost(run_dir: Path, i: int) -> dict:
    """Digest seconds (fastest of 3) and bytes of iteration ``i``'s vouched outputs, beside the
    iteration's phase wall seconds."""
    from lrdpo_fast.data.digests import outputs_digest
    from lrdpo_fast.loop.run_dir import PHASE_OUTPUTS, PHASES, RunDir

    run = RunDir(run_dir)
    names = [f"iter_{i}/{name}" for phase in PHASES for name in PHASE_OUTPUTS[phase]]
    best, digests = float("inf"), {}
    for _ in range(3):
        t0 = time.perf_counter()
        digests = outputs_digest(run_dir, names)
        best = min(best, time.perf_counter() - t0)
    wall = sum(run.done_info(i, phase).get("wall_s", 0.0) for phase in PHASES)
    size = sum(d["size"] for d in digests.values())
    return {
        "iteration": i,
        "digest_s": best,
        "bytes": size,
        "iteration_s": wall,
        "share": best / wall if wall else None,
    }


def run_costs(run_dir: Path) -> list[dict]:
    """``iteration_cost`` of every finished iteration of a run directory."""
    from lrdpo_fast.loop.run_dir import RunDir

    run = RunDir(run_dir)
    out = []
    i = 0
    while run.is_done(i, "train"):
        out.append(iteration_cost(run_dir, i))
        i += 1
    return out


def render(costs: dict[str, list[dict]]) -> str:
    """One markdown table: run, iteration, bytes digested, digest seconds, iteration seconds, share."""
    lines = [
        "| run | iteration | outputs (MiB) | digests (ms) | iteration (s) | share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for name, rows in costs.items():
        for r in rows:
            worst = max(worst, r["share"] or 0.0)
            lines.append(
                f"| {name} | {r['iteration']} | {r['bytes'] / 2**20:.2f} | {1000 * r['digest_s']:.1f} | "
                f"{r['iteration_s']:.1f} | {100 * (r['share'] or 0):.2f}% |"
            )
    verdict = "PASS" if worst < GOAL_SHARE else "FAIL"
    lines.append(f"\nlargest share {100 * worst:.2f}% (goal < {100 * GOAL_SHARE:.0f}%): **{verdict}**")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="finished run directories")
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    costs = {Path(r).name: run_costs(Path(r)) for r in args.runs}
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = f"Digest cost per iteration (load average {load:.1f} while measuring)\n\n" + render(costs)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n" + json.dumps(costs) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
