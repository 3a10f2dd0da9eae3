"""The benchmark harness still runs: toy-sized kernel comparison, naive vs lrdpo-fast, in-process,
both checked against the tests' float64 reference (tests/reference.py, imported by the bench)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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


def test_loop_shapes_table_memory_and_scaling():
    """bench/bench_loop_shapes.py's arithmetic: an iteration is its phases' walls, start-up the process
    wall beyond them, the logits avoided are 4 bytes x tokens x V of the largest batch, and every size
    gets a scaling row (a failed one says why)."""
    from bench.bench_loop_shapes import QWEN25_05B, render, table

    def proc(wall, mib):
        return {"status": "ok", "process": {"wall_s": wall, "peak_rss_bytes": mib * 2**20}}

    def lf(wall, phases, train_tokens, ref_tokens):
        return proc(wall, 4000) | {
            "pairs": [60],
            "phases": [phases],
            "batches": {
                "train_micro_batch_tokens": train_tokens,
                "train_micro_batches_per_step": 1,
                "reference_batch_tokens": ref_tokens,
                "pair_tokens": 6000,
                "max_tokens_per_batch": 8192,
            },
            "phase_memory": {p: {"growth_bytes": 100 * 2**20} for p in ("sample", "score", "pairs", "train")},
        }

    res = {
        "config": {"shape": QWEN25_05B, "parameters": 10**8, "scale": [64, 128], "prompts": 64, "n": 4}
        | {"max_new_tokens": 32, "prompt_median": 16.0, "beta": 0.1, "alpha": 0.02, "learning_rate": 5e-7}
        | {"pairs_per_step": 8, "threads": 2, "layers": 2},
        "scripted": {
            "sample": proc(60.0, 3000),
            "score": proc(1.0, 20) | {"pairs": 60},
            "train": proc(100.0, 9000),
        },
        "scaling": {
            "64": lf(100.0, {"sample": 10.0, "score": 0.5, "pairs": 9.5, "train": 30.0}, 800, 6000),
            "128": {"status": "n/a: out of memory"},
        },
        "load": [{"loadavg": [3.0, 2, 1], "uptime": "up"}, {"loadavg": [5.0, 2, 1], "uptime": "up"}],
    }
    t = table(res)
    row = t["lrdpo_fast"]["64"]
    assert row["iteration_s"] == 50.0 and row["startup_s"] == 50.0 and row["pairs"] == 60
    assert row["train_logits_bytes"] == 4 * 800 * 151936 and row["reference_logits_bytes"] == 4 * 6000 * 151936
    assert t["scripted"]["iteration_s"] == 161.0 and t["scripted"]["peak_rss_bytes"] == 9000 * 2**20
    assert t["speedup"] == 161.0 / 50.0 and t["speedup_with_startup"] == 161.0 / 100.0
    assert t["lrdpo_fast"]["128"] == {"status": "n/a: out of memory"}
    res.update(
        table=t,
        vllm_version="x",
        meta={"device_name": "cpu", "host_cpus": 2, "git_commit": "c", "date_utc": "d", "versions": {}},
    )
    md = render(res)
    assert "**50.0**" in md and "3.22x" in md and "load average 3.00 to 5.00" in md
    assert "| 128 | n/a: out of memory |" in md and f"| 800 | {4 * 800 * 151936 / 2**20:.0f} |" in md


def test_lora_bench_toy_adapters_only_and_less_optimizer_state():
    """bench/bench_lora.py at the smoke profile's size, in-process: both contenders run, LoRA trains
    adapters only with less optimizer state than full fine-tuning, and the report has its goal line."""
    pytest.importorskip("peft")
    from bench.bench_lora import parse_args, render, run

    res = run(parse_args([*get_profile("smoke")["lora"]["args"], "--in-process"]))
    full, lora = res["rows"]["full"], res["rows"]["lora"]
    assert full["status"] == "ok" and lora["status"] == "ok", res["rows"]
    assert full["trainable_params"] == full["base_params"] and not full["frozen_params"]
    assert lora["trainable_params"] > 0 and lora["trainable_non_adapter"] == []
    assert lora["frozen_params"] == lora["base_params"]  # every base weight, the LM head included
    assert 0 < lora["optimizer_state_bytes"] < full["optimizer_state_bytes"]
    assert full["timing"]["median_s"] > 0 and lora["memory"]["peak_bytes"] >= 0
    assert res["goal"]["status"] == "ok" and res["goal"]["need_bytes"] == 8 * lora["frozen_params"]
    md = render(res)
    assert "| full fine-tuning | " in md and ("**PASS**" in md or "**FAIL**" in md)
