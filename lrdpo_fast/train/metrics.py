"""Per-step metric rows: metrics.jsonl, peak memory, the end-of-run summary and plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curves.png"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA ``max_memory_allocated`` on a CUDA device, else the
    CPU resident-set high-water mark (``ru_maxrss``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 1024 if os.uname().sysname != "Darwin" else rss / 2**20  # KiB on Linux, bytes on macOS
    except (ImportError, AttributeError):  # Windows
        return float("nan")


class MetricsWriter:
    """Appends one JSON row per logged step to ``output_dir/metrics.jsonl`` (main process only),
    and hands the same row to ``tracker`` (a ``tracking.Tracker``, or None) at its ``step`` plus
    ``step_offset`` (the iterative loop's one tracker counts steps across iterations)."""

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True):
        self.path = Path(output_dir) / METRICS_FILE
        self.enabled = enabled
        self.tracker = None
        self.step_offset = 0
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def reset(self, keep_until_step: int = 0) -> None:
        """Start the file afresh, keeping rows with ``step <= keep_until_step`` (used on resume)."""
        if not self.enabled:
            return
        rows = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    break  # a row cut short by a kill mid-append: it and anything after are redone
                if r.get("step", 0) <= keep_until_step:
                    rows.append(r)
        from ..data.atomic import atomic_write_text

        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def write(self, row: dict) -> None:
        """Append ``row`` (floats/ints/strings) as one JSON line, flushed to disk."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_jsonable(row)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tracker is not None:  # after the source of truth is on disk
            step = int(row.get("step", 0)) + self.step_offset
            self.tracker.log_row({**row, "step": step}, step)


def _jsonable(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The rows of a metrics.jsonl file (or of ``path/metrics.jsonl`` for a directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    if not p.is_file():
        raise ValueError(f"path {str(p)!r} is not a metrics file")
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def summary_line(history: Sequence[dict]) -> str:
    """One line describing the end of a run: final loss, reward accuracy, mean lengths."""
    if not history:
        return "no steps were run"
    last = history[-1]
    first = history[0]

    def f(row, key, fmt="{:.4f}"):
        v = row.get(key)
        return "n/a" if v is None else fmt.format(v)

    return (
        f"done: {last['step']} steps | loss {f(first, 'loss')} -> {f(last, 'loss')} | "
        f"reward acc {f(last, 'rewards/accuracies', '{:.2f}')} | margin {f(last, 'rewards/margins')} | "
        f"mean length chosen {f(last, 'length/chosen', '{:.1f}')} / rejected {f(last, 'length/rejected', '{:.1f}')} | "
        f"{f(last, 'tokens_per_s', '{:.0f}')} tok/s"
    )


def plot_history(history: Sequence[dict], path: str | os.PathLike) -> str | None:
    """Loss, rewards/margins, accuracy, policy log-probs and the batch's mean chosen/rejected
    response lengths per step as a PNG; None when matplotlib
    is missing or there is nothing to plot. Returns the written path."""
    if not history:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = [r["step"] for r in history]
    panels = [
        ("loss", ["loss"]),
        ("rewards", ["rewards/chosen", "rewards/rejected", "rewards/margins"]),
        ("accuracy", ["rewards/accuracies"]),
        ("policy log-probs", ["logps/chosen", "logps/rejected"]),
        ("response length (tokens)", ["length/chosen", "length/rejected"]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2))
    for ax, (title, keys) in zip(axes, panels):
        for k in keys:
            ax.plot(steps, [r.get(k) for r in history], label=k.split("/")[-1])
        ax.set_title(title)
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return str(path)
