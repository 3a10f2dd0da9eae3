"""``lrdpo-fast demo``: the paper's finding in miniature, on the CPU, in minutes.

From the same shipped start policy (a small Llama that reverses 4-digit numbers, SFT'd to answer
in a short, a medium or a long style, more often wrong in the long ones), the real loop
(``lf.iterate``: vLLM sampler, the length-biased judge, best/worst pairs, the fused-kernel
Trainer, in-memory weight sync) runs twice: alpha = 0 (iterative DPO) and alpha > 0 (iLR-DPO).
The judge pays for correctness plus a capped bonus per character, as reward models do; the true
accuracy is only measured, on held-out prompts. Writes ``OUT/alpha_0/`` and ``OUT/alpha_<A>/``
(full run directories, each with ``summary.jsonl``) and ``OUT/demo.png``, and prints one table.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from ..data.atomic import atomic_write_json
from .demo_setup import (  # noqa: F401  (re-exported: the demo's public names)
    DEMO_PLOT_KEYS,
    FULL,
    QUICK,
    TABLE_COLUMNS,
    DemoSettings,
    _alpha_name,
    demo_table,
    run_config,
    run_demo_dir,
    run_label,
    setup_process,
)


def run_demo(
    out: Path, *, settings: DemoSettings, alpha: float, seed: int = 0, policy: str = "example"
) -> dict[str, list[dict]]:
    """Both runs (alpha = 0, then ``alpha``) into ``out``; returns {run name: summary rows}."""
    from ..loop.report import plot_summary

    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(f"--alpha must be a number > 0 (the iLR-DPO run), got {alpha!r}")
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {}
    first_eval = None
    for a in (0.0, float(alpha)):
        name = _alpha_name(a)
        config = run_config(settings, a, out / name, seed, policy)
        runs[name] = run_demo_dir(config, out, first_eval=first_eval, label=run_label(name))
        # the same start policy, prompts and seeds: row 0's evaluation is shared, not redone
        first_eval = first_eval or out / name / "eval"
    plot_summary(
        [],
        out / "demo.png",
        runs={run_label(n): rs for n, rs in runs.items()},
        keys=DEMO_PLOT_KEYS,
        title="same start, same length-biased judge: what each run learns, per iteration",
    )
    atomic_write_json(out / "demo.json", {"settings": asdict(settings), "alpha": alpha, "seed": seed, "runs": runs})
    return runs


def add_parser(sub) -> None:
    """Register ``lrdpo-fast demo``."""
    d = sub.add_parser("demo", help="iterative DPO vs iLR-DPO on an embedded task, on the CPU (the main job)")
    d.add_argument("--iterations", type=int, default=None, help="iterations per run (default 3)")
    d.add_argument("--alpha", type=float, default=None, help="alpha of the iLR-DPO run, per token (default 0.065)")
    d.add_argument("--quick", action="store_true", help="the reduced setting CI runs")
    d.add_argument(
        "--dice",
        action="store_true",
        help="DICE instead: a judge round, then implicit-reward rounds with/without length shaping and replay",
    )
    d.add_argument(
        "--compare",
        action="store_true",
        help="DPO, LR-DPO, LN-DPO, SimPO, LD-DPO, SamPO and WPO side by side instead (swept hyper-parameters)",
    )
    d.add_argument("--methods", default=None, help="with --compare: which of them, comma-separated (default all)")
    d.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="with --compare: runs at a time, one process each (default 2, or 1 on one core; same numbers)",
    )
    d.add_argument("--out", default=None, help="output folder (default out/demo; out/compare with --compare)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--policy", default="example", help="start policy folder (default: the shipped one)")
    d.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: fastest for this tiny model, and the same numbers on any machine)",
    )
    d.add_argument("--verbose", action="store_true", help="keep vLLM's and transformers' logs and progress bars")
    d.set_defaults(run=run)


def run(args) -> int:
    """``lrdpo-fast demo``: check the arguments, then both runs, the table and the plot."""
    import os
    from dataclasses import replace

    methods = _check_modes(args)
    s = QUICK if args.quick else FULL
    if args.iterations is not None:
        if args.iterations < 1:
            raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
        s = replace(s, iterations=args.iterations)
    alpha = s.alpha if args.alpha is None else args.alpha
    if not alpha > 0 or alpha != alpha or alpha == float("inf"):
        raise ValueError(f"--alpha must be a finite number > 0 (the iLR-DPO run), got {alpha!r}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    setup_process(args.verbose, args.threads)
    if args.dice:
        from .demo_dice import main as dice_main

        return dice_main(Path(args.out or "out/demo"), replace(s, iterations=args.iterations or 2), args.seed)
    if args.compare:
        from .demo_compare import main as compare_main

        jobs = args.jobs or min(2, os.cpu_count() or 1)
        return compare_main(
            Path(args.out or "out/compare"), s, methods, args.seed, args.policy, jobs, (args.verbose, args.threads)
        )
    out = Path(args.out or "out/demo")
    t0 = time.perf_counter()
    runs = run_demo(out, settings=s, alpha=alpha, seed=args.seed, policy=args.policy)
    print()
    print(demo_table(runs))
    print(
        f"\nplot: {out / 'demo.png'}   runs: {', '.join(str(out / n) for n in runs)}   ({time.perf_counter() - t0:.0f} s)"
    )
    return 0


def _check_modes(args) -> dict | None:
    """Refuse flags of one mode given to another, in one line naming both; returns ``--compare``'s
    methods (name -> ``demo_compare.Method``), None in the other modes."""
    if args.compare and args.dice:
        raise ValueError("--compare and --dice are two modes of the demo; give one of them")
    if args.compare and args.alpha is not None:
        raise ValueError(
            "--alpha is the iLR-DPO run's; --compare runs every objective with its swept values (LR-DPO's "
            "alpha included): leave --alpha out"
        )
    for flag, value in (("--methods", args.methods), ("--jobs", args.jobs)):
        if value is not None and not args.compare:
            raise ValueError(f"{flag} is an option of --compare; it needs --compare")
    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if not args.compare:
        return None
    from .demo_compare import parse_methods

    return parse_methods(args.methods)
