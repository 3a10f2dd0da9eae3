"""``backend="auto"`` on CUDA: measure both backends once per shape bucket and keep the faster.

The fully fused Triton kernels and the chunked path (cuBLAS GEMMs + one Triton row pass) trade
differently with N, d, V, the dtype, the GPU and how peaked the softmax is, so on CUDA the first
call of a bucket runs both on the caller's real inputs (forward + backward, a few repeats timed
with CUDA events), keeps the faster, logs the choice once and caches it in memory and on disk.

Bucket: (op, N rounded up to a power of two, d, V, dtype, device name); ``op`` is "logprobs"
(``linear_logprobs`` / ``sequence_logprobs``) or "fused" (``fused_lrdpo_loss``, whose torch form
differs: gradients formed in the forward sweep), with "+softcap" appended when the logits are
soft-capped (Gemma-2: the cap's tanh and derivative cost the two backends differently, so they are
measured apart; the cap's value does not change the cost and is not in the key) and "/fwd" when
no gradient is wanted (then only the forward is timed).

Order of precedence: an explicit ``backend="torch"|"triton"``; the ``LRDPO_BACKEND`` environment
variable ("torch" or "triton", forcing what "auto" means); off CUDA, "torch" (never measured);
the in-memory choice; the disk cache; a measurement.

Disk cache: ``$LRDPO_CACHE_DIR`` or ``$XDG_CACHE_HOME/lrdpo_fast`` or ``~/.cache/lrdpo_fast``,
file ``backend_choices.json`` ({"version", "versions": {torch, triton, lrdpo_fast}, "choices":
{bucket: {"backend", "times_ms"}}}); a file that cannot be read or parsed, or was written by other
library versions, is ignored (and replaced on the next write); a failed write only logs.

``backend_report()`` returns the last decision per bucket (used by metrics and ``doctor``).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger("lrdpo_fast.dispatch")

BACKENDS = ("triton", "torch")
ENV_VAR = "LRDPO_BACKEND"
CACHE_FILE = "backend_choices.json"
CACHE_VERSION = 1
WARMUP = 1  # untimed calls per backend (Triton compiles and autotunes here)
REPEATS = 3  # timed calls per backend; the median counts

# timer(backend, run) -> seconds of one run() (the median of REPEATS); injectable for tests
Timer = Callable[[str, Callable[[], None]], float]

_lock = threading.Lock()
_memory: dict[str, dict] = {}  # bucket -> {"backend", "times_ms"} (measured or read from disk)
_report: dict[str, dict] = {}  # bucket -> last decision {"backend", "source", "times_ms"}
_timer: Timer | None = None


def cuda_event_timer(backend: str, run: Callable[[], None]) -> float:
    """Median seconds of ``run()`` over REPEATS calls after WARMUP, timed with CUDA events."""
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def set_timer(timer: Timer | None) -> None:
    """Replace the timer (None restores CUDA events). Tests inject a stub here."""
    global _timer
    _timer = timer


def cache_path() -> Path:
    """The JSON file of measured choices under the user's cache folder."""
    root = os.environ.get("LRDPO_CACHE_DIR")
    if root:
        return Path(root) / CACHE_FILE
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "lrdpo_fast" / CACHE_FILE


def _versions() -> dict[str, str]:
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "none"
    from .._version import __version__

    return {"torch": torch.__version__, "triton": tv, "lrdpo_fast": __version__}


def bucket_key(op: str, n: int, d: int, v: int, dtype: torch.dtype, device_name: str) -> str:
    """'op|N=<2^k>|d=..|V=..|<dtype>|<device name>': N rounded up to a power of two."""
    n2 = 1 << max(0, int(n) - 1).bit_length()
    return f"{op}|N={n2}|d={d}|V={v}|{str(dtype).replace('torch.', '')}|{device_name}"


def _read_disk() -> dict[str, dict]:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION or data.get("versions") != _versions():
            return {}
        choices = data["choices"]
        return {k: c for k, c in choices.items() if isinstance(c, dict) and c.get("backend") in BACKENDS}
    except FileNotFoundError:
        return {}
    except Exception as exc:  # unreadable or corrupt: ignore it, it is rewritten on the next write
        log.warning("lrdpo_fast: ignoring unreadable backend cache %s (%s)", path, exc)
        return {}


