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

import shutil
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
    run_label,
)


def _row_printer(iterations: int, t0: float):
    def show(row: dict) -> None:
        it = row["iteration"]
        what = "start policy" if it == 0 else f"iteration {it}/{iterations}"
        pairs = f", {row['pairs_kept']} pairs" if row.get("pairs_kept") else ""
        print(
            f"  {what}: true accuracy {row.get('true_accuracy', float('nan')):.3f}, judge "
            f"{row.get('judge_reward', float('nan')):.3f}, length {row.get('mean_response_length', float('nan')):.1f}"
            f" tokens{pairs}  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )

    return show


def run_demo(
    out: Path, *, settings: DemoSettings, alpha: float, seed: int = 0, policy: str = "example"
) -> dict[str, list[dict]]:
    """Both runs (alpha = 0, then ``alpha``) into ``out``; returns {run name: summary rows}."""
    from ..loop.config import IterateConfig
    from ..loop.iterate import iterate
    from ..loop.report import plot_summary

    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(f"--alpha must be a number > 0 (the iLR-DPO run), got {alpha!r}")
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {}
    first_eval = None
    for a in (0.0, float(alpha)):
        name = _alpha_name(a)
        run_dir = out / name
        if first_eval is not None and not (run_dir / "eval" / "row_0.json").exists():
            # the same start policy, prompts and seeds: row 0's evaluation is shared, not redone
            (run_dir / "eval").mkdir(parents=True, exist_ok=True)
            for f in ("row_0.json", "row_0.jsonl"):
                shutil.copyfile(first_eval / f, run_dir / "eval" / f)
        t0 = time.perf_counter()
        print(f"lrdpo-fast demo: {run_label(name)}, {settings.iterations} iterations -> {run_dir}", flush=True)
        finished = _finished(run_dir, settings.iterations)
        try:
            runs[name] = iterate(
                IterateConfig.from_dict(run_config(settings, a, run_dir, seed, policy)),
                progress=False,
                on_row=_row_printer(settings.iterations, t0),
            )
        except ValueError as e:
            if "made by another config" in str(e):
                raise ValueError(f"{e}. For the demo: pass --out NEW_DIR, or remove {out}") from None
            raise
        if finished:
            print(f"  (already complete in {run_dir}: read back from its files; remove {out} to run it again)")
        print(f"lrdpo-fast demo: {run_label(name)} done in {time.perf_counter() - t0:.0f} s", flush=True)
        first_eval = first_eval or run_dir / "eval"
    plot_summary(
        [],
        out / "demo.png",
        runs={run_label(n): rs for n, rs in runs.items()},
        keys=DEMO_PLOT_KEYS,
        title="same start, same length-biased judge: what each run learns, per iteration",
    )
    atomic_write_json(out / "demo.json", {"settings": asdict(settings), "alpha": alpha, "seed": seed, "runs": runs})
    return runs


def _finished(run_dir: Path, iterations: int) -> bool:
    """True when ``run_dir`` already holds a finished run of ``iterations`` iterations."""
    try:
        lines = (run_dir / "summary.jsonl").read_text(encoding="utf-8").splitlines()
        return len([x for x in lines if x.strip()]) == iterations + 1
    except OSError:
        return False


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
    d.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
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


def _quiet() -> None:
    """vLLM's info/warning lines and transformers' progress bars would bury the demo's own output
    (a user's own VLLM_LOGGING_LEVEL / TRANSFORMERS_VERBOSITY still win)."""
    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    import logging

    if os.environ["VLLM_LOGGING_LEVEL"] == "ERROR":  # what vLLM logs before it configures its logging
        logging.getLogger("vllm").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def run(args) -> int:
    """``lrdpo-fast demo``: check the arguments, then both runs, the table and the plot."""
    import os
    from dataclasses import replace

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
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not args.verbose:
        _quiet()
    import torch

    torch.set_num_threads(args.threads)
    if args.dice:
        from .demo_dice import main as dice_main

        return dice_main(Path(args.out), replace(s, iterations=args.iterations or 2), args.seed)
    t0 = time.perf_counter()
    runs = run_demo(Path(args.out), settings=s, alpha=alpha, seed=args.seed, policy=args.policy)
    print()
    print(demo_table(runs))
    print(
        f"\nplot: {Path(args.out) / 'demo.png'}   runs: {', '.join(str(Path(args.out) / n) for n in runs)}   "
        f"({time.perf_counter() - t0:.0f} s)"
    )
    return 0
