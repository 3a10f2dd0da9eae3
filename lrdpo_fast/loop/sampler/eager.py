"""``enforce_eager: auto``: whether letting vLLM compile the model pays for this run.

Compiling (``enforce_eager: false``) costs a fixed time at the engine's start and saves a share
of every decode step afterwards. On CUDA it always pays (CUDA graphs remove the per-step launch
cost, and vLLM's start is dominated by other work). On the CPU it is a trade measured on this
project's bench model (``MEASURED_CPU``, a ``CompileCosts``; the README's loop section): more seconds at the start
(fewer when vLLM's compile cache already holds this model's graphs), against decoding faster
afterwards. ``choose_enforce_eager`` weighs the two for the tokens the run will generate and says
why; the loop logs the choice and records it in the run directory, so a resume starts the same
engine. On the measured shape compiling saved nothing on the CPU, so there "auto" is eager until
a measurement of another shape says otherwise (pass it as ``costs``).

The cache index (``compile_cache_key`` / ``note_compiled``) is this project's own note of which
model shapes vLLM compiled on this machine (``$VLLM_CACHE_ROOT/lrdpo_fast_compiled.json``);
vLLM's own compile cache (``$VLLM_CACHE_ROOT/torch_compile_cache``) is what is reused.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CompileCosts:
    """What compiling costs and saves on the CPU: ``compile_s`` more seconds at the start (cold
    cache), ``warm_compile_s`` with vLLM's compile cache warm, decoding ``speedup`` times faster
    afterwards, an eager step costing ``eager_s_per_token_per_param`` seconds per generated token
    per parameter (a size-proportional model of one measured shape)."""

    compile_s: float
    warm_compile_s: float
    speedup: float
    eager_s_per_token_per_param: float


# measured on the bench model (19.5M-parameter Llama, fp32, 2 threads; measure_eager in the
# README's loop section): the start +28 s cold / +14 s warm, decoding 0.84x and 1.28x in two loaded runs (no gain to count on)
MEASURED_CPU = CompileCosts(
    compile_s=28.0, warm_compile_s=14.0, speedup=1.0, eager_s_per_token_per_param=4.7e-3 / 19.5e6
)


@dataclass(frozen=True)
class EagerInputs:
    """What ``choose_enforce_eager`` decides from: the engine's device ("cuda" or "cpu"), the
    model's parameter count, the tokens the run will generate (None: unknown), and whether vLLM's
    compile cache already holds this model's graphs."""

    device: str
    parameters: int
    tokens: int | None
    cache_warm: bool = False


def choose_enforce_eager(inputs: EagerInputs, costs: CompileCosts = MEASURED_CPU) -> tuple[bool, str]:
    """(enforce_eager, why) for ``inputs``; ``costs``: the CPU's measured trade (module docstring)."""
    if inputs.device == "cuda":
        return False, "CUDA: compiled graphs pay on every decode step"
    compile_s = costs.warm_compile_s if inputs.cache_warm else costs.compile_s
    cache = "warm" if inputs.cache_warm else "cold"
    if inputs.tokens is None:
        return True, f"CPU, tokens unknown: compiling costs ~{compile_s:.0f} s ({cache} cache) at the start"
    eager_s = inputs.tokens * inputs.parameters * costs.eager_s_per_token_per_param
    saved_s = eager_s * (1.0 - 1.0 / costs.speedup)
    why = (
        f"CPU, {inputs.parameters / 1e6:.1f}M parameters, {inputs.tokens} tokens: compiling would cost "
        f"~{compile_s:.0f} s ({cache} cache) and save ~{saved_s:.0f} s of decoding"
    )
    return saved_s <= compile_s, why


def run_tokens(prompts: int, n: int, max_new_tokens: int, iterations: int) -> int:
    """The most tokens a run samples: prompts x n x max_new_tokens per iteration."""
    return prompts * n * max_new_tokens * iterations


def _index_path() -> Path:
    root = os.environ.get("VLLM_CACHE_ROOT") or os.path.join(os.path.expanduser("~"), ".cache", "vllm")
    return Path(root) / "lrdpo_fast_compiled.json"


def compile_cache_key(model_dir: str, dtype: str, max_model_len: int | None) -> str:
    """What a compiled graph depends on here: the model's config.json, the dtype and the length
    budget, and vLLM's version."""
    try:
        import vllm

        version = vllm.__version__
    except ImportError:  # pragma: no cover - the sampler needs vllm anyway
        version = "none"
    config = Path(model_dir, "config.json").read_text(encoding="utf-8")
    return json.dumps([json.loads(config), str(dtype), max_model_len, version], sort_keys=True)


def cache_warm(key: str) -> bool:
    """True when a compiled start of this key was noted on this machine."""
    try:
        return key in json.loads(_index_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def note_compiled(key: str) -> None:
    """Note that vLLM compiled (and cached) this key; best effort (a read-only cache is fine)."""
    path = _index_path()
    try:
        keys = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        if key not in keys:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps([*keys, key]), encoding="utf-8")
            os.replace(tmp, path)
    except (OSError, ValueError):
        pass