def _write_disk(key: str, choice: dict) -> None:
    path = cache_path()
    try:
        choices = _read_disk()
        choices[key] = choice
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"version": CACHE_VERSION, "versions": _versions(), "choices": choices}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".backend_choices.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(payload)
        os.replace(tmp, path)
    except Exception as exc:
        log.warning("lrdpo_fast: could not write backend cache %s (%s)", path, exc)


def _record(key: str, backend: str, source: str, times_ms: dict | None = None) -> str:
    with _lock:
        _report[key] = {"backend": backend, "source": source, "times_ms": times_ms}
    return backend


def backend_report() -> dict[str, dict]:
    """The last decision per bucket: {bucket: {"backend": "torch"|"triton", "source": "measured" |
    "memory" | "disk" | "forced" | "env" | "not-cuda" | "torch-only" (float64 or no Triton), "times_ms": {backend: ms} or None}}."""
    with _lock:
        return {k: dict(v) for k, v in _report.items()}


def clear(memory: bool = True, report: bool = True) -> None:
    """Forget the in-memory choices and/or the report (not the disk cache)."""
    with _lock:
        if memory:
            _memory.clear()
        if report:
            _report.clear()


def measure(
    key: str, trial: Callable[[str], None], candidates: tuple[str, ...] = BACKENDS, timer: Timer | None = None
) -> str:
    """The backend for ``key``: from memory, else the disk cache, else timing ``trial(backend)``
    for every candidate (a failing candidate is skipped and logged). Caches and logs once.

    Does not look at devices: callers (``select``) only come here on CUDA.
    """
    with _lock:
        hit = _memory.get(key)
    if hit is not None:
        return _record(key, hit["backend"], "memory", hit.get("times_ms"))
    disk = _read_disk().get(key)
    if disk is not None:
        with _lock:
            _memory[key] = disk
        log.info("lrdpo_fast: backend %s for %s (cached in %s)", disk["backend"], key, cache_path())
        return _record(key, disk["backend"], "disk", disk.get("times_ms"))
    timer = timer or _timer or cuda_event_timer
    times: dict[str, float] = {}
    for backend in candidates:
        try:
            times[backend] = float(timer(backend, lambda b=backend: trial(b)))
        except Exception as exc:  # e.g. a compile error or out of memory: the other one wins
            log.warning("lrdpo_fast: backend %s failed while measuring %s: %s", backend, key, exc)
    if not times:
        raise RuntimeError(f"lrdpo_fast: no backend ran for {key}")
    best = min(times, key=times.get)
    times_ms = {b: round(t * 1e3, 4) for b, t in times.items()}
    choice = {"backend": best, "times_ms": times_ms}
    with _lock:
        _memory[key] = choice
    _write_disk(key, choice)
    log.info("lrdpo_fast: backend %s for %s (measured ms: %s)", best, key, times_ms)
    return _record(key, best, "measured", times_ms)


def select(
    op: str,
    backend: str,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    trial: Callable[[str], None],
    triton_ok: bool,
    timer: Timer | None = None,
) -> str:
    """The backend a call runs on, after ``resolve_backend`` has validated ``backend``.

    op: "logprobs" | "fused" (+ "+softcap", + "/fwd"); hidden [N, d], weight [V, d]; trial(b)
    runs one forward (+ backward) of the call with backend b on copies of the real inputs;
    triton_ok: whether the Triton kernels can run on hidden's device.
    """
    device = hidden.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    key = bucket_key(op, hidden.shape[0], hidden.shape[1], weight.shape[0], hidden.dtype, name)
    if backend != "auto":
        return _record(key, backend, "forced")
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced and forced != "auto":
        if forced not in BACKENDS:
            raise ValueError(f"{ENV_VAR} must be 'torch', 'triton' or 'auto', got {forced!r}")
        if forced == "triton" and not triton_ok:
            raise ValueError(f"{ENV_VAR}=triton but the Triton kernels cannot run on {device}")
        return _record(key, forced, "env")
    if device.type != "cuda" or not triton_ok or hidden.dtype == torch.float64:
        return _record(key, "torch", "not-cuda" if device.type != "cuda" else "torch-only")
    return measure(key, trial, timer=timer)
