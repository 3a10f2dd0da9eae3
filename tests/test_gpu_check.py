"""The verdicts `./dev gpu-check` prints last (bench/gpu_check.py), on made-up results (no GPU)."""

from bench.gpu_check import goal_lines, short_table

N, D, V = 16384, 4096, 128256
FLOPS = 6.0 * N * D * V


def _row(key, ms, gib):
    return {
        "contender": key,
        "status": "ok",
        "N": N,
        "d": D,
        "V": V,
        "dtype": "bf16",
        "timing": {"median_s": ms / 1e3},
        "memory": {"peak_bytes": gib * 2**30},
        "check": {"verdict": "ok"},
    }


def _results(me_ms, me_gib):
    return {"kernel": {"rows": [_row("lrdpo_fast", me_ms, me_gib), _row("liger", 150.0, 9.0), _row("cce", 120.0, 5.0)]}}


def test_goal_met_and_not_met():
    fast_ms = FLOPS / 650e12 * 1e3  # 650 TFLOP/s
    (auto, *_rest) = goal_lines(_results(fast_ms, 4.0))
    assert auto.startswith("goal [lrdpo_fast]: MET"), auto
    # each condition alone makes it fail: throughput, speed vs a peer, memory vs CCE
    assert "NOT MET" in goal_lines(_results(FLOPS / 550e12 * 1e3, 4.0))[0]
    slow = _results(fast_ms, 4.0)
    slow["kernel"]["rows"][2]["timing"]["median_s"] = fast_ms / 2e3
    assert "NOT MET" in goal_lines(slow)[0]
    assert "NOT MET" in goal_lines(_results(fast_ms, 5.5))[0]
    missing = _results(fast_ms, 4.0)
    missing["kernel"]["rows"].pop(2)  # CCE did not run: not met, never silently met
    assert "NOT MET" in goal_lines(missing)[0]
    assert "not measured" in goal_lines({})[0]


def test_short_table_lists_rows_and_decisions():
    probe = {
        "dispatch": {
            "report": {
                "fused|N=16384": {"backend": "torch", "source": "measured", "times_ms": {"torch": 80.0, "triton": 95.0}}
            }
        }
    }
    text = short_table(_results(100.0, 4.0), probe, {"gpu-marker": {"rc": 0, "tail": "10 passed"}})
    assert "| lrdpo_fast | 100.0 |" in text and "| cce | 120.0 |" in text
    assert "fused|N=16384 -> torch" in text and "rc=0 10 passed" in text
