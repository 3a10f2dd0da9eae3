"""Peak memory of one piece of work, measured the same way for every contender.

CUDA: ``torch.cuda.max_memory_allocated`` growth over the allocation at the start (inputs and
leaves are part of the baseline, gradients and every temporary are part of the peak).

CPU: resident-set high-water growth inside a fresh worker process. After warm-up (so
torch.compile and lazy imports are not counted) the worker returns freed heap memory to the OS
(``malloc_trim``), makes every allocation above 64 KiB a private mapping that is unmapped on
free (``mallopt(M_MMAP_THRESHOLD)``: RSS then tracks live bytes instead of allocator caches),
resets the kernel's high-water mark (``/proc/self/clear_refs`` <- 5) and reads ``VmHWM`` after
the step. Where the reset is refused it falls back to ``ru_maxrss`` since process start.
"""

from __future__ import annotations

import ctypes
import gc
import resource
from collections.abc import Callable
from pathlib import Path

import torch

M_MMAP_THRESHOLD = -3
STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_heap() -> None:
    """gc + malloc_trim(0): give freed heap pages back so RSS reflects live memory."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def unmap_on_free() -> bool:
    """Make allocations above 64 KiB mmap'd (returned to the OS on free). False if unsupported."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024))


def reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_growth(work: Callable[[], object], device: str, isolated: bool = True) -> dict:
    """Run ``work()`` once and return {"peak_bytes", "baseline_bytes", "method"}.

    ``isolated=False`` (in-process runs such as the smoke test) leaves malloc's settings alone."""
    if device.startswith("cuda"):
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        work()
        torch.cuda.synchronize()
        return {
            "peak_bytes": torch.cuda.max_memory_allocated() - base,
            "baseline_bytes": base,
            "method": "cuda max_memory_allocated growth",
        }
    if isolated:
        unmap_on_free()
    release_heap()
    if reset_hwm():
        base = rss_bytes()
        work()
        hwm = _status_kib("VmHWM")
        if hwm is not None:
            return {
                "peak_bytes": max(0, hwm * 1024 - base),
                "baseline_bytes": base,
                "method": "VmHWM growth after clear_refs reset",
            }
    base = rss_bytes()
    work()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "peak_bytes": max(0, maxrss - base),
        "baseline_bytes": base,
        "method": "ru_maxrss growth (HWM reset refused: includes warm-up)",
    }
