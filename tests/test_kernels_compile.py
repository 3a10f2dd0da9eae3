"""The Triton kernels compile for real GPUs (H100 sm_90, A100 sm_80) even on a CPU-only machine.

The interpreter that runs the kernel tests on the CPU is more lenient than the compiler (types,
control flow, shapes of tl.dot), so every launch variant is also compiled ahead of time here.
"""

import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).with_name("compile_kernels.py")


@pytest.mark.parametrize("sm", [90, 80])
def test_kernels_compile_for_cuda(sm):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = subprocess.run([sys.executable, str(SCRIPT), str(sm)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    all_lines = out.stdout.strip().splitlines()
    lines = [line for line in all_lines if not line.startswith("autotune ")]
    tuned = [line.split() for line in all_lines if line.startswith("autotune ")]
    # per dtype 3 fwd + 4 bwd variants (one of each soft-capped); 5 pair losses; the row pass: lse
    # with and without the cap, and per dtype the gradient plain, with block max, soft-capped
    assert len(lines) == 3 * 7 + 5 + 2 + 3 * 3, out.stdout
    # every variant fits the shared memory of an A100 (164 KiB) and an H100 (228 KiB)
    shared = [int(line.rsplit("shared=", 1)[1]) for line in lines]
    assert max(shared) <= 164 * 1024, out.stdout
    # every autotuned tile a device would try fits that device: A100-class (163 KiB) for the big
    # family, ~100 KiB consumer GPUs for the small one; each family has configs for both kernels
    # in 16-bit and float32
    assert {(t[1], t[2], t[3]) for t in tuned} == {
        (f, k, dt) for f in ("big", "small") for k in ("fwd", "bwd") for dt in ("bf16", "fp32")
    }, out.stdout
    for t in tuned:
        fields = dict(kv.split("=") for kv in t[5:])
        assert int(fields["shared"]) <= int(fields["limit"]), " ".join(t)
