"""Where a result came from: device name, library versions, git commit, matmul throughput."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
LIBRARIES = (
    "torch",
    "triton",
    "transformers",
    "trl",
    "liger_kernel",
    "cut_cross_entropy",
    "lrdpo_fast",
    "numpy",
    "accelerate",
    "datasets",
)


def slug(text: str) -> str:
    """'AMD EPYC 7B13 64-Core' -> 'amd-epyc-7b13-64-core'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_label(device: str) -> str:
    """Human-readable device: the GPU name on CUDA, the CPU model elsewhere."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_model()


def device_slug(device: str) -> str:
    """Results folder name: 'cpu-amd-epyc' or 'cuda-nvidia-h100-80gb-hbm3'."""
    return ("cuda-" if device.startswith("cuda") else "cpu-") + slug(device_label(device))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def versions() -> dict[str, str]:
    """Installed versions of the libraries the comparisons touch ('missing' when absent)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    dist_names = {"liger_kernel": "liger-kernel", "cut_cross_entropy": "cut-cross-entropy", "lrdpo_fast": "lrdpo-fast"}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(dist_names.get(name, name))
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def git_commit() -> str:
    """HEAD commit of the repo, with '-dirty' when tracked lrdpo_fast/kernels/bench files changed."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "lrdpo_fast", "kernels", "bench"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (head or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def metadata_record(device: str) -> dict:
    """Everything recorded next to every result."""
    rec = {
        "device": device,
        "device_name": device_label(device),
        "device_slug": device_slug(device),
        "versions": versions(),
        "git_commit": git_commit(),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        rec["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    return rec


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_throughput(device: str, dtype: torch.dtype, size: int, repeats: int = 7) -> dict:
    """Measured dense matmul FLOP/s of a [size, size] @ [size, size] product (best of ``repeats``)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    return {
        "shape": [size, size, size],
        "dtype": str(dtype).replace("torch.", ""),
        "median_s": med,
        "best_s": times[0],
        # the best repeat: on a shared machine noise only slows a matmul down, and the roofline
        # and the GPU throughput goal should compare against what the hardware can do
        "flops_per_s": 2.0 * size**3 / times[0],
        "median_flops_per_s": 2.0 * size**3 / med,
        "times_s": times,
    }
