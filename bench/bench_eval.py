"""Evaluation cost per iteration of the loop, at the demo's settings (issue 15's benchmark).

``python -m bench.bench_eval [--quick] [--from DIR] [--out DIR]`` (also ``python -m bench --only eval``).

Runs ``lrdpo-fast demo`` (full setting unless ``--quick``) in a process of its own, or reads a
finished demo folder (``--from``), and splits every iteration's wall time, from the run
directories' own clocks (phase markers' ``wall_s`` and each evaluation's ``time_eval_s``), into
sample, score, pairs, train and the held-out evaluation. Reported per run (alpha = 0 and alpha > 0):

- the evaluation's share of the iteration (goal: under 15%);
- what it evaluates: held-out samples against training samples per iteration;
- its cost per generated token against the training-sample phase's (the live sampler reused: no
  engine start, no weight reload; a ratio near 1 means the evaluation costs its generation and
  nothing else).

Writes eval.json and eval.md to bench/results/<device>/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

GOAL_SHARE = 0.15
PHASES = ("sample", "score", "pairs", "train")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def split_run(run_dir: Path) -> list[dict]:
    """Per finished iteration i: wall seconds of each phase and of the evaluation of policy_{i+1},
    generated tokens of both, the evaluation's share and its seconds per token relative to sampling."""
    rows = _jsonl(run_dir / "summary.jsonl")
    out = []
    for i in range(len(rows) - 1):
        wall = {ph: json.loads((run_dir / f"iter_{i}" / "done" / f"{ph}.json").read_text())["wall_s"] for ph in PHASES}
        ev = json.loads((run_dir / "eval" / f"row_{i + 1}.json").read_text())
        samples = _jsonl(run_dir / f"iter_{i}" / "samples.jsonl")
        sampled = sum(len(rec["response_ids"]) for rec in samples)
        eval_tokens = ev["mean_response_length"] * ev["eval_samples"]
        total = sum(wall.values()) + ev["time_eval_s"]
        out.append(
            {
                "iteration": i + 1,
                **{f"{ph}_s": wall[ph] for ph in PHASES},
                "eval_s": ev["time_eval_s"],
                "iteration_s": total,
                "eval_share": ev["time_eval_s"] / total,
                "eval_samples": ev["eval_samples"],
                "train_samples": len(samples),
                "eval_s_per_token_vs_sampling": (ev["time_eval_s"] / eval_tokens) / (wall["sample"] / sampled),
            }
        )
    return out


def run_demo(out: Path, quick: bool) -> None:
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    cmd = [sys.executable, "-m", "lrdpo_fast.cli", "demo", "--out", str(out)] + (["--quick"] if quick else [])
    subprocess.run(cmd, check=True, env=env)


def _scaled(res: dict, fraction: float) -> float:
    """The largest eval share over the iterations had the evaluation generated ``fraction`` x the
    iteration's training samples, at each iteration's measured seconds per evaluation sample."""
    worst = 0.0
    for rows in res["runs"].values():
        for r in rows:
            ev = r["eval_s"] / r["eval_samples"] * fraction * r["train_samples"]
            worst = max(worst, ev / (r["iteration_s"] - r["eval_s"] + ev))
    return worst


def render(res: dict) -> str:
    lines = [
        f"# Evaluation cost per iteration ({res['setting']} demo setting, {res['meta']['device_name']})",
        "",
        "| run | iteration | sample s | train s | other s | eval s | eval share | eval / train samples "
        "| eval s per token vs sampling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in res["runs"].items():
        for r in rows:
            other = r["score_s"] + r["pairs_s"]
            lines.append(
                f"| {name} | {r['iteration']} | {r['sample_s']:.2f} | {r['train_s']:.2f} | {other:.2f} | "
                f"{r['eval_s']:.2f} | {r['eval_share']:.0%} | {r['eval_samples']} / {r['train_samples']} | "
                f"{r['eval_s_per_token_vs_sampling']:.2f}x |"
            )
    worst = max(r["eval_share"] for rows in res["runs"].values() for r in rows)
    verdict = "PASS" if worst < GOAL_SHARE else "FAIL"
    lines += [
        "",
        f"**{verdict}**: evaluation share of an iteration at most {worst:.0%} (goal < {GOAL_SHARE:.0%}).",
        "",
        "The evaluation reuses the live engine: its cost per generated token is the sampling phase's "
        "(last column), so its share is the ratio of what it generates to what the iteration generates "
        "and trains on. The demo's acceptance asks for at least 4,000 held-out samples per row (so "
        "accuracy differences of a point are not noise) against 1,200 training samples per iteration "
        "(600 quick): at that ratio no evaluation that generates its samples can stay under 15%. "
        f"Scaled to the same measured rates, evaluating as many samples as the iteration trains on would "
        f"take {_scaled(res, 1.0):.0%} of it, a tenth as many {_scaled(res, 0.1):.0%}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bench_eval", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the demo's --quick setting")
    p.add_argument("--from", dest="from_dir", default=None, help="a finished `lrdpo-fast demo` folder to read")
    p.add_argument("--out", default=None, help="results folder (default bench/results/<device>)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not __package__:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.env import REPO, device_slug, metadata_record

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        demo_dir = Path(args.from_dir) if args.from_dir else Path(tmp) / "demo"
        if not args.from_dir:
            run_demo(demo_dir, args.quick)
        settings = json.loads((demo_dir / "demo.json").read_text())["settings"]
        runs = {p.name: split_run(p) for p in sorted(demo_dir.iterdir()) if (p / "summary.jsonl").is_file()}
    quick = settings["prompts"] < 200
    res = {
        "meta": metadata_record("cpu"),
        "setting": "quick" if quick else "full",
        "demo_settings": settings,
        "runs": runs,
        "goal_share": GOAL_SHARE,
    }
    out_dir = Path(args.out) if args.out else REPO / "bench" / "results" / device_slug("cpu")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    (out_dir / "eval.md").write_text(render(res))
    print(render(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
