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

``monitor=True`` also measures the child from the outside: its wall time from launch to exit
(interpreter start and imports included) and the peak resident memory of its whole process tree
(the sum over the child and its descendants, sampled every 20 ms), under ``result["process"]``.

Child side: ``peak_growth(work, device)`` (bench/memory.py: CUDA allocated-memory growth, or CPU
resident high-water growth after malloc_trim with large blocks unmapped on free) and
``time_step(step, device, warmup, repeats)`` (bench/timing.py: warm-up, then the median). Both
load torch on first use only, so a child that needs no torch starts as fast as a plain script.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARK = "HARNESS_RESULT "

__all__ = ["MARK", "REPO", "failure_reason", "peak_growth", "resolve", "run_isolated", "time_step"]


def peak_growth(work: Callable[[], object], device: str, isolated: bool = True) -> dict:
    """Peak memory growth of ``work()`` (bench/memory.py's ``peak_growth``)."""
    from .memory import peak_growth as measure

    return measure(work, device, isolated=isolated)


def time_step(step: Callable[[], object], device: str, warmup: int, repeats: int) -> dict:
    """Warm-up calls, then the median of ``repeats`` timed ones (bench/timing.py's ``time_step``)."""
    from .timing import time_step as measure

    return measure(step, device, warmup, repeats)


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


def run_isolated(
    target: str,
    spec: dict,
    *,
    timeout: float = 900.0,
    in_process: bool = False,
    env: dict | None = None,
    verbose: bool = False,
    monitor: bool = False,
) -> dict:
    """``target(spec)`` in a fresh process (or here with ``in_process``): its result dict, or
    ``{"status": "n/a: ..."}`` when it raised, crashed, was killed or ran past ``timeout`` s.
    ``monitor``: add ``"process": {"wall_s", "peak_rss_bytes"}`` of the child's process tree."""
    if in_process:
        try:
            return resolve(target)(spec)
        except Exception as e:  # noqa: BLE001 - the same contract as a child
            return {"status": failure_reason(e), "traceback": traceback.format_exc(limit=8)}
    cmd = [sys.executable, "-m", "bench.harness", target, json.dumps(spec)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(env), stdout=out, stderr=err, text=True)
        peak = _watch(proc, timeout) if monitor else None
        try:
            returncode = proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return {"status": f"n/a: timed out after {timeout:.0f} s"}
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if peak is not None and peak < 0:
        return {"status": f"n/a: timed out after {timeout:.0f} s"}
    process = {"wall_s": wall, "peak_rss_bytes": peak} if monitor else None
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):
            result = json.loads(line[len(MARK) :])
            result = result if isinstance(result, dict) else {"value": result}
            return {**result, "process": process} if monitor else result
    if verbose:
        print(stderr[-4000:], file=sys.stderr)
    if returncode < 0 or returncode == 137:
        sig = -returncode if returncode < 0 else 9
        return {"status": f"n/a: worker killed (signal {sig}; out of memory?)"}
    tail = (stderr.strip().splitlines() or ["no output"])[-1][:200]
    return {"status": f"n/a: worker exited {returncode}: {tail}"}


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and all its descendants (0 once it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _watch(proc: subprocess.Popen, timeout: float, interval: float = 0.02) -> int:
    """Peak process-tree RSS until ``proc`` exits; -1 (after killing it) past ``timeout``."""
    t0 = time.perf_counter()
    peak = 0
    while proc.poll() is None:
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            proc.wait()
            return -1
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(interval)
    return peak


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
