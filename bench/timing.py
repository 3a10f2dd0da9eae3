"""Wall time of a step: warm-up calls, then the median of timed repeats (device synchronized)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from .env import sync


def time_step(step: Callable[[], object], device: str, warmup: int, repeats: int) -> dict:
    """{"median_s", "min_s", "times_s", "warmup_s"}: warm-up times are kept for the record
    (the first one includes torch.compile / autotuning)."""
    warm = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        step()
        sync(device)
        warm.append(time.perf_counter() - t0)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times, "warmup_s": warm}
