"""What a run directory vouches for: the size and sha256 of each file it wrote or read.

A phase marker records ``outputs_digest(...)`` of the files it vouches for, the run config the
digests of its input files and folders; a resume compares them with ``damage(...)`` before it
trusts a file (``loop/run_dir.py``). sha256 runs at about 1-2 GB/s on one core (hashlib, which
uses the CPU's SHA instructions where it has them): a 0.5B-parameter fp32 policy is ~2 s, the
demo's files are milliseconds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> dict[str, int | str]:
    """``{"size": bytes, "sha256": hex}`` of one file."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def tree_files(root: Path) -> list[Path]:
    """Every file under ``root`` (a file is its own tree), sorted by relative path."""
    if root.is_file():
        return [root]
    return sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix())


def outputs_digest(base: str | os.PathLike, names: list[str]) -> dict[str, dict[str, int | str]]:
    """The digest of every file of ``names`` (files or folders, relative to ``base``), keyed by
    its path relative to ``base`` (posix form)."""
    base = Path(base)
    out: dict[str, dict[str, int | str]] = {}
    for name in names:
        for p in tree_files(base / name):
            out[p.relative_to(base).as_posix()] = file_digest(p)
    return out


def damage(base: str | os.PathLike, recorded: dict[str, dict]) -> str | None:
    """How the files under ``base`` differ from ``recorded`` (an ``outputs_digest``): the first
    difference as one phrase (``"iter_1/pairs.jsonl is 512 bytes, 1024 were written"``), or None
    when every file is there, whole. Sizes are compared before any content is read."""
    base = Path(base)
    for rel, want in recorded.items():
        p, name = base / rel, base.name if rel == "." else rel
        if not p.is_file():
            return f"{name} is missing"
        size = p.stat().st_size
        if size != want["size"]:
            return f"{name} is {size} bytes, {want['size']} were written"
    for rel, want in recorded.items():
        if file_digest(base / rel)["sha256"] != want["sha256"]:
            return f"{base.name if rel == '.' else rel} has other content than was written (sha256 differs)"
    return None


def tree_digest(path: str | os.PathLike) -> dict[str, dict[str, int | str]]:
    """The digest of an input (a file, or every file of a folder), keyed by path relative to it
    (``"."`` for a file): the same content gives the same digest wherever it lies."""
    root = Path(path)
    if root.is_file():
        return {".": file_digest(root)}
    return {p.relative_to(root).as_posix(): file_digest(p) for p in tree_files(root)}
