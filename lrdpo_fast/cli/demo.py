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

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoSettings:
    """One demo setting (the full one, or ``--quick``'s reduced one)."""

    iterations: int = 3
    prompts: int = 200          # training prompts per iteration
    k: int = 6                  # samples per training prompt
    eval_prompts: int = 1000    # held-out prompts
    eval_k: int = 4             # samples per held-out prompt (eval_prompts x eval_k >= 4000)
    epochs: int = 2
    beta: float = 0.1
    learning_rate: float = 1e-4
    alpha: float = 0.065         # per token (= per character here): the chosen/rejected length gap scale
    pairs_per_step: int = 32
    max_new_tokens: int = 96


FULL = DemoSettings()
QUICK = DemoSettings(prompts=100, eval_prompts=500, pairs_per_step=16)


def run_config(s: DemoSettings, alpha: float, run_dir: Path, seed: int, policy: str = "example") -> dict:
    """The ``IterateConfig`` mapping of one demo run (``policy``: default the shipped start policy)."""
    judge = {"callable": "lrdpo_fast.demo.task:judge"}
    return {
        "policy": policy, "prompts": "example", "iterations": s.iterations, "prompts_per_iteration": s.prompts,
        "run_dir": str(run_dir), "seed": seed,
        "sampler": {"n": s.k, "temperature": 1.0, "max_new_tokens": s.max_new_tokens, "dtype": "float32",
                    "max_model_len": 128},
        "reward": judge,
        "pairs": {"strategy": "best_worst", "length_alpha": 0.0, "drop_truncated": True},
        "train": {"beta": s.beta, "alpha": alpha, "learning_rate": s.learning_rate, "lr_scheduler": "constant",
                  "num_epochs": s.epochs, "pairs_per_step": s.pairs_per_step, "max_tokens_per_batch": 4096,
                  "device": "cpu", "plot": False, "progress": False, "save_final": False},
        "eval": {"prompts": "example", "num_prompts": s.eval_prompts, "n": s.eval_k, "judge": judge,
                 "metrics": {"true_accuracy": "lrdpo_fast.demo.task:true_accuracy"}},
    }


def _alpha_name(alpha: float) -> str:
    return "alpha_0" if alpha == 0 else f"alpha_{alpha:g}"


def demo_table(runs: dict[str, list[dict]]) -> str:
    """Iteration by iteration, for every run: true accuracy, judge reward, mean response length
    (tokens), pairs kept."""
    names = list(runs)
    head = ["iter"] + [f"{c} {n}" for n in names for c in ("acc", "judge", "len", "pairs")]
    lines = [head]
    for i in range(max(len(r) for r in runs.values())):
        line = [str(i)]
        for n in names:
            r = runs[n][i] if i < len(runs[n]) else {}
            line += [f"{r['true_accuracy']:.3f}" if "true_accuracy" in r else "-",
                     f"{r['judge_reward']:.3f}" if "judge_reward" in r else "-",
                     f"{r['mean_response_length']:.1f}" if "mean_response_length" in r else "-",
                     str(r.get("pairs_kept") or "-")]
        lines.append(line)
    widths = [max(len(x[j]) for x in lines) for j in range(len(head))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(x, widths)) for x in lines)


def run_demo(out: Path, *, settings: DemoSettings, alpha: float, seed: int = 0,
             policy: str = "example") -> dict[str, list[dict]]:
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
        print(f"lrdpo-fast demo: {name} ({settings.iterations} iterations) -> {run_dir}", flush=True)
        runs[name] = iterate(IterateConfig.from_dict(run_config(settings, a, run_dir, seed, policy)), progress=False)
        print(f"lrdpo-fast demo: {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
        first_eval = first_eval or run_dir / "eval"
    plot_summary([], out / "demo.png", runs=runs,
                 title="iterative DPO (alpha=0) vs iLR-DPO: true accuracy and response length per iteration")
    (out / "demo.json").write_text(json.dumps({"settings": asdict(settings), "alpha": alpha, "seed": seed,
                                               "runs": runs}, indent=1))
    return runs


def add_parser(sub) -> None:
    """Register ``lrdpo-fast demo``."""
    d = sub.add_parser("demo", help="iterative DPO vs iLR-DPO on an embedded task, on the CPU (the main job)")
    d.add_argument("--iterations", type=int, default=None, help="iterations per run (default 3)")
    d.add_argument("--alpha", type=float, default=None, help="alpha of the iLR-DPO run, per token (default 0.1)")
    d.add_argument("--quick", action="store_true", help="the reduced setting CI runs")
    d.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--policy", default="example", help="start policy folder (default: the shipped one)")
    d.set_defaults(run=run)


def run(args) -> int:
    import os
    from dataclasses import replace

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    s = QUICK if args.quick else FULL
    if args.iterations is not None:
        if args.iterations < 1:
            raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
        s = replace(s, iterations=args.iterations)
    alpha = s.alpha if args.alpha is None else args.alpha
    t0 = time.perf_counter()
    runs = run_demo(Path(args.out), settings=s, alpha=alpha, seed=args.seed, policy=args.policy)
    print()
    print(demo_table(runs))
    print(f"\nplot: {Path(args.out) / 'demo.png'}   runs: {', '.join(str(Path(args.out) / n) for n in runs)}   "
          f"({time.perf_counter() - t0:.0f} s)")
    return 0
