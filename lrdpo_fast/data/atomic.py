"""Crash-safe writes: a file or folder is either absent, the old one, or complete.

Every output a later run reads as complete (run-directory files, checkpoints, saved policies) is
written next to its final path, flushed with fsync, and renamed into place (``os.replace`` is
atomic on POSIX). ``fault_point(name)`` lets tests kill the process at a named point
(``LRDPO_FAULT=name`` or ``name@k`` for its k-th hit): the kill-and-resume tests use it to stop a
run between a temp write and its rename, mid-sampling or mid-training, with a real SIGKILL.

A write the file system refuses (a full disk: ENOSPC, a file size limit: EFBIG, a quota) leaves
nothing behind (the temp file or staging folder is removed) and raises ``WriteFailedError``, a
``ValueError`` naming the final path and the cause: the CLI prints it as one line, and the same
command continues once there is room (nothing was marked complete).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

FAULT_ENV = "LRDPO_FAULT"
_fault_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """SIGKILL this process when ``LRDPO_FAULT`` names this point (``name`` or ``name@k``: its
    k-th hit, counting from 1). A no-op otherwise (one environment lookup)."""
    want = os.environ.get(FAULT_ENV)
    if not want:
        return
    target, _, nth = want.partition("@")
    if target != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


DISK_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
# how libraries that do not raise OSError say the same (safetensors' Rust I/O errors, torch.save)
_DISK_WORDS = ("no space left", "file too large", "disk quota", "file write failed", "code: 27,", "code: 28,")


class WriteFailedError(ValueError):
    """A write the file system refused (disk full, file size limit, quota): nothing of it was kept."""


def disk_failure(e: BaseException) -> str | None:
    """The cause, when ``e`` is the file system refusing a write, else None."""
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
        return f"{e.strerror} ({errno.errorcode[e.errno]})"
    text = str(e).strip()
    if any(w in text.lower() for w in _DISK_WORDS):
        return text.splitlines()[0]
    return None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def cleaned_on_failure(path: str | os.PathLike, staging: str | os.PathLike) -> Iterator[None]:
    """Remove ``staging`` (the temp file or folder of ``path``) when the block fails; a failure of
    the file system becomes a ``WriteFailedError`` naming ``path`` and the cause."""
    try:
        yield
    except Exception as e:
        _remove(Path(staging))
        reason = disk_failure(e)
        if reason is None:
            raise
        raise WriteFailedError(
            f"could not write {str(path)!r}: {reason}; nothing of it was kept, and the same command "
            "continues once there is room"
        ) from e


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through ``path.tmp`` + fsync + rename. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with cleaned_on_failure(path, tmp), open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    fault_point("before_rename")
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def dumps_record(record: Mapping[str, Any]) -> str:
    """One JSONL line (no newline): keys in insertion order, NaN/inf refused (ValueError)."""
    return json.dumps(record, ensure_ascii=True, allow_nan=False)


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``records`` as JSONL atomically (see ``atomic_write_text``)."""
    return atomic_write_text(path, "".join(dumps_record(r) + "\n" for r in records))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def begin_dir(path: str | os.PathLike) -> Path:
    """The empty staging folder ``path.partial`` for a folder that ``commit_dir`` puts in place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """fsync every file of the staging folder ``tmp`` and rename it to ``path`` (replacing it)."""
    tmp, path = Path(tmp), Path(path)
    _fsync_tree(tmp)
    fault_point("before_rename")
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder at ``path`` atomically: yields ``path.partial`` (emptied first) to write
    into; on success it is fsynced and replaces ``path``. On an exception the staging folder is
    removed and the exception propagates (a refused write as ``WriteFailedError``); a killed
    process leaves it as ``.partial``, never read as complete."""
    tmp = begin_dir(path)
    with cleaned_on_failure(path, tmp):
        yield tmp
        commit_dir(tmp, path)
