"""``VLLMSampler``: k samples per prompt from the live policy, weights synced in memory.

The only module of lrdpo-fast that imports vllm, and only inside methods: importing this module
costs neither vllm nor transformers.

    sampler = VLLMSampler("model_dir", seed=0, dtype="float32")
    samples = sampler.generate(["Hello", [{"role": "user", "content": "Hi"}]], n=4)
    trainer.train()
    sampler.load_weights(trainer.export_state_dict())   # or the module itself; in memory
    sampler.close()                                      # or `with VLLMSampler(...) as sampler:`

Prompts. A string is tokenized like the trainer tokenizes a text prompt (``add_special_tokens=
False``, then the tokenizer's BOS prepended when it has one), a list of chat messages is rendered
with the tokenizer's chat template and ``add_generation_prompt=True`` (no BOS added: the template
owns it), a list of ints is used as is. The engine gets the token ids, so ``Sample.prompt_ids`` is
exactly what it conditioned on.

Seeds. Each sample is its own vLLM request (``n`` requests with ``n=1`` per prompt), seeded with
``request_seed(seed, prompt_index, sample_index)`` where ``seed`` is ``generate(seed=...)`` or the
sampler's seed and ``prompt_index`` the position in ``prompts``. A sample therefore depends only on
the weights, its prompt, the sampling arguments and those three numbers: not on the batch, on
``n`` (the first samples of n=8 are those of n=4), on how prompts are sharded over ranks, or on
what ran before. A resumed run that calls ``generate`` again with the same prompts and seed gets
the same samples (up to float noise from batch shapes: fp32 on one machine reproduced exactly
here). Pass a different ``seed`` per iteration of a loop to get fresh samples.

Weight sync. ``load_weights`` checks the state dict against the checkpoint the engine started from
(names and shapes read from its safetensors headers; the engine's own parameters cannot be used:
the CPU backend repacks them), refuses a partial, misshaped, unexpected or non-finite one with a
ValueError naming the tensor before anything is loaded, then
- engine in this process (the default: ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` is set when unset):
  ``collective_rpc("reload_weights", weights_iterator=..., is_checkpoint_format=True)``; the
  tensors are passed as they are (on a GPU nothing goes through the CPU);
- engine in another process (``VLLM_ENABLE_V1_MULTIPROCESSING=1``, tensor parallel workers, the
  CPU layout under torchrun): the fallback, logged once: the weights are written to a private
  safetensors folder and reloaded from it (``reload_weights(weights_path=...)``), still without
  restarting the engine;
then the prefix cache is reset, so no KV block computed by the old weights is reused.

The CPU backend. vLLM's CPU build reserves ``gpu_memory_utilization`` of the machine's RAM for the
KV cache unless ``VLLM_CPU_KVCACHE_SPACE`` (GiB) is set: the sampler sets it to 1 when unset, enough
for ~2M cached tokens of a small model. Chunked prefill is off by default on the CPU
(``enable_chunked_prefill=False``): with it, a seeded request whose prompt is split across engine
steps crashes vLLM 0.32's CPU runner (it rewinds the request's generator, which a CPU generator
cannot do). An in-process vLLM engine reseeds the global RNGs and
replaces ``torch.set_num_threads``: the sampler puts both back after start-up so a trainer in the
same process keeps its random streams and thread count.

Under torchrun (``WORLD_SIZE`` > 1). Every rank constructs the sampler and calls ``generate`` and
``load_weights`` (they are collective); every rank gets the full list of samples, in prompt order.
``LRDPO_SAMPLER_SHARDING`` picks the layout (default ``auto``: ``replicate`` with CUDA, ``rank0``
otherwise):
- ``replicate`` on CUDA: every rank starts an in-process engine with vLLM's
  ``distributed_executor_backend="external_launcher"``, ``tensor_parallel_size`` ranks per engine
  and ``data_parallel_size = world / tensor_parallel_size`` engines; data-parallel rank ``d`` samples
  the prompts ``i`` with ``i % data_parallel_size == d``; the results are all-gathered. Weight sync
  needs the full weights on every rank: pass the FSDP2 module (``sampler.load_weights(
  trainer.model)``): its DTensors are gathered one at a time as vLLM consumes them, never a full
  extra copy (``trainer.export_state_dict()`` holds the weights on rank 0 only and is refused on
  the other ranks here).
- ``replicate`` on the CPU: every rank starts its own engine in a separate process (an in-process
  engine would take over torchrun's process group) and samples its share ``i % world == rank``.
- ``rank0``: rank 0 alone hosts an engine, in a separate process, and samples everything; other
  ranks wait and receive the samples. Pass the weights on rank 0 (``export_state_dict()`` gives
  ``{}`` elsewhere, which is accepted there) or the FSDP2 module on every rank.
Run it like any torchrun script (``torchrun --nproc_per_node K script.py``, with an
``if __name__ == "__main__":`` guard: engines in separate processes are spawned).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import shutil
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .samples import Sample

logger = logging.getLogger(__name__)

SHARDING_ENV = "LRDPO_SAMPLER_SHARDING"
SHARDING_MODES = ("auto", "replicate", "rank0")
DEFAULT_CPU_KVCACHE_GIB = "1"
_WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")
_TORCHRUN_ENV = (
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


def request_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The vLLM request seed of sample ``sample_index`` of prompt ``prompt_index``.

    A 63-bit int from BLAKE2b of the three numbers: stable across processes, Python versions and
    machines (unlike ``hash``), and different for every (seed, prompt, sample) triple.
    """
    digest = hashlib.blake2b(
        f"lrdpo-sampler/{int(seed)}/{int(prompt_index)}/{int(sample_index)}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclass(frozen=True)
class TensorSpec:
    """Shape and kind of one checkpoint tensor (what ``load_weights`` checks against)."""

    shape: tuple[int, ...]
    floating: bool


def checkpoint_specs(folder: str | os.PathLike) -> dict[str, TensorSpec]:
    """Names, shapes and float-ness of the tensors of a ``save_pretrained`` folder.

    Reads only the safetensors headers (the files named by ``model.safetensors.index.json`` when
    there is one), or, without safetensors, the ``*.bin`` files memory-mapped. Raises ValueError
    when the folder holds no weights.
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        import json

        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    specs: dict[str, TensorSpec] = {}
    if files:
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for name in fh.keys():
                    sl = fh.get_slice(name)
                    dtype = str(sl.get_dtype()).upper()
                    specs[name] = TensorSpec(
                        tuple(int(d) for d in sl.get_shape()), dtype.startswith("F") or dtype.startswith("BF")
                    )
        return specs
    for f in sorted(folder.glob("*.bin")):
        for name, t in torch.load(f, map_location="cpu", mmap=True, weights_only=True).items():
            specs[name] = TensorSpec(tuple(t.shape), t.is_floating_point())
    if not specs:
        raise ValueError(f"model: no *.safetensors or *.bin weights in {folder}")
    return specs


def _strip_wrappers(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def _named_tensors(weights: Any) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a module, a mapping or an iterable of pairs; nothing is copied."""
    if isinstance(weights, torch.nn.Module):
        items = [(_strip_wrappers(k), v) for k, v in weights.state_dict().items()]
    elif isinstance(weights, Mapping):
        items = list(weights.items())
    elif isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable):
        raise ValueError(
            f"weights must be a state dict (name -> tensor), a module or (name, tensor) pairs, "
            f"got {type(weights).__name__}"
        )
    else:
        items = []
        for i, pair in enumerate(weights):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"weights[{i}] must be a (name, tensor) pair")
            items.append((pair[0], pair[1]))
    for name, t in items:
        if not isinstance(name, str):
            raise ValueError(f"weights: tensor names must be str, got {type(name).__name__}")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"weights[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
    return items


