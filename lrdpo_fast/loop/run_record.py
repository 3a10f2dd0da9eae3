"""``run_dir/config.yaml``: what a run computes, so a resume can tell its own run from another.

    run_format: 1
    lrdpo_fast_version: 0.1.0
    config: {...}                  # IterateConfig.to_dict(), paths absolute
    inputs: {prompts: {path: /abs/prompts.jsonl, digest: {".": {size, sha256}}}, policy: ...}

A run directory is identified by what it computes, not where it lies: a resume compares the
config without the keys that only say where things are (``run_dir``, and every input path whose
content is recorded), and the inputs by content (the digests). So the folder (or the project
around it) can move or be copied to another machine and resume, and ``lrdpo-fast iterate`` can
extend a run that ``lrdpo-fast demo`` started. Only ``iterations`` and the trackers (``report_to``)
may change on a resume.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_write_text
from ..data.digests import damage, tree_digest

RUN_FORMAT = 1
# keys a resumed run may change: how far it goes, and where its metrics are copied to
RESUMABLE_CHANGES = ("iterations", "report_to", "train.report_to")
LOCATION_KEYS = ("run_dir",)  # where the run lies: never compared
# how the engine starts, not what the run computes (a resume reuses the recorded mode: engine_mode.py)
ENGINE_KEYS = ("sampler.enforce_eager",)


def input_record(paths: Mapping[str, str | None]) -> dict[str, dict[str, Any]]:
    """``{key: {"path", "digest"}}`` of the input files and folders among ``paths`` (dotted config
    keys -> paths; None, 'example' and paths that do not exist are left out)."""
    out = {}
    for key, path in paths.items():
        if path and Path(path).exists():
            out[key] = {"path": str(path), "digest": tree_digest(path)}
    return out


def check_or_write(
    config_path: Path,
    resolved: dict[str, Any],
    version: str,
    inputs: dict[str, dict[str, Any]],
    normalize: Callable[[dict], dict] | None = None,
) -> None:
    """First start: write the record. Resume: refuse (ValueError saying what differs) a run
    directory made by another config, on other inputs (by content) or in an incompatible run
    format. ``normalize`` puts a stored config in today's form first (defaults an older version
    did not write), so only real differences count."""
    import yaml

    record = {"run_format": RUN_FORMAT, "lrdpo_fast_version": version, "config": resolved, "inputs": inputs}
    root = config_path.parent
    started = root.exists() and any(p.name.startswith("iter_") for p in root.iterdir())
    if not config_path.exists() and started:
        raise ValueError(
            f"run_dir {str(root)!r} holds iterations but no config.yaml: not a run "
            "directory this version can resume; choose another run_dir"
        )
    if not started:  # a first start (or one that stopped before any iteration): record it
        atomic_write_text(config_path, yaml.safe_dump(record, sort_keys=False))
        return
    old = read_record(config_path)
    old_inputs = old.get("inputs") or {}
    _check_inputs(old_inputs, inputs)
    skip = set(LOCATION_KEYS) | set(old_inputs) | set(RESUMABLE_CHANGES) | set(ENGINE_KEYS)
    diffs = _differences(_normalized(old.get("config") or {}, normalize), resolved)
    diffs = [d for d in diffs if d.split(":")[0] not in skip]
    if diffs:
        raise ValueError(
            f"run_dir {str(config_path.parent)!r} was made by another config; it differs in "
            + "; ".join(diffs[:6])
            + " (use another run_dir, or the same config to resume)"
        )
    if old.get("config") != resolved or old_inputs != inputs:  # moved, or iterations changed
        atomic_write_text(config_path, yaml.safe_dump(record, sort_keys=False))


def read_record(config_path: Path) -> dict[str, Any]:
    """The stored record; ValueError naming the file when it is unreadable or of another format."""
    import yaml

    try:
        old = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path}: unreadable ({e}); it records the run's config") from None
    if not isinstance(old, dict) or old.get("run_format") != RUN_FORMAT:
        raise ValueError(
            f"run_dir {str(config_path.parent)!r} was made by an incompatible version "
            f"(run_format {old.get('run_format') if isinstance(old, dict) else None!r}, "
            f"this version writes {RUN_FORMAT}); choose another run_dir"
        )
    return old


def _check_inputs(old_inputs: dict[str, dict], inputs: dict[str, dict]) -> None:
    """Refuse when an input the run started from is gone or has other content now."""
    for key, old in old_inputs.items():
        new = inputs.get(key)
        if new is None:
            raise ValueError(
                f"run_dir was made from {key} {old['path']!r}, which this config does not give or "
                "that does not exist; point the config at the same input to resume"
            )
        what = damage(new["path"], old["digest"])
        if what is not None:
            raise ValueError(
                f"{key} {new['path']!r} is not the input the run started from ({what}); "
                "restore it, or start a new run_dir"
            )


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
