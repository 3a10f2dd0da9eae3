"""``lrdpo-fast``: the command line, one module per subcommand.

    lrdpo-fast demo [--quick] [--alpha A]        (cli/demo.py: the main job)
    lrdpo-fast train CONFIG.yaml | --example     (cli/train.py)
    lrdpo-fast iterate RUN.yaml [--set k=v]      (cli/iterate.py; also sample|score|pairs|train-phase, report)

Each subcommand module has ``add_parser(sub)`` and sets ``run(args) -> int``. Every expected
failure (a ``ValueError``) becomes one ``lrdpo-fast: error: ...`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import sys

from . import demo, iterate, train

SUBCOMMANDS = (demo, train, iterate)


def build_parser() -> argparse.ArgumentParser:
    """The ``lrdpo-fast`` argument parser with every subcommand registered."""
    p = argparse.ArgumentParser(prog="lrdpo-fast", description="Iterative length-regularized DPO with fused kernels")
    sub = p.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lrdpo-fast`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as e:
        print(f"lrdpo-fast: error: {e}", file=sys.stderr)
        return 2