def _write_safetensors(state: Mapping[str, torch.Tensor], path: str) -> None:
    """CPU copies of ``state`` to ``path`` (written beside it, then renamed); tensors that share
    storage (tied weights) are cloned, as safetensors requires."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in state.items():
        t = t.detach().to("cpu")
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[name] = t.clone() if key in seen or not t.is_contiguous() else t
        seen.add(key)
    save_file(out, path + ".tmp", metadata={"format": "pt"})
    os.replace(path + ".tmp", path)


def _save_module(model: torch.nn.Module, state: Mapping[str, torch.Tensor], folder: str) -> None:
    """A start-up checkpoint of a transformers module: ``save_pretrained`` in one process; under
    torch.distributed (where save_pretrained writes on rank 0 only) the config, generation config
    and a safetensors file of ``state`` without a tied ``lm_head.weight``, on this rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        model.save_pretrained(folder, state_dict=dict(state))
        return
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    _write_safetensors(
        {k: v for k, v in state.items() if not (tied and k == "lm_head.weight")},
        os.path.join(folder, "model.safetensors"),
    )


def _nonfinite(t: torch.Tensor) -> bool:
    """True when a float tensor (this rank's shard of a DTensor) holds NaN or +-inf. One fp32 sum
    (NaN and inf propagate; 25x faster than ``isfinite(t).all()`` on the CPU), confirmed
    element-wise only when the sum is not finite (it may have overflowed)."""
    local = t.to_local() if _is_dtensor(t) else t
    if not local.is_floating_point() or local.numel() == 0:
        return False
    if bool(torch.isfinite(local.sum(dtype=torch.float32))):
        return False
    return not bool(torch.isfinite(local).all())


def check_weights(
    items: list[tuple[str, torch.Tensor]], specs: Mapping[str, TensorSpec]
) -> list[tuple[str, torch.Tensor]]:
    """The pairs to load, in order, after checking them against the checkpoint ``specs``.

    Every checkpoint tensor must be present once, with its shape (global shape for a DTensor),
    floating point where the checkpoint's is, and finite (this rank's shard for a DTensor). An
    ``lm_head.weight`` absent from the checkpoint (tied embeddings) is dropped; any other name the
    checkpoint lacks is refused. Raises ValueError naming the first offending tensor.
    """
    seen: set[str] = set()
    keep = []
    for name, t in items:
        if name in seen:
            raise ValueError(f"weights: tensor {name!r} appears twice")
        seen.add(name)
        spec = specs.get(name)
        if spec is None:
            if name == "lm_head.weight" and any(
                k.endswith("embed_tokens.weight") and s.shape == tuple(t.shape) for k, s in specs.items()
            ):
                continue  # tied to the embeddings: the checkpoint does not store it
            raise ValueError(f"weights: unexpected tensor {name!r} (not in the engine's checkpoint)")
        if tuple(t.shape) != spec.shape:
            raise ValueError(f"weights[{name!r}] has shape {tuple(t.shape)}; the checkpoint has {spec.shape}")
        if spec.floating and not t.is_floating_point():
            raise ValueError(f"weights[{name!r}] has dtype {t.dtype}; the checkpoint's tensor is floating point")
        if _nonfinite(t):
            raise ValueError(f"weights[{name!r}] holds NaN or infinite values")
        keep.append((name, t))
    missing = [k for k in specs if k not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"weights: missing tensor {missing[0]!r}{more}; a partial state dict is not loaded")
    return keep


