"""Comparison 1: the loss kernel (forward + backward of the DPO objective), every contender on the
same seeded inputs, one fresh worker process per contender (all of its sizes run in it)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from . import checks
from .cells import run_cell


def describe(r: dict) -> str:
    if r.get("status") != "ok":
        return r.get("status", "?")
    return f"{r['timing']['median_s'] * 1e3:9.1f} ms  {r['memory']['peak_bytes'] / 2**20:8.1f} MiB"


def _check_file(tmp: Path, key: str, N: int, d: int, V: int) -> str:
    return str(tmp / f"{key}_{N}_{d}_{V}.pt")


def run_matrix(
    prof: dict,
    contenders: list[str],
    sizes: list[tuple[int, int, int]],
    *,
    warmup: int,
    repeats: int,
    isolate: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Every contender at every (N, d, V); rows carry timing, memory and a correctness check
    against the tests' float64 reference at the same size where it ran (small sizes), else the
    naive contender, else lrdpo-fast's."""
    tmp = Path(tempfile.mkdtemp(prefix="lrdpo-bench-"))
    rows: list[dict] = []
    try:
        for key in contenders:
            cells = [
                {
                    "kind": "kernel",
                    "contender": key,
                    "N": N,
                    "d": d,
                    "V": V,
                    "dtype": prof["dtype"],
                    "device": prof["device"],
                    "warmup": warmup,
                    "repeats": repeats,
                    "seed": 0,
                    "check_path": _check_file(tmp, key, N, d, V),
                }
                for (N, d, V) in sizes
            ]
            spec = {"kind": "kernel_cells", "contender": key, "cells": cells}
            res = run_cell(spec, isolate=isolate, timeout=prof.get("cell_timeout", 600) * len(cells))
            got = res.get("rows") or [
                {
                    **{k: c[k] for k in ("contender", "N", "d", "V", "dtype", "device")},
                    "status": res.get("status", "n/a: no result"),
                }
                for c in cells
            ]
            for r in got:
                r.pop("traceback", None) if r.get("status") == "ok" else None
                log(f"  {key:<20} N={r['N']:<6} d={r['d']:<5} V={r['V']:<7} {describe(r)}")
            rows.extend(got)
        for N, d, V in sizes:
            attach_checks(
                [r for r in rows if (r["N"], r["d"], r["V"]) == (N, d, V)],
                lambda key, N=N, d=d, V=V: _check_file(tmp, key, N, d, V),
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def attach_checks(rows: list[dict], path_of: Callable[[str], str]) -> None:
    loaded = {r["contender"]: checks.load(path_of(r["contender"])) for r in rows if r.get("status") == "ok"}
    ref_key = next((k for k in ("reference64", "naive", "lrdpo_fast") if loaded.get(k) is not None), None)
    if ref_key is None:
        return
    for r in rows:
        got = loaded.get(r["contender"])
        if got is None:
            continue
        errs = checks.compare(got, loaded[ref_key])
        r["check"] = {"reference": ref_key, "errors": errs, "verdict": checks.verdict(errs, r["dtype"])}


def run_kernel(
    prof: dict, *, isolate: bool = True, log: Callable[[str], None] = print, contenders: list[str] | None = None
) -> dict:
    k = prof["kernel"]
    log(f"kernel: N={k['N']} d={k['d']} V={k['V']} {prof['dtype']} on {prof['device']}")
    rows = run_matrix(
        prof,
        contenders or k["contenders"],
        [(k["N"], k["d"], k["V"])],
        warmup=k["warmup"],
        repeats=k["repeats"],
        isolate=isolate,
        log=log,
    )
    return {
        "config": {key: k[key] for key in ("N", "d", "V", "warmup", "repeats")} | {"dtype": prof["dtype"]},
        "rows": rows,
    }
