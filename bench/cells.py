"""Run a benchmark cell (bench/worker.py) through the harness: a fresh process, or in-process for
the smoke test."""

from __future__ import annotations

from .harness import run_isolated

WORKER = "bench.worker:run"


def run_cell(spec: dict, *, isolate: bool = True, timeout: float = 900.0, verbose: bool = False) -> dict:
    """The worker's result dict; a crash, kill or timeout becomes {"status": "n/a: ..."} with the
    cell's identity (contender or trainer, sizes, dtype, device)."""
    if not isolate:
        from .worker import run

        return run(spec, isolated=False)
    result = run_isolated(WORKER, spec, timeout=timeout, verbose=verbose)
    if set(result) <= {"status", "traceback"} and str(result.get("status", "")).startswith("n/a"):
        return {**_ident(spec), **result}
    return result


def _ident(spec: dict) -> dict:
    keys = ("contender", "trainer", "N", "d", "V", "dtype", "device")
    return {k: spec[k] for k in keys if k in spec}