def refresh_shared_weight_layers(model: torch.nn.Module) -> list[str]:
    """Re-run the post-load processing of every layer whose ``weight`` Parameter another layer
    also holds (a tied LM head and its embedding); returns their names. Runs inside a vLLM worker
    (``LLM.apply_model``). Only vLLM's unquantized embedding/head method on the CPU derives state
    from the weight there (a packed oneDNN copy): elsewhere this changes nothing."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return []
    holders: dict[int, list[tuple[str, torch.nn.Module]]] = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None and isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod):
            holders.setdefault(id(weight), []).append((name, module))
    refreshed = []
    for group in holders.values():
        if len(group) > 1:
            for name, module in group:
                module.quant_method.process_weights_after_loading(module)
                refreshed.append(name)
    return refreshed


class _ProcessState:
    """What an in-process vLLM engine changes globally and the sampler puts back: the RNGs,
    ``torch.set_num_threads`` (replaced by the CPU worker) and the torch thread count."""

    def __init__(self) -> None:
        self.set_num_threads = torch.set_num_threads
        self.threads = torch.get_num_threads()
        self.torch_rng = torch.random.get_rng_state()
        self.cuda_rng = (
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        )
        self.py_rng = random.getstate()
        try:
            import numpy as np

            self.np_rng = np.random.get_state()
        except ImportError:  # pragma: no cover
            self.np_rng = None

    def restore(self) -> None:
        torch.set_num_threads = self.set_num_threads
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        torch.random.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        random.setstate(self.py_rng)
        if self.np_rng is not None:
            import numpy as np

            np.random.set_state(self.np_rng)


class _Threads:
    """Torch intra-op threads set to ``n`` for a block on the CPU backend, then put back (nothing
    on CUDA or when ``n`` is None). The in-process CPU engine runs on the caller's torch threads
    (vLLM's own attempt to set them is a no-op in-process): on small models and shared cores one
    thread samples several times faster, because OpenMP threads that share a core spin-wait for
    each other (measured 5-8x CPU per sample with 2 threads on the 2 shared cores here)."""

    def __init__(self, n: int | None = 1) -> None:
        self.n = n

    def __enter__(self):
        self.threads = None if self.n is None or torch.cuda.is_available() else torch.get_num_threads()
        if self.threads is not None and self.threads != self.n:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.threads is not None and self.threads != self.n:
            torch.set_num_threads(self.threads)
        return False


class _Env:
    """Set environment variables for the duration of a block, then put the old values back."""

    def __init__(self, set_: Mapping[str, str] | None = None, unset: Iterable[str] = ()) -> None:
        self.set_, self.unset, self.old = dict(set_ or {}), list(unset), {}

    def __enter__(self):
        for k in [*self.set_, *self.unset]:
            self.old[k] = os.environ.get(k)
        for k in self.unset:
            os.environ.pop(k, None)
        os.environ.update(self.set_)
        return self

    def __exit__(self, *exc):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        return False


def _dist_world() -> tuple[int, int]:
    """(rank, world size) from the process group, or from torchrun's environment."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _ensure_process_group() -> None:
    """Initialise the default process group from torchrun's environment if nobody has (NCCL on
    CUDA with the local rank's device, gloo otherwise), as the trainer would."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class VLLMSampler:
    """k samples per prompt from a vLLM engine that serves the live policy's weights.

    Args:
        model: a local ``save_pretrained`` folder (str or path), or a transformers ``*ForCausalLM``
            module, saved once to a private temporary folder to start the engine.
        tokenizer: a tokenizer folder or a transformers tokenizer; default the model folder's
            (required when ``model`` is a module). Used to render and tokenize prompts; the engine
            detokenizes with the same one.
        seed: default seed of ``generate`` (see the module docstring) and the engine's seed.
        dtype: the engine's dtype ("auto", "float32", "bfloat16", "float16"); "auto" follows
            vLLM (it runs a float32 checkpoint in half precision on most devices).
        max_model_len: prompt + response token budget of the engine (default: the model's).
        gpu_memory_utilization: share of GPU memory for weights + KV cache (vLLM's meaning). On the
            CPU backend it is the share of RAM for the KV cache unless ``VLLM_CPU_KVCACHE_SPACE``
            is set, which the sampler sets to 1 (GiB) when unset.
        tensor_parallel_size: GPUs per engine, passed to vLLM.
        enable_sleep_mode: allow ``sleep``/``wake_up`` to free accelerator memory; default True
            with CUDA, False otherwise (the CPU backend has no sleep mode; True there is refused).
        cpu_threads: torch intra-op threads while the CPU engine samples (default: the process's
            count); 1 is fastest for small models and on shared cores. Ignored on CUDA.
        quiet: start the engine without vLLM's weight-loading bar and without the CPU backend's
            NUMA-binding warning line (everything else it prints still shows).
        **engine_kwargs: passed to ``vllm.LLM`` (e.g. ``enforce_eager``, ``max_num_seqs``).

    Raises:
        ValueError naming the argument: a missing model folder or weights, a module without a
        tokenizer, a bad seed / tensor_parallel_size / gpu_memory_utilization, sleep mode without
        CUDA, an unknown ``LRDPO_SAMPLER_SHARDING``, a world size not divisible by
        tensor_parallel_size.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        seed: int = 0,
        dtype: str = "auto",
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.5,
        tensor_parallel_size: int = 1,
        enable_sleep_mode: bool | None = None,
        cpu_threads: int | None = None,
        quiet: bool = False,
        **engine_kwargs,
    ) -> None:
        self._llm = None
        self._tmpdirs: list[str] = []
        self._weights_dir: str | None = None
        self._fallback_logged = False
        self._asleep = 0
        self._weights_discarded = False  # sleep(level=2) until the next load_weights
        self._closed = False
        self._owns_dist = False
        self._dp_engine = False  # data-parallel engines step together: idle ones must still run
        self.tokenizer = None
        self.seed = _check_int("seed", seed, 0)
        _check_int("tensor_parallel_size", tensor_parallel_size, 1)
        self.cpu_threads = None if cpu_threads is None else _check_int("cpu_threads", cpu_threads, 1)
        # oneDNN picks the packed weight layout by the thread count and caches its matmul
        # primitives per shape across layers: weights must be prepacked (at start and on every
        # reload) on one thread count, or a reload's layout meets primitives built for the other
        self._prepack_threads = self.cpu_threads or torch.get_num_threads()
        if not isinstance(quiet, bool):
            raise ValueError(f"quiet must be a bool, got {quiet!r}")
        self.quiet = quiet
        if quiet:
            engine_kwargs.setdefault("use_tqdm_on_load", False)
        if max_model_len is not None:
            _check_int("max_model_len", max_model_len, 2)
        if (
            isinstance(gpu_memory_utilization, bool)
            or not isinstance(gpu_memory_utilization, (int, float))
            or not 0 < gpu_memory_utilization <= 1
        ):
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
        cuda = torch.cuda.is_available()
        if enable_sleep_mode is None:
            enable_sleep_mode = cuda
        if enable_sleep_mode and not cuda:
            raise ValueError("enable_sleep_mode=True needs a CUDA device (vLLM's CPU backend has no sleep mode)")
        self.sleep_mode = bool(enable_sleep_mode)

        # layout across ranks
        self.rank, self.world_size = _dist_world()
        sharding = os.environ.get(SHARDING_ENV, "auto")
        if sharding not in SHARDING_MODES:
            raise ValueError(f"{SHARDING_ENV} must be one of {SHARDING_MODES}, got {sharding!r}")
        if self.world_size == 1:
            self.layout = "single"
        else:
            self.layout = "replicate" if sharding == "replicate" or (sharding == "auto" and cuda) else "rank0"
            _ensure_process_group()
            if self.layout == "replicate" and cuda and self.world_size % tensor_parallel_size:
                raise ValueError(
                    f"tensor_parallel_size={tensor_parallel_size} must divide the world size {self.world_size}"
                )
        self.hosts_engine = self.layout != "rank0" or self.rank == 0
        # (group, number of groups, leader): prompts i with i % groups == group are sampled by
        # this rank's engine; leaders contribute the samples of their group to the gather.
        self._group, self._groups, self._leader = 0, 1, self.rank == 0 or self.layout == "single"
        if self.layout == "replicate" and not cuda:
            self._group, self._groups, self._leader = self.rank, self.world_size, True

        state = None
        if isinstance(model, torch.nn.Module):
            # full weights to save the start-up checkpoint from (a collective for FSDP2 DTensors)
            state = {k: (v.full_tensor() if _is_dtensor(v) else v) for k, v in _named_tensors(model)}
        error = None
        info: dict[str, Any] = {}
        if self.hosts_engine:
            try:
                info = self._start(
                    model,
                    tokenizer,
                    state,
                    dtype=dtype,
                    max_model_len=max_model_len,
                    gpu_memory_utilization=gpu_memory_utilization,
                    tensor_parallel_size=tensor_parallel_size,
                    engine_kwargs=engine_kwargs,
                )
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                if self.world_size == 1:
                    self.close()
                    raise
                error = e
        if self.world_size > 1:
            gathered = self._all_gather((None if error is None else f"{type(error).__name__}: {error}", info))
            failed = [(r, msg) for r, (msg, _) in enumerate(gathered) if msg]
            if failed:
                self.close()
                if error is not None:
                    raise error
                raise RuntimeError(f"VLLMSampler: the engine failed to start on rank {failed[0][0]}: {failed[0][1]}")
            if not self.hosts_engine:
                info = gathered[0][1]  # rank 0's engine serves this rank
        self.max_model_len: int = info["max_model_len"]
        self._specs: dict[str, TensorSpec] = info["specs"]
        self.model_dir: str = info["model_dir"]
        if self.tokenizer is None:  # ranks without an engine
            if hasattr(tokenizer, "save_pretrained"):
                self.tokenizer = tokenizer
            else:
                self.tokenizer = self._load_tokenizer(
                    os.fspath(tokenizer) if tokenizer is not None else info["tokenizer_dir"]
                )

    # ------------------------------------------------------------------ start-up
    def _mkdtemp(self, prefix: str) -> str:
        d = tempfile.mkdtemp(prefix=prefix)
        self._tmpdirs.append(d)
        weakref.finalize(self, shutil.rmtree, d, True)  # also when close() is never called
        return d

    @staticmethod
    def _load_tokenizer(path: str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)

    def _start(
        self,
        model,
        tokenizer,
        state,
        *,
        dtype,
        max_model_len,
        gpu_memory_utilization,
        tensor_parallel_size,
        engine_kwargs,
    ) -> dict[str, Any]:
        """Resolve model/tokenizer folders and start the engine (only on ranks that host one)."""
        if isinstance(model, torch.nn.Module):
            if not hasattr(model, "save_pretrained"):
                raise ValueError(
                    "model must be a save_pretrained folder or a transformers *ForCausalLM module, "
                    f"got {type(model).__name__}"
                )
            if tokenizer is None:
                raise ValueError("tokenizer is required when model is a module (a folder or a tokenizer object)")
            model_dir = self._mkdtemp("lrdpo-sampler-model-")
            _save_module(model, state, model_dir)
        elif isinstance(model, (str, os.PathLike)):
            model_dir = os.fspath(model)
            if not os.path.isfile(os.path.join(model_dir, "config.json")):
                raise ValueError(f"model must be a local save_pretrained folder with a config.json, got {model_dir!r}")
        else:
            raise ValueError(
                f"model must be a save_pretrained folder or a transformers module, got {type(model).__name__}"
            )
        specs = checkpoint_specs(model_dir)

        if tokenizer is None:
            tokenizer_dir = model_dir
        elif isinstance(tokenizer, (str, os.PathLike)):
            tokenizer_dir = os.fspath(tokenizer)
            if not os.path.isdir(tokenizer_dir):
                raise ValueError(
                    f"tokenizer must be a tokenizer folder or object, got missing folder {tokenizer_dir!r}"
                )
        elif hasattr(tokenizer, "save_pretrained"):
            if isinstance(model, torch.nn.Module):
                tokenizer_dir = model_dir  # our own folder: the tokenizer goes beside the weights
            else:
                # vLLM reads a model config from the tokenizer folder too: give it the model's
                tokenizer_dir = self._mkdtemp("lrdpo-sampler-tokenizer-")
                shutil.copy(os.path.join(model_dir, "config.json"), tokenizer_dir)
            tokenizer.save_pretrained(tokenizer_dir)
            self.tokenizer = tokenizer
        else:
            raise ValueError(f"tokenizer must be a folder or a transformers tokenizer, got {type(tokenizer).__name__}")
        if self.tokenizer is None:
            self.tokenizer = self._load_tokenizer(tokenizer_dir)

        cuda = torch.cuda.is_available()
        kwargs = dict(engine_kwargs)
        if not cuda:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
            # A prompt prefilled over several steps makes vLLM rewind the request's generator,
            # which a CPU torch.Generator cannot do ("CPU Generator does not use offset"): every
            # request is seeded here, so prompts are prefilled whole on the CPU.
            kwargs.setdefault("enable_chunked_prefill", False)
        env_set: dict[str, str] = {}
        env_unset: list[str] = []
        if self.layout == "single":
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        elif self.layout == "replicate" and cuda:
            # every rank an in-process engine; vLLM joins torchrun's process group
            env_set["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            kwargs.setdefault("distributed_executor_backend", "external_launcher")
            kwargs.setdefault("data_parallel_size", self.world_size // tensor_parallel_size)
        else:
            # an engine of its own in a clean spawned process: an in-process one would take over
            # torchrun's process group (and a forked one would inherit it)
            # (pickled callables between our own two processes: the tied-head refresh after a reload)
            env_set.update(
                VLLM_ENABLE_V1_MULTIPROCESSING="1",
                VLLM_WORKER_MULTIPROC_METHOD="spawn",
                VLLM_ALLOW_INSECURE_SERIALIZATION="1",
            )
            env_unset = [k for k in _TORCHRUN_ENV if k in os.environ]
        import torch.distributed as dist

        self._owns_dist = not (dist.is_available() and dist.is_initialized())
        state = _ProcessState()
        from .quiet import ENGINE_START_NOISE, dropped_stderr_lines

        try:
            quiet = dropped_stderr_lines(ENGINE_START_NOISE) if self.quiet else contextlib.nullcontext()
            with _Env(env_set, env_unset), quiet, _Threads(self._prepack_threads):
                import vllm.envs
                from vllm import LLM

                if hasattr(vllm.envs, "disable_envs_cache"):
                    vllm.envs.disable_envs_cache()  # our environment must reach this engine
                self._llm = LLM(
                    model_dir,
                    tokenizer=tokenizer_dir,
                    seed=self.seed,
                    dtype=dtype,
                    max_model_len=max_model_len,
                    gpu_memory_utilization=gpu_memory_utilization,
                    tensor_parallel_size=tensor_parallel_size,
                    enable_sleep_mode=self.sleep_mode,
                    **kwargs,
                )
        finally:
            state.restore()
        self._owns_dist = self._owns_dist and dist.is_available() and dist.is_initialized()
        self.in_process = self._engine_in_process()
        self._dp_engine = self.layout == "replicate" and cuda
        if self._dp_engine:
            from vllm.distributed import get_tensor_model_parallel_rank

            pc = self._llm.llm_engine.vllm_config.parallel_config
            self._group, self._groups = pc.data_parallel_rank, pc.data_parallel_size
            self._leader = get_tensor_model_parallel_rank() == 0
        return {
            "max_model_len": int(self._llm.llm_engine.model_config.max_model_len),
            "specs": specs,
            "model_dir": model_dir,
            "tokenizer_dir": tokenizer_dir,
        }

    def _engine_in_process(self) -> bool:
        """True when the model runs in this process (weights can be handed over as tensors)."""
        from vllm.v1.executor.uniproc_executor import UniProcExecutor

        return isinstance(getattr(self._llm.llm_engine, "model_executor", None), UniProcExecutor)

    # ------------------------------------------------------------------ collectives
    def _all_gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def _agree(self, error: Exception | None) -> None:
        """Raise on every rank when any rank failed (so no rank goes on into a collective alone)."""
        if self.world_size == 1:
            if error is not None:
                raise error
            return
        msgs = self._all_gather(None if error is None else (type(error).__name__, str(error)))
        if error is not None:
            raise error
        for r, m in enumerate(msgs):
            if m is not None:
                cls = ValueError if m[0] == "ValueError" else RuntimeError
                raise cls(f"{m[1]} (on rank {r})")

    # ------------------------------------------------------------------ prompts
    def _prompt_ids(self, prompt: Any, i: int) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError(f"prompts[{i}] is an empty string")
            ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
            bos = getattr(tok, "bos_token_id", None)
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos] + ids
            return ids
        if isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt):
            if any("role" not in m or "content" not in m for m in prompt):
                raise ValueError(f"prompts[{i}]: every chat message needs 'role' and 'content'")
            if getattr(tok, "chat_template", None) is None:
                raise ValueError(f"prompts[{i}] is a list of chat messages but the tokenizer has no chat_template")
            text = tok.apply_chat_template([dict(m) for m in prompt], tokenize=False, add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        if (
            isinstance(prompt, Sequence)
            and prompt
            and all(isinstance(v, int) and not isinstance(v, bool) for v in prompt)
        ):
            vocab = len(tok)
            if any(not 0 <= v < vocab for v in prompt):
                raise ValueError(f"prompts[{i}] holds token ids outside [0, {vocab})")
            return [int(v) for v in prompt]
        if isinstance(prompt, Sequence) and not isinstance(prompt, str) and len(prompt) == 0:
            raise ValueError(f"prompts[{i}] is empty")
        if isinstance(prompt, Mapping):
            raise ValueError(
                f"prompts[{i}] is a single chat message; a chat prompt is a list of messages "
                "(prompts is a list of such lists)"
            )
        raise ValueError(
            f"prompts[{i}] must be a str, a list of chat messages or a list of token ids, got {type(prompt).__name__}"
        )

    # ------------------------------------------------------------------ sampling
    def generate(
        self,
        prompts: Sequence[Any],
        *,
        n: int = 4,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        logprobs: bool = False,
        progress: bool = False,
    ) -> list[list[Sample]]:
        """Sample ``n`` responses to every prompt.

        Args:
            prompts: list of P prompts, each a str, a list of chat messages ({"role", "content"}
                dicts, rendered with the chat template and a generation prompt) or a list of
                token ids.
            n: samples per prompt (>= 1); each is a request of its own with its own seed.
            temperature: >= 0; 0 is greedy (then the n samples are equal).
            top_p: nucleus mass in (0, 1].
            max_new_tokens: >= 1; a response also stops at ``max_model_len`` (prompt included).
            stop: stop string(s); the response ends before the match (finish_reason "stop").
            seed: overrides the sampler's seed for this call (per-sample seeds: module docstring).
            logprobs: also return each generated token's log-prob under the policy (temperature
                1, before top-p; the engine's dtype).
            progress: show vLLM's progress bar over the requests (on the ranks that host an engine).

        Returns:
            list of P lists of n ``Sample`` each, in prompt order (on every rank under torchrun).

        Raises:
            ValueError naming the argument: empty prompts or an empty prompt, n < 1,
            temperature < 0, top_p outside (0, 1], max_new_tokens < 1, a bad stop or seed, a
            prompt of max_model_len tokens or more. RuntimeError when asleep, closed, or when the
            engine returns a non-finite log-prob.
        """
        if self._closed:
            raise RuntimeError("VLLMSampler is closed")
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
            raise ValueError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty")
        _check_int("n", n, 1)
        _check_int("max_new_tokens", max_new_tokens, 1)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
            or temperature < 0
        ):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if stop is not None:
            stop = [stop] if isinstance(stop, str) else list(stop)
            if not stop or not all(isinstance(s, str) and s for s in stop):
                raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
        seed = self.seed if seed is None else _check_int("seed", seed, 0)
        if not isinstance(logprobs, bool):
            raise ValueError(f"logprobs must be a bool, got {logprobs!r}")
        if self._asleep:
            raise RuntimeError("VLLMSampler is asleep: call wake_up() (and load_weights after sleep(level=2)) first")
        if self._weights_discarded:
            raise RuntimeError("VLLMSampler.sleep(level=2) discarded the weights: call load_weights before generate")

        prompt_ids = [self._prompt_ids(p, i) for i, p in enumerate(prompts)]
        for i, ids in enumerate(prompt_ids):
            if len(ids) >= self.max_model_len:
                raise ValueError(
                    f"prompts[{i}] has {len(ids)} tokens; max_model_len={self.max_model_len} leaves "
                    "no room for a response"
                )

        mine = [i for i in range(len(prompts)) if i % self._groups == self._group] if self.hosts_engine else []
        error, local = None, {}
        try:
            local = self._sample(
                mine,
                prompt_ids,
                n=n,
                temperature=float(temperature),
                top_p=float(top_p),
                max_new_tokens=max_new_tokens,
                stop=stop,
                seed=seed,
                logprobs=logprobs,
                progress=bool(progress),
            )
        except Exception as e:  # noqa: BLE001 - re-raised on every rank
            error = e
        if self.world_size == 1:
            if error is not None:
                raise error
        else:
            gathered = self._all_gather(
                (None if error is None else f"{type(error).__name__}: {error}", local if self._leader else {})
            )
            if error is not None:
                raise error
            for r, (msg, _) in enumerate(gathered):
                if msg:
                    raise RuntimeError(f"VLLMSampler.generate failed on rank {r}: {msg}")
            local = {}
            for _, part in gathered:
                local.update(part)
        return [local[i] for i in range(len(prompts))]

    def _sample(
        self,
        indices: list[int],
        prompt_ids: list[list[int]],
        *,
        n,
        temperature,
        top_p,
        max_new_tokens,
        stop,
        seed,
        logprobs,
        progress=False,
    ) -> dict[int, list[Sample]]:
        if not indices and not self._dp_engine:
            return {}
        from vllm import SamplingParams

        requests, params, keys = [], [], []
        for i in indices:
            room = self.max_model_len - len(prompt_ids[i])
            for j in range(n):
                requests.append({"prompt_token_ids": prompt_ids[i]})
                params.append(
                    SamplingParams(
                        n=1,
                        temperature=temperature,
                        top_p=top_p,
                        max_tokens=min(max_new_tokens, room),
                        stop=stop,
                        seed=request_seed(seed, i, j),
                        logprobs=0 if logprobs else None,
                    )
                )
                keys.append((i, j))
        with _Threads(self.cpu_threads):
            outputs = self._llm.generate(requests, params, use_tqdm=progress)
        out: dict[int, list[Sample]] = {i: [] for i in indices}
        for (i, j), res in zip(keys, outputs):
            o = res.outputs[0]
            ids = [int(t) for t in o.token_ids]
            lps = None
            if logprobs:
                lps = [float(step[t].logprob) for step, t in zip(o.logprobs, ids)]
                bad = [k for k, v in enumerate(lps) if not math.isfinite(v)]
                if bad:
                    raise RuntimeError(
                        f"the engine returned a non-finite log-prob for prompts[{i}], sample {j}, token {bad[0]}"
                    )
            if o.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"prompts[{i}] sample {j} ended with finish_reason={o.finish_reason!r}")
            out[i].append(
                Sample(
                    prompt_ids=list(prompt_ids[i]),
                    response_ids=ids,
                    text=o.text,
                    finish_reason=o.finish_reason,
                    truncated=o.finish_reason == "length",
                    logprobs=lps,
                )
            )
        return out

    # ------------------------------------------------------------------ weight sync
    def load_weights(self, weights) -> float:
        """Serve new weights, in place and in memory (no engine restart); returns the seconds.

        Args:
            weights: the policy's full weights in checkpoint (transformers) names: a state dict
                (name -> tensor of any float dtype, on any device), an iterable of (name,
                tensor) pairs, or the module itself (its ``state_dict()``; FSDP2 DTensors are
                gathered one at a time; ``_orig_mod.`` wrappers are stripped). Under torchrun in
                the ``rank0`` layout, ranks other than 0 may pass ``{}``. An asleep sampler is
                woken up first (after ``sleep(level=2)`` this is how the weights come back).

        Raises:
            ValueError naming the tensor, before anything is loaded: a missing, unexpected,
            duplicated, misshaped, non-float or non-finite tensor (on any rank: every rank
            raises). RuntimeError when closed.
        """
        if self._closed:
            raise RuntimeError("VLLMSampler is closed")
        # the thread count the engine prepacked its weights with at start (see __init__)
        with _Threads(self._prepack_threads):
            return self._load_weights(weights)

    def _load_weights(self, weights) -> float:
        t0 = time.perf_counter()
        error, items = None, []
        try:
            items = _named_tensors(weights)
            if self.layout == "rank0" and self.rank != 0 and not items:
                items = []  # rank 0 holds the weights (Trainer.export_state_dict gives {} elsewhere)
            else:
                items = check_weights(items, self._specs)
        except ValueError as e:
            error = e
        self._agree(error)
        has_dtensors = self.world_size > 1 and any(_is_dtensor(t) for _, t in items)

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for name, t in items:
                yield name, (t.full_tensor() if _is_dtensor(t) else t)

        error = None
        try:
            if self._asleep:
                self.wake_up()  # weights go into allocated memory (every rank: the state is shared)
            if not self.hosts_engine:
                if has_dtensors:
                    for _ in stream():  # take part in the gathers; rank 0 keeps the result
                        pass
            else:
                if self.in_process:
                    self._llm.collective_rpc(
                        "reload_weights", kwargs={"weights_iterator": stream(), "is_checkpoint_format": True}
                    )
                else:
                    self._reload_from_folder(stream())
                self._refresh_tied_heads()
                self._llm.reset_prefix_cache()
        except Exception as e:  # noqa: BLE001 - re-raised on every rank
            error = e
        self._agree(error)
        self._weights_discarded = False
        return time.perf_counter() - t0

    def _refresh_tied_heads(self) -> None:
        """Rebuild what vLLM derives from a tied weight on the layer that does not load it.

        vLLM's in-place reload processes a layer (on the CPU: packs its weight for oneDNN) when the
        checkpoint's tensors for it arrive. A tied ``lm_head`` loads nothing (the checkpoint stores
        the embedding only), so its packed copy kept the old weights and the engine sampled from a
        stale head (found on tied Qwen2/Llama). Runs on every worker; in-process it is a call."""
        with _Env({"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}) if not self.in_process else contextlib.nullcontext():
            self._llm.apply_model(refresh_shared_weight_layers)

    def _reload_from_folder(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        """The fallback for an engine in another process: write safetensors, reload from them."""
        if self._weights_dir is None:
            self._weights_dir = self._mkdtemp("lrdpo-sampler-weights-")
        if not self._fallback_logged:
            logger.warning(
                "VLLMSampler: the engine runs in another process; load_weights writes the weights to %s "
                "and reloads them from there (VLLM_ENABLE_V1_MULTIPROCESSING=0 keeps a single-device "
                "engine in this process, for in-memory sync)",
                self._weights_dir,
            )
            self._fallback_logged = True
        _write_safetensors(dict(weights), os.path.join(self._weights_dir, "model.safetensors"))
        self._llm.collective_rpc(
            "reload_weights", kwargs={"weights_path": self._weights_dir, "is_checkpoint_format": True}
        )

    # ------------------------------------------------------------------ memory
    def sleep(self, level: int = 1) -> None:
        """Free accelerator memory while the trainer runs: level 1 offloads the weights to CPU
        RAM and drops the KV cache; level 2 drops both (then ``load_weights`` must follow
        ``wake_up``). A no-op (logged once) without sleep mode, e.g. on the CPU backend."""
        if level not in (1, 2):
            raise ValueError(f"level must be 1 or 2, got {level!r}")
        if not self.sleep_mode:
            if not getattr(self, "_sleep_logged", False):
                logger.info("VLLMSampler.sleep: sleep mode is off (no CUDA or enable_sleep_mode=False); nothing freed")
                self._sleep_logged = True
            return
        if not self._asleep:  # the state is kept on every rank, so all ranks refuse alike
            if self.hosts_engine:
                self._llm.sleep(level=level)
            self._asleep = level
            self._weights_discarded = self._weights_discarded or level == 2

    def wake_up(self) -> None:
        """Take the memory back after ``sleep`` (no-op when awake or without sleep mode)."""
        if self.sleep_mode and self._asleep:
            if self.hosts_engine:
                self._llm.wake_up()
            self._asleep = 0

    @property
    def llm(self):
        """The underlying ``vllm.LLM`` (None on a rank without an engine, or once closed); for
        inspection and benchmarks: weights loaded through it skip ``load_weights``' checks and
        prefix-cache reset."""
        return self._llm

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Shut the engine down and delete the sampler's temporary folders (idempotent)."""
        if self._closed:
            return
        self._closed = True
        llm, self._llm = self._llm, None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception as e:  # noqa: BLE001 - closing must not fail
                logger.warning("VLLMSampler.close: engine shutdown raised %r", e)
            del llm
            if getattr(self, "_owns_dist", False):
                # the in-process engine made a one-process group of its own: take it down
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

                cleanup_dist_env_and_memory()
        import gc

        gc.collect()
        for d in self._tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
        self._tmpdirs = []

    def __enter__(self) -> VLLMSampler:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("asleep" if self._asleep else "ready")
        return (
            f"VLLMSampler(model_dir={getattr(self, 'model_dir', None)!r}, layout={getattr(self, 'layout', None)!r}, "
            f"max_model_len={getattr(self, 'max_model_len', None)}, {state})"
        )
