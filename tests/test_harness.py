"""bench/harness.py, the one subprocess harness of the benchmarks and the memory tests: results come
back from a fresh process, every failure becomes an "n/a" status, and the outside measurement
(wall time, peak RSS of the process tree) sees what the child allocates."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ lives at the repo root, not in the package

from bench.harness import run_isolated  # noqa: E402

HERE = "tests/test_harness.py"
MIB = 2**20


# ---- targets run in the child (loaded by file path) ------------------------------------------------
def echo(spec: dict) -> dict:
    return {"status": "ok", "spec": spec, "pid": os.getpid()}


def allocate(spec: dict) -> dict:
    block = bytearray(spec["mib"] * MIB)
    for i in range(0, len(block), 4096):  # touch every page: resident, not just reserved
        block[i] = 1
    time.sleep(spec.get("hold_s", 0.5))
    return {"status": "ok", "bytes": len(block)}


def boom(spec: dict) -> dict:
    raise ValueError("boom " + spec["why"])


def die(spec: dict) -> dict:
    os.kill(os.getpid(), signal.SIGKILL)
    return {"status": "unreachable"}


def sleep(spec: dict) -> dict:
    time.sleep(spec["s"])
    return {"status": "ok"}


# ---- tests ---------------------------------------------------------------------------------------------
def test_result_comes_back_from_another_process():
    r = run_isolated(f"{HERE}:echo", {"x": [1, 2], "s": "é"}, monitor=True)
    assert r["status"] == "ok" and r["spec"] == {"x": [1, 2], "s": "é"}
    assert r["pid"] != os.getpid()
    assert r["process"]["wall_s"] > 0 and r["process"]["peak_rss_bytes"] > 0


def test_in_process_is_the_same_call():
    r = run_isolated(f"{HERE}:echo", {"x": 1}, in_process=True)
    assert r == {"status": "ok", "spec": {"x": 1}, "pid": os.getpid()}
    assert run_isolated(f"{HERE}:boom", {"why": "here"}, in_process=True)["status"] == "n/a: ValueError: boom here"


def test_process_tree_peak_sees_the_child_allocation():
    small = run_isolated(f"{HERE}:allocate", {"mib": 1}, monitor=True)["process"]["peak_rss_bytes"]
    big = run_isolated(f"{HERE}:allocate", {"mib": 300}, monitor=True)["process"]["peak_rss_bytes"]
    assert big - small >= 250 * MIB, (small / MIB, big / MIB)


def test_failures_become_status_lines():
    assert run_isolated(f"{HERE}:boom", {"why": "there"})["status"] == "n/a: ValueError: boom there"
    assert run_isolated(f"{HERE}:die", {})["status"].startswith("n/a: worker killed (signal 9")
    t0 = time.perf_counter()
    assert run_isolated(f"{HERE}:sleep", {"s": 60}, timeout=3)["status"] == "n/a: timed out after 3 s"
    assert run_isolated(f"{HERE}:sleep", {"s": 60}, timeout=3, monitor=True)["status"] == "n/a: timed out after 3 s"
    assert time.perf_counter() - t0 < 40
    assert run_isolated("bench.no_such_module:run", {})["status"].startswith("n/a: ModuleNotFoundError")
