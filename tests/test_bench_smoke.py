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
    rows = run_matrix(prof, ["lrdpo_fast", "naive", "reference64"], [(64, 16, 100)], warmup=0, repeats=1,
                      isolate=False, log=lambda _: None)
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
