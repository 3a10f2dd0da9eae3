"""The run directory of ``lrdpo-fast iterate``: where each phase's outputs live and whether the
phase is complete.

    run_dir/config.yaml             the resolved config (a resumed run must match it)
    run_dir/iter_{i}/samples.jsonl  scores.jsonl  pairs.jsonl  pairs_stats.json
    run_dir/iter_{i}/train/         the trainer's metrics.jsonl, curves, checkpoints
    run_dir/iter_{i}/policy/        policy_{i+1} (save_pretrained, safetensors) + tokenizer
    run_dir/iter_{i}/done/<phase>.json   the completion marker of each phase (its summary)
    run_dir/eval/                   baseline and per-row evaluation outputs
    run_dir/summary.jsonl  report.png

A phase is complete exactly when its marker exists; the marker is written (atomically) only after
every output of the phase was renamed into place, so a run killed anywhere redoes at most the
phase it was in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_write_json, atomic_write_text

PHASES = ("sample", "score", "pairs", "train")
RUN_FORMAT = 1
# keys a resumed run may change: only how far it goes
RESUMABLE_CHANGES = ("iterations",)


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory (``root``) and its phase markers."""

    root: Path

    def iter_dir(self, i: int) -> Path:
        """``iter_{i}/``: the outputs of iteration ``i`` (which trains policy_{i+1})."""
        return self.root / f"iter_{i}"

    def path(self, i: int, name: str) -> Path:
        """A file or folder of iteration ``i`` (``samples.jsonl``, ``policy``, ...)."""
        return self.iter_dir(i) / name

    def marker(self, i: int, phase: str) -> Path:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        return self.iter_dir(i) / "done" / f"{phase}.json"

    def is_done(self, i: int, phase: str) -> bool:
        """True when ``phase`` of iteration ``i`` completed (its marker exists)."""
        return self.marker(i, phase).is_file()

    def mark_done(self, i: int, phase: str, info: dict[str, Any]) -> None:
        """Write the marker of a phase whose outputs are all in place; ``info`` is kept in it."""
        atomic_write_json(self.marker(i, phase), info)

    def done_info(self, i: int, phase: str) -> dict[str, Any]:
        """What ``mark_done`` stored for a complete phase."""
        return json.loads(self.marker(i, phase).read_text(encoding="utf-8"))

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.jsonl"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def first_unfinished(self, iterations: int) -> int:
        """The first iteration whose policy was not saved yet (its train phase is not done)."""
        first = 0
        while first < iterations and self.is_done(first, "train"):
            first += 1
        return first

    def check_or_write_config(
        self, resolved: dict[str, Any], version: str, normalize: Callable[[dict], dict] | None = None
    ) -> None:
        """First start: write ``config.yaml`` (the resolved config, the run format, the version).
        Resume: refuse (ValueError saying what differs) a run directory made by another config
        or an incompatible run format; only ``iterations`` may change. ``normalize`` rewrites the
        stored config in today's form first (defaults an older version did not write, e.g. a key
        added since), so only real differences count."""
        import yaml

        record = {"run_format": RUN_FORMAT, "lrdpo_fast_version": version, "config": resolved}
        if not self.config_path.exists():
            if self.root.exists() and any(p.name.startswith("iter_") for p in self.root.iterdir()):
                raise ValueError(
                    f"run_dir {str(self.root)!r} holds iterations but no config.yaml: not a run "
                    "directory this version can resume; choose another run_dir"
                )
            atomic_write_text(self.config_path, yaml.safe_dump(record, sort_keys=False))
            return
        try:
            old = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ValueError(f"{self.config_path}: unreadable ({e})") from None
        if not isinstance(old, dict) or old.get("run_format") != RUN_FORMAT:
            raise ValueError(
                f"run_dir {str(self.root)!r} was made by an incompatible version "
                f"(run_format {old.get('run_format') if isinstance(old, dict) else None!r}, "
                f"this version writes {RUN_FORMAT}); choose another run_dir"
            )
        diffs = _differences(_normalized(old.get("config") or {}, normalize), resolved)
        diffs = [d for d in diffs if d.split(":")[0] not in RESUMABLE_CHANGES]
        if diffs:
            raise ValueError(
                f"run_dir {str(self.root)!r} was made by another config; it differs in "
                + "; ".join(diffs[:6])
                + " (use another run_dir, or the same config to resume)"
            )
        if old["config"] != resolved:  # an allowed change (iterations): record it
            atomic_write_text(self.config_path, yaml.safe_dump(record, sort_keys=False))


def _normalized(stored: dict, normalize: Callable[[dict], dict] | None) -> dict:
    """The stored config in today's form; as stored when it no longer reads (its differences
    then name the keys)."""
    if normalize is None:
        return stored
    try:
        return normalize(stored)
    except ValueError:
        return stored


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            out += _differences(old.get(k), new.get(k), key)
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]
