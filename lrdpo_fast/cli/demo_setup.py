"""What the demo's modes share: the settings, the run config of one demo run, running one demo run
(its start policy's evaluation shared), the progress lines and the side-by-side table
(``lrdpo-fast demo``, ``--dice`` and ``--compare``)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
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
    return "\n".join([top.rstrip(), *lines, "", *change_lines(runs, run_label_of)]).rstrip()


def change_lines(runs: dict[str, list[dict]], label: Callable[[str], str]) -> list[str]:
    """One line per run with rows from two policies on: its length change and true accuracy from
    its first row to its last (``label``: run name -> its title)."""
    out = []
    for n, rows in runs.items():
        first, last = rows[0], rows[-1]
        if len(rows) > 1 and all(
            r.get("mean_response_length") and r.get("true_accuracy") is not None for r in (first, last)
        ):
            dl = last["mean_response_length"] / first["mean_response_length"] - 1
            out.append(
                f"{label(n)}: length {dl:+.0%}, true accuracy {first['true_accuracy']:.3f} -> "
                f"{last['true_accuracy']:.3f} after {last['iteration']} iteration{'s' if last['iteration'] != 1 else ''}"
            )
    return out


def row_printer(iterations: int, t0: float, prefix: str = "") -> Callable[[dict], None]:
    """The progress line of each summary row (row 0: the start policy), with the seconds since
    ``t0``; ``prefix`` after the indent (the run's name, where runs print side by side)."""

    def show(row: dict) -> None:
        it = row["iteration"]
        what = "start policy" if it == 0 else f"iteration {it}/{iterations}"
        pairs = f", {row['pairs_kept']} pairs" if row.get("pairs_kept") else ""
        print(
            f"  {prefix}{what}: true accuracy {row.get('true_accuracy', float('nan')):.3f}, judge "
            f"{row.get('judge_reward', float('nan')):.3f}, length {row.get('mean_response_length', float('nan')):.1f}"
            f" tokens{pairs}  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )

    return show


def finished(run_dir: Path, iterations: int) -> bool:
    """True when ``run_dir`` already holds a finished run of ``iterations`` iterations."""
    try:
        lines = (run_dir / "summary.jsonl").read_text(encoding="utf-8").splitlines()
        return len([x for x in lines if x.strip()]) == iterations + 1
    except OSError:
        return False


def run_demo_dir(config: dict, out: Path, *, first_eval: Path | None, label: str, tag_rows: bool = False) -> list[dict]:
    """One demo run (``config``: an ``IterateConfig`` mapping whose ``run_dir`` lies in ``out``)
    with its progress lines; returns its summary rows. ``first_eval``: an earlier run's ``eval/``
    folder of the same start policy, held-out prompts and seed, whose row 0 is copied rather than
    redone. ``tag_rows``: each progress line starts with ``label`` (runs printing side by side).
    A folder made by another config is refused naming ``--out``."""
    from ..loop.config import IterateConfig
    from ..loop.iterate import iterate

    run_dir, iterations = Path(config["run_dir"]), config["iterations"]
    if first_eval is not None and not (run_dir / "eval" / "row_0.json").exists():
        (run_dir / "eval").mkdir(parents=True, exist_ok=True)
        for f in ("row_0.json", "row_0.jsonl"):
            shutil.copyfile(first_eval / f, run_dir / "eval" / f)
    t0 = time.perf_counter()
    print(f"lrdpo-fast demo: {label}, {iterations} iterations -> {run_dir}", flush=True)
    done_before = finished(run_dir, iterations)
    try:
        rows = iterate(
            IterateConfig.from_dict(config),
            progress=False,
            on_row=row_printer(iterations, t0, f"{label}, " if tag_rows else ""),
        )
    except ValueError as e:
        if "made by another config" in str(e):
            raise ValueError(f"{e}. For the demo: pass --out NEW_DIR, or remove {out}") from None
        raise
    if done_before:
        print(f"  (already complete in {run_dir}: read back from its files; remove {out} to run it again)")
    print(f"lrdpo-fast demo: {label} done in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


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


def setup_process(verbose: bool, threads: int) -> None:
    """What every process running demo runs needs first: vLLM in-process, its logs quiet unless
    ``verbose``, and ``threads`` torch threads."""
    import os

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not verbose:
        _quiet()
    import torch

    torch.set_num_threads(threads)
