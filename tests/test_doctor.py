"""``lrdpo-fast doctor``: the environment report and its self-checks, exit 0 only when all pass."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lrdpo_fast import cli

LABELS = (
    "python:",
    "torch:",
    "triton:",
    "transformers:",
    "vllm:",
    "flash-attn:",
    "liger-kernel:",
    "cuda:",
    "device:",
    "backend auto:",
)


def test_doctor_reports_the_environment_and_passes_the_fused_check(capsys):
    assert cli.main(["doctor", "--skip-vllm"]) == 0
    out = capsys.readouterr().out
    for label in LABELS:
        assert label in out, label
    import torch

    assert f"torch:            {torch.__version__}" in out
    assert "check fused-loss: ok on" in out and "relative errors vs float64" in out
    assert "check vllm:       skipped (--skip-vllm)" in out
    want = "triton" if torch.cuda.is_available() else "torch (no CUDA device"
    assert f"backend auto:     {want}" in out
    assert out.rstrip().endswith("all checks passed")


def test_doctor_exits_1_when_a_check_fails(capsys):
    # the fused round trip cannot run on the meta device: reported as FAILED, exit code 1, no traceback
    assert cli.main(["doctor", "--skip-vllm", "--device", "meta"]) == 1
    captured = capsys.readouterr()
    assert "check fused-loss: FAILED:" in captured.out and "1 check(s) FAILED" in captured.out
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.slow
def test_doctor_full_with_vllm_in_a_fresh_process():
    """The whole doctor as a user runs it, vLLM generation included (its own engine, in a child
    process, so the session's engine is not disturbed)."""
    pytest.importorskip("vllm")
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "lrdpo_fast", "doctor"], capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "check vllm:       ok: 1 token generated" in proc.stdout
    assert "check fused-loss: ok" in proc.stdout
    assert "Traceback" not in proc.stderr
