"""What the demo's modes share: the settings, the run config of one demo run, and the side-by-side
table (``lrdpo-fast demo`` and ``lrdpo-fast demo --dice``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoSettings:
    """One demo setting (the full one, or ``--quick``'s reduced one)."""

    iterations: int = 3
    prompts: int = 200  # training prompts per iteration
    k: int = 6  # samples per training prompt
    eval_prompts: int = 1000  # held-out prompts
    eval_k: int = 4  # samples per held-out prompt (eval_prompts x eval_k >= 4000)
    epochs: int = 2
    beta: float = 0.1
    # 1e-4 (the prototype's) broke at iteration 3: seed 0's alpha > 0 run, seed 1's alpha = 0 run (README)
    learning_rate: float = 5e-5
    alpha: float = 0.065  # per token (= per character here): the chosen/rejected length gap scale
    pairs_per_step: int = 32
    max_new_tokens: int = 96


DEMO_PLOT_KEYS = (
    ("true_accuracy", "true accuracy (held out)"),
    ("mean_response_length", "response length (tokens)"),
    ("judge_reward", "judge reward (what the loop optimizes)"),
    ("lc_win_rate", "LC win rate vs start (by the judge)"),
)

FULL = DemoSettings()
QUICK = DemoSettings(prompts=100, eval_prompts=500, pairs_per_step=16)


def run_config(s: DemoSettings, alpha: float, run_dir: Path, seed: int, policy: str = "example") -> dict:
    """The ``IterateConfig`` mapping of one demo run (``policy``: default the shipped start policy)."""
    judge = {"callable": "lrdpo_fast.demo.task:judge"}
    return {
        "policy": policy,
        "prompts": "example",
        "iterations": s.iterations,
        "prompts_per_iteration": s.prompts,
        "run_dir": str(run_dir),
        "seed": seed,
        "sampler": {
            "n": s.k,
            "temperature": 1.0,
            "max_new_tokens": s.max_new_tokens,
            "dtype": "float32",
            "max_model_len": 128,
            "enforce_eager": True,
            "cpu_threads": 1,
        },
        "reward": judge,
        "pairs": {"strategy": "best_worst", "length_alpha": 0.0, "drop_truncated": True},
        "train": {
            "beta": s.beta,
            "alpha": alpha,
            "learning_rate": s.learning_rate,
            "lr_scheduler": "constant",
            "num_epochs": s.epochs,
            "pairs_per_step": s.pairs_per_step,
            "max_tokens_per_batch": 4096,
            "device": "cpu",
            "plot": False,
            "progress": False,
            "save_final": False,
        },
        "eval": {
            "prompts": "example",
            "num_prompts": s.eval_prompts,
            "n": s.eval_k,
            "judge": judge,
            "metrics": {"true_accuracy": "lrdpo_fast.demo.task:true_accuracy"},
        },
    }


def _alpha_name(alpha: float) -> str:
    return "alpha_0" if alpha == 0 else f"alpha_{alpha:g}"


def run_label(name: str) -> str:
    """``alpha_0`` -> ``alpha=0 (iterative DPO)``, ``alpha_0.065`` -> ``alpha=0.065 (iLR-DPO)``."""
    a = name.removeprefix("alpha_")
    return "alpha=0 (iterative DPO)" if a == "0" else f"alpha={a} (iLR-DPO)"


TABLE_COLUMNS = (
    ("true_accuracy", "accuracy", "{:.3f}"),
    ("judge_reward", "judge", "{:.3f}"),
    ("mean_response_length", "length", "{:.1f}"),
    ("pairs_kept", "pairs", "{}"),
)


def demo_table(runs: dict[str, list[dict]], label=None) -> str:
    """Iteration by iteration, run beside run: true accuracy, judge reward, mean response length
    (tokens), pairs kept; then one line per run with the change from the start. ``label``: run
    name -> column title (default ``run_label``)."""
    run_label_of = label or run_label
    names = list(runs)
    n_rows = max(len(r) for r in runs.values())

    def cells(name: str, i: int) -> list[str]:
        r = runs[name][i] if i < len(runs[name]) else {}
        return [fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in TABLE_COLUMNS]

    blocks = {n: [[c[1] for c in TABLE_COLUMNS]] + [cells(n, i) for i in range(n_rows)] for n in names}
    iters = ["iter"] + [str(i) for i in range(n_rows)]
    iw = max(map(len, iters))

    def block_line(n: str, k: int) -> str:
        widths = [max(len(row[j]) for row in blocks[n]) for j in range(len(TABLE_COLUMNS))]
        return "  ".join(v.rjust(w) for v, w in zip(blocks[n][k], widths))

    gap = "    "
    lines = [iters[k].rjust(iw) + "".join(gap + block_line(n, k) for n in names) for k in range(n_rows + 1)]
    top = " " * iw + "".join(gap + run_label_of(n).center(len(block_line(n, 0))) for n in names)
    out = [top.rstrip(), *lines, ""]
    for n in names:
        first, last = runs[n][0], runs[n][-1]
        if len(runs[n]) > 1 and all(
            r.get("mean_response_length") and r.get("true_accuracy") is not None for r in (first, last)
        ):
            dl = last["mean_response_length"] / first["mean_response_length"] - 1
            out.append(
                f"{run_label_of(n)}: length {dl:+.0%}, true accuracy {first['true_accuracy']:.3f} -> "
                f"{last['true_accuracy']:.3f} after {last['iteration']} iteration{'s' if last['iteration'] != 1 else ''}"
            )
    return "\n".join(out).rstrip()
