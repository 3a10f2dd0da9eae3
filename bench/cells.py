"""Run a benchmark cell in a fresh worker process (or in-process for the smoke test)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from .env import REPO
from .worker import MARK


def run_cell(spec: dict, *, isolate: bool = True, timeout: float = 900.0, verbose: bool = False) -> dict:
    """The worker's result dict; a crash, kill or timeout becomes {"status": "n/a: ..."}."""
    if not isolate:
        from .worker import run

        return run(spec, isolated=False)
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.worker", json.dumps(spec)], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {**_ident(spec), "status": f"n/a: timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
    if verbose:
        print(proc.stderr[-4000:], file=sys.stderr)
    if proc.returncode < 0 or proc.returncode == 137:
        return {**_ident(spec), "status": f"n/a: worker killed (signal {-proc.returncode}; out of memory?)"}
    return {**_ident(spec), "status": f"n/a: worker exited {proc.returncode}: {tail}"}


def _ident(spec: dict) -> dict:
    keys = ("contender", "trainer", "N", "d", "V", "dtype", "device")
    return {k: spec[k] for k in keys if k in spec}
