"""``lrdpo-fast iterate``, ``sample|score|pairs|train --iteration I`` and ``report``: the iterative
loop from a YAML config (see ``lrdpo_fast.loop.config`` for every key)."""

from __future__ import annotations

import argparse

PHASE_COMMANDS = ("sample", "score", "pairs")  # + train: `lrdpo-fast train RUN.yaml --iteration I`


def _overrides(items: list[str] | None) -> dict:
    import yaml

    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set expects key=value (e.g. sampler.n=8), got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ValueError(f"--set {key}: value {value!r} is not valid YAML") from None
    return out


def _load(args):
    from ..loop.config import IterateConfig

    overrides = _overrides(args.set)
    if getattr(args, "iterations", None) is not None:
        overrides["iterations"] = args.iterations
    if getattr(args, "run_dir", None) is not None:
        overrides["run_dir"] = args.run_dir
    return IterateConfig.from_yaml(args.config, **overrides)


def _end_distributed() -> None:
    """Under torchrun: take down the process group the loop started, before the process exits."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_iterate(args) -> int:
    from ..loop.iterate import iterate

    iterate(_load(args))
    _end_distributed()
    return 0


def run_phase(args) -> int:
    from ..loop.iterate import iterate

    phase = args.command
    iterate(_load(args), stop_after=(args.iteration, phase))
    _end_distributed()
    return 0


def run_report(args) -> int:
    from ..loop.iterate import SUMMARY_TABLE
    from ..loop.report import format_table, plot_summary, read_summary

    rows = read_summary(args.run_dir)
    print(format_table(rows, SUMMARY_TABLE))
    path = plot_summary(rows, f"{args.run_dir}/report.png")
    if path:
        print(f"plot: {path}")
    return 0


def add_parser(sub) -> None:
    """Register ``iterate``, the single phases and ``report``."""
    from ..loop.config import describe_keys

    epilog = "config keys:\n" + describe_keys()
    it = sub.add_parser(
        "iterate",
        help="iterative LR-DPO: sample, score, pair, train, sync, repeat (resumable)",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    it.add_argument("config", help="run YAML (see the keys below)")
    it.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. sampler.n=8 (repeatable)")
    it.add_argument("--iterations", type=int, default=None, help="override iterations")
    it.add_argument("--run-dir", default=None, help="override run_dir")
    it.set_defaults(run=run_iterate)
    for name in PHASE_COMMANDS:
        ph = sub.add_parser(
            name,
            help=f"run the loop up to the {name} phase of one iteration",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        ph.add_argument("config")
        ph.add_argument("--iteration", type=int, required=True)
        ph.add_argument("--set", action="append", metavar="KEY=VALUE")
        ph.add_argument("--run-dir", default=None)
        ph.set_defaults(run=run_phase)
    rp = sub.add_parser("report", help="the table and plot of an existing run directory")
    rp.add_argument("run_dir")
    rp.set_defaults(run=run_report)
