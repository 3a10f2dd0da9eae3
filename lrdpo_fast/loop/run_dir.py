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
phase it was in. The marker records the size and sha256 of every output it vouches for
(``PHASE_OUTPUTS``); ``damage`` says how the files differ from that record, so a resume never
trusts a file that was cut, changed or lost after its phase completed (it redoes the phase). The
config record (``config.yaml``) is ``run_record.py``'s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_write_json
from ..data.digests import damage, outputs_digest

PHASES = ("sample", "score", "pairs", "train")
# what each phase's marker vouches for (files or folders of iter_{i}/): what later phases read
PHASE_OUTPUTS = {
    "sample": ("samples.jsonl",),
    "score": ("scores.jsonl",),
    "pairs": ("pairs.jsonl", "pairs_stats.json"),
    "train": ("policy",),
}


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
        """Write the marker of a phase whose outputs are all in place; ``info`` is kept in it,
        with ``outputs``: the size and sha256 of each file of ``PHASE_OUTPUTS[phase]``."""
        outputs = outputs_digest(self.root, [f"iter_{i}/{name}" for name in PHASE_OUTPUTS[phase]])
        atomic_write_json(self.marker(i, phase), {**info, "outputs": outputs})

    def damage(self, i: int, phase: str) -> str | None:
        """How the outputs of a complete phase differ from what its marker recorded (one phrase
        naming the file), or None when they are whole (or the marker predates the record)."""
        recorded = self.done_info(i, phase).get("outputs")
        return None if recorded is None else damage(self.root, recorded)

    def undo(self, i: int, phase: str) -> None:
        """Forget that ``phase`` of iteration ``i`` completed (its marker goes; it will be redone)."""
        self.marker(i, phase).unlink(missing_ok=True)

    def done_info(self, i: int, phase: str) -> dict[str, Any]:
        """What ``mark_done`` stored for a complete phase (ValueError naming a damaged marker)."""
        path = self.marker(i, phase)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: damaged phase marker ({e}); delete it to redo the {phase} phase") from None

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
