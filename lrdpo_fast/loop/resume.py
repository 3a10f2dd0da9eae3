"""What a resume trusts: the run's record (config and inputs by content) and each complete phase's
outputs (by the digests its marker recorded). A damaged output of a complete phase is redone (the
phases are deterministic) and the resume says so in one line on stderr; an input that changed is
refused by name (``run_record.py``). Under torchrun rank 0 decides and every rank follows.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ..train.distributed import DistInfo, all_gather_objects, barrier, on_main_agreed
from .config import PATH_KEYS, IterateConfig
from .run_dir import PHASES, RunDir
from .run_record import check_or_write, input_record


def say(ranks: DistInfo, message: str) -> None:
    """One line on stderr from rank 0 (``lrdpo-fast: ...``)."""
    if ranks.is_main:
        print(f"lrdpo-fast: {message}", file=sys.stderr, flush=True)


def _on_main_value(ranks: DistInfo, fn: Callable[[], Any]) -> Any:
    """``fn()`` computed on rank 0; every rank returns that value."""
    return all_gather_objects(fn() if ranks.is_main else None, ranks.world_size)[0]


def input_paths(cfg: IterateConfig) -> dict[str, str | None]:
    """The config's input files and folders by dotted key (``reward.reward_model``...), not
    ``run_dir``; the tokenizer is the policy's when not given."""
    values = cfg.to_dict()
    out: dict[str, str | None] = {}
    for keys in PATH_KEYS:
        if keys == ("run_dir",):
            continue
        holder: Any = values
        for k in keys:
            holder = holder.get(k) if isinstance(holder, dict) else None
        out[".".join(keys)] = holder
    return out


def check_run_config(run: RunDir, cfg: IterateConfig, ranks: DistInfo, version: str) -> None:
    """Write the run's record on the first start; on a resume refuse (on every rank) another
    config or changed inputs (``run_record.check_or_write``)."""

    def check() -> None:
        inputs = input_record(input_paths(cfg))
        check_or_write(run.config_path, cfg.to_dict(), version, inputs, stored_config)

    on_main_agreed(ranks, check)


def stored_config(stored: dict) -> dict:
    """A config.yaml written by an earlier version, in today's form (defaults filled in)."""
    return IterateConfig.from_dict(stored).to_dict()


def first_to_run(run: RunDir, iterations: int, ranks: DistInfo) -> int:
    """The first iteration to run: after the last one whose saved policy is whole. A damaged
    policy's train phase is redone (from its last checkpoint, as after a kill)."""
    first = run.first_unfinished(iterations)
    while first > 0:
        what = _on_main_value(ranks, lambda i=first - 1: run.damage(i, "train"))
        if what is None:
            break
        say(ranks, f"{what}: redoing iteration {first - 1}'s train phase")
        if ranks.is_main:
            run.undo(first - 1, "train")
        barrier(ranks)
        first -= 1
    return first


def phase_to_redo(run: RunDir, i: int, phase: str, ranks: DistInfo) -> tuple[bool, dict | None]:
    """(run the phase, the outputs its marker had recorded when they were found damaged)."""
    if not run.is_done(i, phase):
        return True, None
    what = _on_main_value(ranks, lambda: run.damage(i, phase))
    if what is None:
        return False, None
    recorded = run.done_info(i, phase)["outputs"]
    say(ranks, f"{what}: redoing iteration {i}'s {phase} phase")
    if ranks.is_main:
        run.undo(i, phase)
    barrier(ranks)
    return True, recorded


def after_redo(run: RunDir, i: int, phase: str, recorded: dict, ranks: DistInfo) -> None:
    """A redone phase whose outputs came out other than the first time: the later phases of the
    iteration were made from the old ones and are redone too."""
    differs = _on_main_value(ranks, lambda: run.done_info(i, phase)["outputs"] != recorded)
    if not differs:
        return
    later = [p for p in PHASES[PHASES.index(phase) + 1 :] if run.is_done(i, p)]
    if later:
        say(ranks, f"iteration {i}'s redone {phase} phase wrote other outputs: redoing {', '.join(later)} too")
        if ranks.is_main:
            for p in later:
                run.undo(i, p)
    barrier(ranks)
