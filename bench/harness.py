"""The one subprocess harness of the benchmarks and the memory tests: run a function in a fresh
Python process, get its JSON result back, and measure time and peak memory there the same way.

Parent side::

    from bench.harness import run_isolated
    result = run_isolated("bench.worker:run", {"kind": "kernel", ...}, timeout=600)

starts ``python -m bench.harness bench.worker:run '<json spec>'`` in the repository root (the
repo on PYTHONPATH, warnings off, tokenizers single-threaded). The child imports the target (a
dotted module, or a ``path/to/file.py`` relative to the repo), calls it with the spec dict and
prints one line ``HARNESS_RESULT {json}``; the parent returns that dict. A child that raises,
crashes, is killed (out of memory) or times out gives ``{"status": "n/a: reason"}`` instead, so
one broken contender never stops a suite. ``in_process=True`` calls the target here (smoke tests).

Child side: ``peak_growth(work, device)`` (bench/memory.py: CUDA allocated-memory growth, or CPU
resident high-water growth after malloc_trim with large blocks unmapped on free) and
``time_step(step, device, warmup, repeats)`` (bench/timing.py: warm-up, then the median).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from .memory import peak_growth, release_heap, rss_bytes  # noqa: F401  (the harness's measuring half)
from .timing import time_step  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
MARK = "HARNESS_RESULT "

__all__ = ["MARK", "REPO", "failure_reason", "peak_growth", "resolve", "run_isolated", "time_step"]


def failure_reason(e: BaseException) -> str:
    """'n/a: out of memory' or 'n/a: Type: first line of the message'."""
    text = str(e).strip()
    if type(e).__name__ == "OutOfMemoryError" or "out of memory" in text.lower():
        return "n/a: out of memory"
    if text.startswith("n/a:"):
        return text.splitlines()[0][:240]
    first = text.splitlines()[0] if text else ""
    return f"n/a: {type(e).__name__}: {first[:200]}"


def resolve(target: str) -> Callable[[dict], dict]:
    """``"pkg.module:function"`` or ``"path/file.py:function"`` (relative to the repo) -> the function."""
    where, _, name = target.partition(":")
    if not name:
        raise ValueError(f"target must be 'module:function' or 'file.py:function', got {target!r}")
    if where.endswith(".py"):
        path = Path(where) if Path(where).is_absolute() else REPO / where
        spec = importlib.util.spec_from_file_location(f"_harness_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, name)


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def run_isolated(target: str, spec: dict, *, timeout: float = 900.0, in_process: bool = False,
                 env: dict | None = None, verbose: bool = False) -> dict:
    """``target(spec)`` in a fresh process (or here with ``in_process``): its result dict, or
    ``{"status": "n/a: ..."}`` when it raised, crashed, was killed or ran past ``timeout`` s."""
    if in_process:
        try:
            return resolve(target)(spec)
        except Exception as e:  # noqa: BLE001 - the same contract as a child
            return {"status": failure_reason(e), "traceback": traceback.format_exc(limit=8)}
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.harness", target, json.dumps(spec)], cwd=REPO,
                              env=child_env(env), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"n/a: timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    if verbose:
        print(proc.stderr[-4000:], file=sys.stderr)
    if proc.returncode < 0 or proc.returncode == 137:
        sig = -proc.returncode if proc.returncode < 0 else 9
        return {"status": f"n/a: worker killed (signal {sig}; out of memory?)"}
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {"status": f"n/a: worker exited {proc.returncode}: {tail}"}


def main(argv: list[str]) -> int:
    """Child entry: ``python -m bench.harness TARGET 'JSON'``; prints the marker line, exits 0."""
    target, spec = argv[0], json.loads(argv[1])
    try:
        result = resolve(target)(spec)
    except Exception as e:  # noqa: BLE001 - reported on the marker line
        result = {"status": failure_reason(e), "traceback": traceback.format_exc(limit=8)}
    sys.stdout.flush()
    print(MARK + json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
