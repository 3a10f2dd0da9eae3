"""The sweep behind ``lrdpo-fast demo --compare``'s hyper-parameters (``scripts/sweep_compare.py``).

Each objective runs at a few candidate values of what moves it (``CANDIDATES``: LR-DPO's alpha and
LD-DPO's ld_alpha at the demo's learning rate 5e-5, the learning rate 5e-5 or 1e-4 of the others,
whose beta Adam makes nearly a no-op here; LN-DPO's beta and SimPO's gamma too), in the ``--quick`` setting, 3 iterations, on seed 1,
so that the comparison (seed 0) is not measured on the run its values were picked on. The pick
of a method is its candidate with the highest held-out true accuracy after the last iteration
(the first listed on a tie). Writes ``OUT/<method>__<values>/`` run directories, ``OUT/sweep.md``
(the table, Markdown) and ``OUT/sweep.json``, and says whether ``demo_compare.METHODS`` holds the
picks.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_write_json, atomic_write_text
from .demo_compare import METHODS, Method, parse_methods, run_methods
from .demo_setup import QUICK, setup_process

SWEEP_SEED = 1
# With AdamW and the small margins of 3 iterations, a loss's beta scales its gradient and little
# else, which Adam normalizes away (DPO at beta 0.05 and 0.1 gave the same iteration 1 to three
# decimals here): the learning rate is what moves DPO, LN-DPO, SimPO, SamPO and WPO, while LR-DPO's
# alpha (next to beta's 0.1) and LD-DPO's ld_alpha change the direction of the update.
CANDIDATES: dict[str, list[dict[str, Any]]] = {
    "dpo": [{"learning_rate": 5e-5}, {"learning_rate": 1e-4}],
    "lr_dpo": [{"alpha": 0.03}, {"alpha": 0.065}, {"alpha": 0.1}],
    # LN-DPO's beta (per token) and SimPO's gamma (its target margin, gamma / beta 0.3 to 0.8 in
    # the paper) at the rate that picked, to see whether they move anything beyond the rate
    "ln_dpo": [
        {"learning_rate": 5e-5, "beta": 2.5},
        {"learning_rate": 1e-4, "beta": 2.5},
        {"learning_rate": 1e-4, "beta": 1.0},
        {"learning_rate": 1e-4, "beta": 5.0},
    ],
    "simpo": [
        {"learning_rate": 5e-5, "gamma": 1.25},
        {"learning_rate": 1e-4, "gamma": 1.25},
        {"learning_rate": 5e-5, "gamma": 0.75},
        {"learning_rate": 5e-5, "gamma": 2.0},
    ],
    "ld_dpo": [{"ld_alpha": 0.2}, {"ld_alpha": 0.5}, {"ld_alpha": 0.8}],
    "sampo": [{"learning_rate": 5e-5}, {"learning_rate": 1e-4}],
    "wpo": [{"learning_rate": 5e-5}, {"learning_rate": 1e-4}],
}


def candidate_tag(values: Mapping[str, Any]) -> str:
    """``{"beta": 2.5, "gamma": 1.25}`` -> ``beta=2.5,gamma=1.25`` (a run's folder and title)."""
    return ",".join(f"{k}={v:g}" for k, v in values.items())


def sweep_methods(names: list[str]) -> dict[str, tuple[str, dict[str, Any], Method]]:
    """{run name: (method name, candidate values, the method with them)} for ``names`` in order:
    each candidate's values over the method's own ``train:`` keys (its loss type, flags)."""
    out = {}
    for name in names:
        base = METHODS[name]
        for values in CANDIDATES[name]:
            tag = candidate_tag(values)
            out[f"{name}__{tag}"] = (name, values, Method(f"{base.label} {tag}", {**base.train, **values}))
    return out


def picks(runs: Mapping[str, list[dict]], plan: Mapping[str, tuple[str, dict, Method]]) -> dict[str, str]:
    """{method name: the run name of its pick}: the highest true accuracy of the last row (the
    first listed candidate on a tie)."""
    best: dict[str, str] = {}
    for run, (name, _, _) in plan.items():
        acc = runs[run][-1].get("true_accuracy")
        if acc is not None and (name not in best or acc > runs[best[name]][-1]["true_accuracy"]):
            best[name] = run
    return best


def _arrow(rows: list[dict], key: str, fmt: str) -> str:
    vals = [r.get(key) for r in rows if r.get(key) is not None]
    return " → ".join(fmt.format(v) for v in vals) if vals else "-"


def sweep_table(runs: Mapping[str, list[dict]], plan: Mapping[str, tuple[str, dict, Method]]) -> str:
    """The sweep as a Markdown table: a row per candidate, its true accuracy and length per row
    (start → last iteration), its last judge reward and LC win rate, the pick in bold."""
    chosen = set(picks(runs, plan).values())
    lines = [
        "| method | values | true accuracy (per iteration) | length (tokens) | judge | LC win rate | pick |",
        "|---|---|---|---|---|---|---|",
    ]
    for run, (name, values, _) in plan.items():
        rows, last = runs[run], runs[run][-1]
        judge, lc = last.get("judge_reward"), last.get("lc_win_rate")
        lines.append(
            f"| {METHODS[name].label} | {candidate_tag(values)} | {_arrow(rows, 'true_accuracy', '{:.3f}')} | "
            f"{_arrow(rows, 'mean_response_length', '{:.1f}')} | {'-' if judge is None else f'{judge:.3f}'} | "
            f"{'-' if lc is None else f'{lc:.3f}'} | {'**yes**' if run in chosen else ''} |"
        )
    return "\n".join(lines)


def disagreements(runs: Mapping[str, list[dict]], plan: Mapping[str, tuple[str, dict, Method]]) -> list[str]:
    """One line per method whose pick is not what ``METHODS`` holds (empty: the defaults are the picks)."""
    out = []
    for name, run in picks(runs, plan).items():
        _, values, _ = plan[run]
        held = {k: METHODS[name].train.get(k) for k in values}
        if held != values:
            out.append(f"{name}: the sweep picks {candidate_tag(values)}, METHODS holds {held}")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python scripts/sweep_compare.py [--out DIR] [--methods a,b] [--iterations N] [--seed S] [--jobs J]``."""
    p = argparse.ArgumentParser(prog="sweep_compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="out/sweep", help="output folder (default out/sweep)")
    p.add_argument("--methods", default=None, help=f"comma-separated, of {', '.join(METHODS)} (default all)")
    p.add_argument("--iterations", type=int, default=QUICK.iterations)
    p.add_argument("--seed", type=int, default=SWEEP_SEED)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one process each (default 2)")
    args = p.parse_args(argv)
    if args.iterations < 1 or args.seed < 0 or args.jobs < 1:
        raise SystemExit("sweep_compare: --iterations and --jobs must be >= 1, --seed >= 0")
    setup_process(False, 1)
    settings, out = replace(QUICK, iterations=args.iterations), Path(args.out)
    plan = sweep_methods(list(parse_methods(args.methods)))
    t0 = time.perf_counter()
    methods = {run: m for run, (_, _, m) in plan.items()}
    runs = run_methods(out, methods, settings=settings, seed=args.seed, jobs=args.jobs, worker_setup=(False, 1))
    table = sweep_table(runs, plan)
    atomic_write_text(out / "sweep.md", table + "\n")
    record = {"settings": asdict(settings), "seed": args.seed, "picks": picks(runs, plan), "runs": runs}
    atomic_write_json(out / "sweep.json", record)
    print(f"\n{table}\n\n({time.perf_counter() - t0:.0f} s; table in {out / 'sweep.md'})")
    for line in disagreements(runs, plan) or ["demo_compare.METHODS holds every pick"]:
        print(line)
    return 0
