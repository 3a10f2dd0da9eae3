"""Starting the vLLM engine: the model and tokenizer folders it reads, the environment each
layout needs, and the start itself with the process state put back afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .eager import EagerInputs, cache_warm, choose_enforce_eager, compile_cache_key, note_compiled
from .gc_heap import EngineHeap
from .kv_cache import cpu_kv_cache_bytes
from .layout import RankLayout
from .process import Env, ProcessState, Threads
from .specs import EngineSpec
from .weights import checkpoint_specs, save_module
from .worker_ext import QUALNAME as WORKER_EXTENSION

logger = logging.getLogger(__name__)
TORCHRUN_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_USE_AGENT_STORE",
)


_live_in_process = 0  # in-process engines started and not yet shut down in this process


@dataclass
class Engine:
    """A started engine: the ``vllm.LLM``, whether its model runs in this process, whether it
    made the process group itself, its token budget and dtype, and the layout (updated with the
    data-parallel group on CUDA)."""

    llm: Any
    in_process: bool
    owns_dist: bool
    max_model_len: int
    dtype: torch.dtype
    layout: RankLayout
    enforce_eager: bool = True


def model_folder(model, state, mkdtemp: Callable[[str], str]) -> str:
    """The ``save_pretrained`` folder the engine starts from: ``model`` itself when it is a
    folder, else a private one written from the module (``state``: its full weights).
    Raises ValueError naming ``model``."""
    if isinstance(model, torch.nn.Module):
        if not hasattr(model, "save_pretrained"):
            raise ValueError(
                "model must be a save_pretrained folder or a transformers *ForCausalLM module, "
                f"got {type(model).__name__}"
            )
        folder = mkdtemp("lrdpo-sampler-model-")
        save_module(model, state, folder)
        return folder
    if isinstance(model, (str, os.PathLike)):
        folder = os.fspath(model)
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise ValueError(f"model must be a local save_pretrained folder with a config.json, got {folder!r}")
        return folder
    raise ValueError(f"model must be a save_pretrained folder or a transformers module, got {type(model).__name__}")


def check_servable(model_dir: str) -> None:
    """ValueError naming the architecture when vLLM would not serve the folder's model as
    transformers computes it (``model.families.check_sampled``, with how the installed vLLM's
    registry serves the architecture)."""
    import json

    from vllm.model_executor.models.registry import ModelRegistry

    from ...model.families import architecture, check_sampled

    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    if not config.get("architectures"):  # a module's config saved without them: vLLM resolves it itself
        return
    entry = ModelRegistry.models.get(architecture(config))
    backend = None
    if entry is not None:
        transformers_backend = str(getattr(entry, "module_name", "")).endswith(".transformers")
        backend = "transformers" if transformers_backend else "native"
    check_sampled(config, vllm_backend=backend)


def tokenizer_folder(tokenizer, model, model_dir: str, mkdtemp: Callable[[str], str]) -> str:
    """The folder vLLM reads the tokenizer from (a tokenizer object is saved, next to a copy of
    the model's config, which vLLM also reads there). Raises ValueError naming ``tokenizer``."""
    if tokenizer is None:
        if isinstance(model, torch.nn.Module):
            raise ValueError("tokenizer is required when model is a module (a folder or a tokenizer object)")
        return model_dir
    if isinstance(tokenizer, (str, os.PathLike)):
        folder = os.fspath(tokenizer)
        if not os.path.isdir(folder):
            raise ValueError(f"tokenizer must be a tokenizer folder or object, got missing folder {folder!r}")
        return folder
    if not hasattr(tokenizer, "save_pretrained"):
        raise ValueError(f"tokenizer must be a folder or a transformers tokenizer, got {type(tokenizer).__name__}")
    if isinstance(model, torch.nn.Module):
        folder = model_dir  # our own folder: the tokenizer goes beside the weights
    else:
        folder = mkdtemp("lrdpo-sampler-tokenizer-")
        shutil.copy(os.path.join(model_dir, "config.json"), folder)
    tokenizer.save_pretrained(folder)
    return folder


def _environment(
    layout: RankLayout, spec: EngineSpec, kwargs: dict, model_dir: str
) -> tuple[dict[str, str], list[str]]:
    """(variables to set, variables to unset) around the start; fills layout-specific kwargs."""
    cuda = torch.cuda.is_available()
    if not cuda:
        if not os.environ.get("VLLM_CPU_KVCACHE_SPACE") and kwargs.get("kv_cache_memory_bytes") is None:
            # sized to what the engine can hold at once (kv_cache.py), not a fixed GiB
            kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(
                model_dir, spec.max_model_len, kwargs.get("max_num_seqs")
            )
        # A prompt prefilled over several steps makes vLLM rewind the request's generator,
        # which a CPU torch.Generator cannot do ("CPU Generator does not use offset"): every
        # request is seeded here, so prompts are prefilled whole on the CPU.
        kwargs.setdefault("enable_chunked_prefill", False)
    if layout.mode == "single":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        return {}, []
    if layout.mode == "replicate" and cuda:
        # every rank an in-process engine; vLLM joins torchrun's process group
        kwargs.setdefault("distributed_executor_backend", "external_launcher")
        kwargs.setdefault("data_parallel_size", layout.world_size // spec.tensor_parallel_size)
        return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}, []
    # an engine of its own in a clean spawned process: an in-process one would take over
    # torchrun's process group (and a forked one would inherit it)
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    return env, [k for k in TORCHRUN_ENV if k in os.environ]


def start_engine(
    model_dir: str,
    tokenizer_dir: str,
    *,
    seed: int,
    spec: EngineSpec,
    sleep_mode: bool,
    prepack_threads: int,
    layout: RankLayout,
    engine_kwargs: dict[str, Any],
) -> Engine:
    """Start ``vllm.LLM`` on ``model_dir`` as the layout needs, on ``prepack_threads`` torch
    threads (the count every later reload uses too), then put back what an in-process start
    changes (RNGs, torch's thread hook and count)."""
    import torch.distributed as dist

    kwargs = dict(engine_kwargs)
    eager, cache_key = _engine_mode(model_dir, spec)
    kwargs["enforce_eager"] = eager
    if spec.quiet:
        kwargs.setdefault("use_tqdm_on_load", False)
    kwargs.setdefault("worker_extension_cls", WORKER_EXTENSION)
    env_set, env_unset = _environment(layout, spec, kwargs, model_dir)
    owned = not (dist.is_available() and dist.is_initialized())
    saved = ProcessState()
    from ..quiet import ENGINE_START_NOISE, dropped_stderr_lines

    heap = EngineHeap()  # vLLM's collections during the start skip the heap already there
    try:
        quiet = dropped_stderr_lines(ENGINE_START_NOISE) if spec.quiet else contextlib.nullcontext()
        with Env(env_set, env_unset), quiet, Threads(prepack_threads):
            import vllm.envs
            from vllm import LLM

            if hasattr(vllm.envs, "disable_envs_cache"):
                vllm.envs.disable_envs_cache()  # our environment must reach this engine
            with heap:  # after the import: what it allocated is frozen too
                llm = LLM(
                    model_dir,
                    tokenizer=tokenizer_dir,
                    seed=seed,
                    dtype=spec.dtype,
                    max_model_len=spec.max_model_len,
                    gpu_memory_utilization=spec.gpu_memory_utilization,
                    tensor_parallel_size=spec.tensor_parallel_size,
                    enable_sleep_mode=sleep_mode,
                    **kwargs,
                )
    finally:
        saved.restore()
    from vllm.v1.executor.uniproc_executor import UniProcExecutor

    if layout.mode == "replicate" and torch.cuda.is_available():
        from vllm.distributed import get_tensor_model_parallel_rank

        pc = llm.llm_engine.vllm_config.parallel_config
        layout = dataclasses.replace(
            layout,
            group=pc.data_parallel_rank,
            groups=pc.data_parallel_size,
            leader=get_tensor_model_parallel_rank() == 0,
        )
    if not eager and not torch.cuda.is_available():
        note_compiled(cache_key)  # vLLM's compile cache now holds this model's graphs
    model_config = llm.llm_engine.model_config
    in_process = isinstance(getattr(llm.llm_engine, "model_executor", None), UniProcExecutor)
    if not in_process:
        heap.release()  # vLLM froze its own process's heap, not this one
    if in_process:
        global _live_in_process
        _live_in_process += 1
    return Engine(
        llm=llm,
        in_process=in_process,
        owns_dist=owned and dist.is_available() and dist.is_initialized(),
        max_model_len=int(model_config.max_model_len),
        dtype=model_config.dtype,
        layout=layout,
        enforce_eager=eager,
    )


def _engine_mode(model_dir: str, spec: EngineSpec) -> tuple[bool, str]:
    """(enforce_eager, compile cache key): the spec's bool, or ``eager.choose_enforce_eager``'s
    choice for "auto" (logged) without a token count (the loop resolves "auto" itself)."""
    key = compile_cache_key(model_dir, spec.dtype, spec.max_model_len)
    if spec.enforce_eager != "auto":
        return bool(spec.enforce_eager), key
    params = sum(math.prod(s.shape) for s in checkpoint_specs(model_dir).values())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eager, why = choose_enforce_eager(EagerInputs(device, params, None, cache_warm(key)))
    logger.info("VLLMSampler: enforce_eager=%s (%s)", eager, why)
    return eager, key


def shutdown_engine(engine: Engine) -> None:
    """Shut ``engine`` down. vLLM's in-process shutdown tears down the process's distributed
    state (its model-parallel groups), which every in-process engine of the process shares: with
    another one still alive that teardown is skipped (it would break the other engine's next
    step), and the last one to go takes the state down (with the process group when an engine
    made it)."""
    global _live_in_process
    import vllm.v1.engine.core as engine_core_module

    others = engine.in_process and _live_in_process > 1
    teardown = engine_core_module.cleanup_dist_env_and_memory
    if others:
        engine_core_module.cleanup_dist_env_and_memory = lambda *a, **k: None
    try:
        engine.llm.llm_engine.engine_core.shutdown()
    finally:
        engine_core_module.cleanup_dist_env_and_memory = teardown
        if engine.in_process:
            _live_in_process -= 1
    if engine.owns_dist and not others:
        # the in-process engine made a one-process group of its own: take it down
        teardown()
