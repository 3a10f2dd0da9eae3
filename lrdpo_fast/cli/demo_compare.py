"""``lrdpo-fast demo --compare``: the field's length-control objectives side by side on the demo task.

From the same shipped start policy, the same prompts, seeds and length-biased judge, the real loop
runs 3 iterations of each of DPO, LR-DPO, LN-DPO, SimPO, LD-DPO, SamPO and WPO (``METHODS``: each
method's ``train:`` keys over the demo's). Every method's hyper-parameters come from the sweep of
``scripts/sweep_compare.py`` (README, "Which objective? The demo side by side"). The start
policy's held-out evaluation is done once and shared (the same policy, prompts and seed), every
iteration after it is each method's own. Writes ``OUT/<method>/`` (full run directories),
``OUT/compare.png`` (a panel per metric, a line per method), ``OUT/compare.json`` and prints one
table: true accuracy, length, judge reward and LC win rate per iteration and method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_write_json
from .demo_setup import DEMO_PLOT_KEYS, DemoSettings, change_lines, run_config, run_demo_dir, setup_process


@dataclass(frozen=True)
class Method:
    """One objective of the comparison: its title and its ``train:`` keys (over the demo's
    ``run_config``: beta 0.1, alpha 0, loss_type sigmoid, learning rate 5e-5)."""

    label: str
    train: Mapping[str, Any] = field(default_factory=dict)


# The values scripts/sweep_compare.py chose (quick setting, seed 1; the README has its table).
METHODS: dict[str, Method] = {
    # beta per token for LN-DPO and SimPO: 2.5 is about DPO's 0.1 times the start's 27 tokens
    # (LN-DPO's 1, 2.5 and 5 ended within 0.006 of each other; the rule took 5); SimPO's gamma /
    # beta = 0.5 (the paper's range 0.3 to 0.8; 0.3 and 0.8 did no better)
    "dpo": Method("DPO", {"learning_rate": 1e-4}),
    "lr_dpo": Method("LR-DPO", {"alpha": 0.1}),
    "ln_dpo": Method("LN-DPO", {"loss_type": "sigmoid_norm", "beta": 5.0, "learning_rate": 1e-4}),
    "simpo": Method("SimPO", {"loss_type": "simpo", "beta": 2.5, "gamma": 1.25, "learning_rate": 5e-5}),
    "ld_dpo": Method("LD-DPO", {"ld_alpha": 0.8}),
    "sampo": Method("SamPO", {"sampo": True, "live_reference": True, "learning_rate": 1e-4}),
    "wpo": Method("WPO", {"wpo": True, "learning_rate": 1e-4}),
}

COMPARE_COLUMNS = (
    ("true_accuracy", "true accuracy", "{:.3f}"),
    ("mean_response_length", "length (tokens)", "{:.1f}"),
    ("judge_reward", "judge reward", "{:.3f}"),
    ("lc_win_rate", "LC win rate vs start", "{:.3f}"),
)


def method_config(s: DemoSettings, method: Method, run_dir: Path, seed: int, policy: str = "example") -> dict:
    """The ``IterateConfig`` mapping of one method's run: the demo's run with ``method.train`` over
    its ``train:`` section (everything else, sampling, judge, pairs, evaluation, is the same)."""
    cfg = run_config(s, 0.0, run_dir, seed, policy)
    cfg["train"].update(method.train)
    return cfg


def parse_methods(spec: str | None) -> dict[str, Method]:
    """``--methods`` (comma-separated names of ``METHODS``; None = all, in their order)."""
    if spec is None:
        return dict(METHODS)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown or not names:
        raise ValueError(f"--methods must name some of {', '.join(METHODS)}, got {spec!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--methods names a method twice: {spec!r}")
    return {n: METHODS[n] for n in names}


def run_methods(
    out: Path,
    methods: Mapping[str, Method],
    *,
    settings: DemoSettings,
    seed: int = 0,
    policy: str = "example",
    jobs: int = 1,
    worker_setup: tuple = (),
) -> dict[str, list[dict]]:
    """Each method's run into ``out/<name>``; returns {name: summary rows} in ``methods``' order.

    ``jobs`` runs at a time, each in its own process (spawned: its own vLLM engine, torch with the
    parent's threads; ``worker_setup``: the arguments of ``demo_setup.setup_process`` there). A run is
    the same whichever process runs it and beside what (seeded, one thread each). The start
    policy's evaluation (row 0: the same policy, held-out prompts and seed for all) is copied from
    a run that has finished it when one has, else done."""
    out.mkdir(parents=True, exist_ok=True)
    configs = {name: method_config(settings, m, out / name, seed, policy) for name, m in methods.items()}
    labels = {name: m.label for name, m in methods.items()}
    if jobs == 1:
        return {name: _run_one(configs[name], out, labels[name], list(configs)) for name in configs}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=setup_process, initargs=worker_setup) as pool:
        futures = {name: pool.submit(_run_one, configs[name], out, labels[name], list(configs)) for name in configs}
        try:
            return {name: f.result() for name, f in futures.items()}
        except BaseException:
            for f in futures.values():  # a failed run stops the ones not started (the started end)
                f.cancel()
            raise


def _run_one(config: dict, out: Path, label: str, names: list[str]) -> list[dict]:
    """One method's run (in this process or a worker), row 0 copied from a finished sibling."""
    done = [out / n / "eval" for n in names if (out / n / "eval" / "row_0.json").is_file()]
    return run_demo_dir(config, out, first_eval=done[0] if done else None, label=label, tag_rows=True)


def compare_table(runs: Mapping[str, list[dict]], label: Callable[[str], str]) -> str:
    """One line per method: each metric of ``COMPARE_COLUMNS`` per iteration (row 0 = the start
    policy; an iteration no run has a value for is left out, e.g. the start's LC win rate), then
    one line per method with its change from the start. ``label``: run name -> its title."""
    n_rows = max(len(rows) for rows in runs.values())
    names = list(runs)
    cells = {n: [label(n)] for n in names}
    head, groups = ["method"], []  # groups: (title, first column, last column)
    for key, title, fmt in COMPARE_COLUMNS:
        its = [i for i in range(n_rows) if any(i < len(rs) and rs[i].get(key) is not None for rs in runs.values())]
        groups.append((title, len(head), len(head) + len(its) - 1))
        head += [str(i) for i in its]
        for n in names:
            rows = runs[n]
            cells[n] += [
                fmt.format(rows[i][key]) if i < len(rows) and rows[i].get(key) is not None else "-" for i in its
            ]
    table = [head, *cells.values()]
    widths = [max(len(line[j]) for line in table) for j in range(len(head))]
    gaps = [""] + ["  "] * (len(head) - 1)
    for title, first, last in groups:
        gaps[first] = "    "  # a wider gap between metrics
        span = sum(widths[first : last + 1]) + 2 * (last - first)
        widths[first] += max(0, len(title) - span)  # the title fits over its columns
    top = " " * widths[0]
    for title, first, last in groups:
        span = sum(widths[first : last + 1]) + 2 * (last - first)
        top += gaps[first] + title.ljust(span)
    lines = [
        "".join(g + (v.ljust(w) if j == 0 else v.rjust(w)) for j, (g, v, w) in enumerate(zip(gaps, line, widths)))
        for line in table
    ]
    return "\n".join([top.rstrip(), *lines, "", *change_lines(dict(runs), label)]).rstrip()


def main(
    out: Path,
    settings: DemoSettings,
    methods: Mapping[str, Method],
    seed: int,
    policy: str,
    jobs: int = 1,
    worker_setup: tuple = (),
) -> int:
    """``lrdpo-fast demo --compare``: the runs (``jobs`` at a time), the table, the plot and
    ``OUT/compare.json``."""
    from ..loop.report import plot_summary

    t0 = time.perf_counter()
    print(
        f"lrdpo-fast demo --compare: {len(methods)} objectives from the same start, {jobs} at a time -> {out}",
        flush=True,
    )
    runs = run_methods(out, methods, settings=settings, seed=seed, policy=policy, jobs=jobs, worker_setup=worker_setup)
    label = lambda n: methods[n].label  # noqa: E731
    print()
    print(compare_table(runs, label))
    plot = plot_summary(
        [],
        out / "compare.png",
        runs={label(n): rs for n, rs in runs.items()},
        keys=DEMO_PLOT_KEYS,
        title="same start, same length-biased judge: each objective, per iteration",
    )
    record = {
        "settings": asdict(settings),
        "seed": seed,
        "methods": {n: {"label": m.label, "train": dict(m.train)} for n, m in methods.items()},
        "runs": runs,
    }
    atomic_write_json(out / "compare.json", record)
    print(f"\nplot: {plot}   runs: {', '.join(str(out / n) for n in runs)}   ({time.perf_counter() - t0:.0f} s)")
    return 0
