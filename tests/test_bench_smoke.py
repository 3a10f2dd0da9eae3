"""The benchmark harness still runs: toy-sized kernel comparison, naive vs lrdpo-fast, in-process,
both checked against the tests' float64 reference (tests/reference.py, imported by the bench)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ lives at the repo root, not in the package

from bench import report  # noqa: E402
from bench.kernel import run_matrix  # noqa: E402
from bench.profiles import get_profile  # noqa: E402


def test_kernel_comparison_toy():
    prof = get_profile("smoke")
    rows = run_matrix(
        prof,
        ["lrdpo_fast", "naive", "reference64"],
        [(64, 16, 100)],
        warmup=0,
        repeats=1,
        isolate=False,
        log=lambda _: None,
    )
    assert [r["contender"] for r in rows] == ["lrdpo_fast", "naive", "reference64"]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["timing"]["median_s"] > 0
        assert r["memory"]["peak_bytes"] >= 0
        assert r["check"]["verdict"].startswith("ok"), r["check"]
        assert r["check"]["reference"] == "reference64", r["check"]
    table = report.kernel_table(rows)
    assert "lrdpo-fast" in table and "1.00x" in table
    lines = report.goals({"config": {"N": 64, "d": 16, "V": 100, "dtype": "fp32"}, "rows": rows}, None, "cpu")
    assert len(lines) == 2 and all(line.split()[0] in ("PASS", "FAIL") for line in lines)


def test_loop_table_end_to_end_per_phase_and_verdicts():
    """bench/bench_loop.py's arithmetic: the scripted iteration is its three programs' walls and its
    run that many iterations; each lrdpo-fast variant's run is its process wall, its start-up the wall
    beyond the phases, a later iteration iteration 1's phases; the goal is the run end to end."""
    from bench.bench_loop import render, table

    def proc(wall, mib):
        return {"status": "ok", "process": {"wall_s": wall, "peak_rss_bytes": mib * 2**20}}

    phases = [
        {"sample": 2.0, "score": 0.5, "pairs": 1.0, "train": 4.0},
        {"sample": 1.0, "score": 0.5, "pairs": 0.5, "train": 3.0},
    ]
    res = {
        "scripted": {
            "sample": proc(10.0, 2000) | {"import_s": 3, "engine_s": 4, "generate_s": 2},
            "score": proc(1.0, 20) | {"pairs": 64},
            "train": proc(20.0, 1500) | {"import_s": 5, "load_s": 1, "train_s": 13, "save_s": 1},
        },
        "variants": {
            "auto": proc(15.5, 1000) | {"phases": phases, "first_sample_s": 3.0, "engine": {"enforce_eager": True}},
            "compiled": proc(40.0, 3000)
            | {"phases": phases, "first_sample_s": 20.0, "engine": {"enforce_eager": False}},
        },
        "config": {"iterations_lrdpo_fast": 2},
    }
    t = table(res)
    assert t["scripted"]["iteration_s"] == 31.0 and t["scripted"]["run_s"] == 62.0
    assert t["scripted"]["peak_rss_bytes"] == 2000 * 2**20
    auto, compiled = t["variants"]["auto"], t["variants"]["compiled"]
    assert auto["startup_s"] == 3.0 and auto["later_iteration_s"] == 5.0 and auto["speedup_run"] == 4.0
    assert auto["goal_time"] is True and auto["goal_memory"] is True
    assert compiled["speedup_run"] == 62.0 / 40.0 and compiled["goal_time"] is False
    assert compiled["memory_ratio"] == 1.5 and compiled["goal_memory"] is False
    res.update(
        table=t,
        vllm_version="x",
        meta={"device_name": "cpu", "host_cpus": 2, "git_commit": "c", "date_utc": "d", "versions": {}},
        config={
            "prompts": 64,
            "n": 4,
            "max_new_tokens": 64,
            "beta": 0.1,
            "alpha": 0.02,
            "threads": 2,
            "learning_rate": 5e-7,
            "pairs_per_step": 8,
            "iterations_lrdpo_fast": 2,
            "parameters": 2e7,
        },
    )
    md = render(res)
    assert "**62.0**" in md and "**15.5** (4.00x)" in md and "6.20x" in md and "**PASS**" in md and "**FAIL**" in md
