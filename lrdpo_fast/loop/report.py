"""Reading a run back: the terminal table and the plot of ``summary.jsonl`` (``lrdpo-fast report``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

PLOT_KEYS = (
    ("true_accuracy", "true accuracy"),
    ("judge_reward", "judge reward"),
    ("reward_mean", "reward (samples)"),
    ("mean_response_length", "response length (tokens)"),
    ("win_rate", "win rate vs start"),
    ("lc_win_rate", "LC win rate vs start"),
)

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def read_summary(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``run_dir/summary.jsonl``; ValueError naming the path when there is none."""
    p = Path(run_dir) / "summary.jsonl"
    if not p.is_file():
        raise ValueError(f"run_dir {str(run_dir)!r} has no summary.jsonl (not a run directory, or no iteration done)")
    rows = []
    for k, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{p} line {k}: invalid JSON ({e.msg})") from None
    return rows


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A fixed-width text table of ``rows`` with the ``columns`` some row has (floats 3 d.p.)."""
    cols = [c for c in columns if any(r.get(c) is not None for r in rows)]

    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    table = [cols] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(line[j]) for line in table) for j in range(len(cols))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(line, widths)) for line in table)


def plot_summary(
    rows: Sequence[dict],
    path: str | os.PathLike,
    *,
    runs: dict[str, Sequence[dict]] | None = None,
    title: str | None = None,
    keys: Sequence[tuple[str, str]] = PLOT_KEYS,
) -> str | None:
    """One panel per quantity of ``keys`` ((row key, panel title) pairs, default ``PLOT_KEYS``)
    that the rows carry, against the iteration, at most three panels a line; several runs
    (``runs``: label -> rows) share the panels (more than four: each its own marker, and one
    legend under the panels). Returns the path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    runs = runs or {"run": rows}
    keys = [(k, label) for k, label in keys if any(r.get(k) is not None for rs in runs.values() for r in rs)]
    if not keys:
        return None
    ncols = min(3, len(keys)) if len(keys) != 4 else 2
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.5 * nrows), squeeze=False)
    flat = [ax for line in axes for ax in line]
    many = len(runs) > 4
    for ax, (k, label) in zip(flat, keys):
        for j, (name, rs) in enumerate(runs.items()):
            pts = [(r["iteration"], r[k]) for r in rs if r.get(k) is not None]
            if pts:
                ax.plot(*zip(*pts), marker=MARKERS[j % len(MARKERS)] if many else "o", label=name)
        ax.set_title(label)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in flat[len(keys) :]:
        ax.axis("off")
    if many:
        lines = {lab: h for ax in flat for h, lab in zip(*ax.get_legend_handles_labels())}
        fig.legend(list(lines.values()), list(lines), loc="lower center", ncol=-(-len(lines) // 2), frameon=False)
    elif len(runs) > 1:
        flat[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.1 if many else 0, 1, 1))

    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return str(path)
