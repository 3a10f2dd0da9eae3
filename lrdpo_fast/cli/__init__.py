"""``lrdpo-fast``: the command line, one module per subcommand.

    lrdpo-fast demo [--quick] [--alpha A | --dice | --compare]   (cli/demo.py: the main job)
    lrdpo-fast train CONFIG.yaml | --example     (cli/train.py)
    lrdpo-fast iterate RUN.yaml [--set k=v]      (cli/iterate.py; also sample|score|pairs|train-phase, report)
    lrdpo-fast doctor [--skip-vllm]              (cli/doctor.py: environment + self-checks for bug reports)

Each subcommand module has ``add_parser(sub)`` and sets ``run(args) -> int``. Every expected
failure (a ``ValueError``, a run stopped by the training guard, an ``OSError`` from the file
system) becomes one ``lrdpo-fast: error: ...`` line and exit code 2; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import sys

from . import demo, doctor, iterate, train

SUBCOMMANDS = (demo, train, iterate, doctor)


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
    from ..train.trainer import NonFiniteTrainingError

    try:
        return args.run(args)
    except (ValueError, NonFiniteTrainingError) as e:
        print(f"lrdpo-fast: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system said no (permissions, disk full, ...): not a bug
        where = f" ({e.filename!r})" if e.filename else ""
        print(f"lrdpo-fast: error: {e.strerror or _one_line(e)}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lrdpo-fast: interrupted", file=sys.stderr)
        return 130


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
