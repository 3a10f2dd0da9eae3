"""``VLLMSampler``: the engine's lifetime, sampling and the in-memory weight sync (see the
package docstring for prompts, seeds, the sync and the layouts under torchrun)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from ...ops.checks import check_int
from ...train.distributed import all_gather_agreed
from ..samples import Sample
from .engine import Engine, check_servable, model_folder, shutdown_engine, start_engine, tokenizer_folder
from .gc_heap import collection_paused
from .layout import agree, resolve_layout
from .process import Threads
from .prompts import prompt_ids
from .sampling import sampling_requests, to_sample
from .specs import EngineSpec, GenerationSpec
from .sync import WeightSync
from .weights import (
    TensorSpec,
    checkpoint_specs,
    is_dtensor,
    named_tensors,
)

logger = logging.getLogger(__name__)


class VLLMSampler(WeightSync):
    """k samples per prompt from a vLLM engine that serves the live policy's weights.

    Args:
        model: a local ``save_pretrained`` folder (str or path), or a transformers ``*ForCausalLM``
            module, saved once to a private temporary folder to start the engine.
        tokenizer: a tokenizer folder or a transformers tokenizer; default the model folder's
            (required when ``model`` is a module). Used to render and tokenize prompts; the engine
            detokenizes with the same one.
        seed: default seed of ``generate`` (see the package docstring) and the engine's seed.
        dtype: the engine's dtype ("auto", "float32", "bfloat16", "float16"); "auto" follows
            vLLM (it runs a float32 checkpoint in half precision on most devices).
        max_model_len: prompt + response token budget of the engine (default: the model's).
        gpu_memory_utilization: share of GPU memory for weights + KV cache (vLLM's meaning). On the
            CPU backend it is the share of RAM for the KV cache unless ``VLLM_CPU_KVCACHE_SPACE``
            or ``kv_cache_memory_bytes`` is set; when neither is, the sampler sizes the cache to
            ``max_num_seqs`` full sequences of ``max_model_len`` (64 MiB to 1 GiB).
        tensor_parallel_size: GPUs per engine, passed to vLLM.
        enable_sleep_mode: allow ``sleep``/``wake_up`` to free accelerator memory; default True
            with CUDA, False otherwise (the CPU backend has no sleep mode; True there is refused).
        cpu_threads: torch intra-op threads of the CPU engine (default: the process's count): it
            samples on them, and starts and reloads weights on the count given at construction
            (oneDNN's packed layout depends on it). 1 is fastest for small models and shared cores.
        quiet: start the engine without vLLM's weight-loading bar and without the CPU backend's
            NUMA-binding warning line (everything else it prints still shows).
        verify_sync: after every ``load_weights``, check that the engine serves the given weights
            (``verify``: a 16-token probe's log-probs against the training side's) and raise
            ``WeightSyncError`` when it does not.
        enforce_eager: True (no compilation: the fastest start), False (vLLM compiles the model),
            or "auto" (default): ``eager.choose_enforce_eager`` decides from the device, the model
            size and vLLM's compile cache (without a token count: eager on the CPU), and logs why;
            ``self.enforce_eager`` is the choice.
        **engine_kwargs: passed to ``vllm.LLM`` (e.g. ``max_num_seqs``).

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
        verify_sync: bool = True,
        **engine_kwargs,
    ) -> None:
        self._engine: Engine | None = None
        self._tmpdirs: list[str] = []
        self._weights_dir: str | None = None
        self._fallback_logged = False  # the cross-process reload's warning went out
        self._asleep = 0
        self._weights_discarded = False  # sleep(level=2) until the next load_weights
        self._closed = False
        self.tokenizer = None
        self.seed = check_int("seed", seed, 0)
        self.spec = EngineSpec(
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enable_sleep_mode=enable_sleep_mode,
            cpu_threads=cpu_threads,
            enforce_eager=engine_kwargs.pop("enforce_eager", "auto"),
            verify_sync=verify_sync,
            quiet=quiet,
        )
        self.cpu_threads = self.spec.cpu_threads
        self.verify_sync = self.spec.verify_sync
        cuda = torch.cuda.is_available()
        self.sleep_mode = cuda if enable_sleep_mode is None else enable_sleep_mode
        if self.sleep_mode and not cuda:
            raise ValueError("enable_sleep_mode=True needs a CUDA device (vLLM's CPU backend has no sleep mode)")
        # oneDNN picks the packed weight layout by the thread count and caches its matmul
        # primitives per shape across layers: the weights are packed (at start and on every
        # reload) on one thread count, or a reload's layout meets primitives built for another
        self._prepack_threads = self.spec.cpu_threads or torch.get_num_threads()
        self.layout = resolve_layout(self.spec.tensor_parallel_size)
        self.rank, self.world_size = self.layout.rank, self.layout.world_size
        state = None
        if isinstance(model, torch.nn.Module):
            # full weights to save the start-up checkpoint from (a collective for FSDP2 DTensors)
            state = {k: (v.full_tensor() if is_dtensor(v) else v) for k, v in named_tensors(model)}
        info, error = {}, None
        if self.layout.hosts_engine:
            try:
                info = self._start(model, tokenizer, state, engine_kwargs)
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                if self.world_size == 1:
                    self.close()
                    raise
                error = e
        info = self._started_everywhere(error, info)
        self.max_model_len: int = info["max_model_len"]
        self._specs: dict[str, TensorSpec] = info["specs"]
        self.model_dir: str = info["model_dir"]
        self._engine_dtype: torch.dtype = info["dtype"]
        if self.tokenizer is None:  # ranks without an engine
            if hasattr(tokenizer, "save_pretrained"):
                self.tokenizer = tokenizer
            else:
                path = os.fspath(tokenizer) if tokenizer is not None else info["tokenizer_dir"]
                self.tokenizer = self._load_tokenizer(path)

    # ------------------------------------------------------------------ start-up
    def _start(self, model, tokenizer, state, engine_kwargs) -> dict[str, Any]:
        with collection_paused():  # the vLLM imports and the start: gc_heap.py
            return self._start_engine(model, tokenizer, state, engine_kwargs)

    def _start_engine(self, model, tokenizer, state, engine_kwargs) -> dict[str, Any]:
        model_dir = model_folder(model, state, self._mkdtemp)
        check_servable(model_dir)  # an architecture vLLM would serve wrongly is refused before it starts
        tokenizer_dir = tokenizer_folder(tokenizer, model, model_dir, self._mkdtemp)
        specs = checkpoint_specs(model_dir)
        self.tokenizer = tokenizer if hasattr(tokenizer, "save_pretrained") else self._load_tokenizer(tokenizer_dir)
        self._engine = start_engine(
            model_dir,
            tokenizer_dir,
            seed=self.seed,
            spec=self.spec,
            sleep_mode=self.sleep_mode,
            prepack_threads=self._prepack_threads,
            layout=self.layout,
            engine_kwargs=engine_kwargs,
        )
        self.layout = self._engine.layout
        return {
            "max_model_len": self._engine.max_model_len,
            "dtype": self._engine.dtype,
            "specs": specs,
            "model_dir": model_dir,
            "tokenizer_dir": tokenizer_dir,
        }

    def _started_everywhere(self, error: Exception | None, info: dict) -> dict:
        """Every rank learns whether every engine started; ranks without one get rank 0's info."""
        if self.world_size == 1:
            return info
        try:
            gathered = all_gather_agreed(info, error, self.world_size)
        except Exception:
            self.close()
            raise
        return info if self.layout.hosts_engine else gathered[0]

    def _mkdtemp(self, prefix: str) -> str:
        d = tempfile.mkdtemp(prefix=prefix)
        self._tmpdirs.append(d)
        weakref.finalize(self, shutil.rmtree, d, True)  # also when close() is never called
        return d

    @staticmethod
    def _load_tokenizer(path: str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)

    @property
    def hosts_engine(self) -> bool:
        """True where this rank runs an engine (every rank except in the ``rank0`` layout)."""
        return self.layout.hosts_engine

    @property
    def in_process(self) -> bool:
        """True when the engine's model runs in this process (weights are handed over as tensors)."""
        return self._engine is not None and self._engine.in_process

    @property
    def engine_dtype(self) -> torch.dtype:
        """The dtype the engine runs the model in."""
        return self._engine_dtype

    @property
    def enforce_eager(self) -> bool | None:
        """Whether the engine runs eagerly (not compiled); None on a rank without an engine."""
        return None if self._engine is None else self._engine.enforce_eager

    @property
    def llm(self):
        """The underlying ``vllm.LLM`` (None on a rank without an engine, or once closed); for
        inspection and benchmarks: weights loaded through it skip ``load_weights``' checks and
        prefix-cache reset."""
        return None if self._engine is None else self._engine.llm

    def _agree(self, error: Exception | None) -> None:
        agree(error, self.world_size)

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
            seed: overrides the sampler's seed for this call (per-sample seeds: package docstring).
            logprobs: also return each generated token's log-prob under the policy (temperature
                1, before top-p; the engine's dtype).
            progress: show vLLM's progress bar over the requests (on the ranks that host an engine).
            (``GenerationSpec(...).sampling_args()`` gives n .. logprobs as keyword arguments.)

        Returns:
            list of P lists of n ``Sample`` each, in prompt order (on every rank under torchrun).

        Raises:
            ValueError naming the argument: empty prompts or an empty prompt, n < 1,
            temperature < 0, top_p outside (0, 1], max_new_tokens < 1, a bad stop or seed, a
            prompt of max_model_len tokens or more. RuntimeError when asleep, closed, or when the
            engine returns a non-finite log-prob.
        """
        self._check_ready()
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
            raise ValueError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty")
        spec = GenerationSpec(n, temperature, top_p, max_new_tokens, stop, logprobs)
        seed = self.seed if seed is None else check_int("seed", seed, 0)
        if self._asleep:
            raise RuntimeError("VLLMSampler is asleep: call wake_up() (and load_weights after sleep(level=2)) first")
        if self._weights_discarded:
            raise RuntimeError("VLLMSampler.sleep(level=2) discarded the weights: call load_weights before generate")
        ids = [prompt_ids(self.tokenizer, p, i) for i, p in enumerate(prompts)]
        for i, one in enumerate(ids):
            if len(one) >= self.max_model_len:
                raise ValueError(
                    f"prompts[{i}] has {len(one)} tokens; max_model_len={self.max_model_len} leaves "
                    "no room for a response"
                )
        layout = self.layout
        mine = [i for i in range(len(prompts)) if i % layout.groups == layout.group] if layout.hosts_engine else []
        error, local = None, {}
        try:
            local = self._sample(mine, ids, spec, seed, bool(progress))
        except Exception as e:  # noqa: BLE001 - re-raised on every rank
            error = e
        if self.world_size > 1:
            local = self._gathered_samples(error, local)
        elif error is not None:
            raise error
        return [local[i] for i in range(len(prompts))]

    def _gathered_samples(self, error: Exception | None, local: dict) -> dict:
        parts = all_gather_agreed(local if self.layout.leader else {}, error, self.world_size)
        return {i: samples for part in parts for i, samples in part.items()}

    def _sample(
        self, indices: list[int], ids: list[list[int]], spec: GenerationSpec, seed: int, progress: bool
    ) -> dict[int, list[Sample]]:
        dp_engine = self.layout.mode == "replicate" and torch.cuda.is_available()
        if not indices and not dp_engine:  # data-parallel engines step together: idle ones still run
            return {}
        requests, params, keys = sampling_requests(indices, ids, spec, seed, self.max_model_len)
        with Threads(self.cpu_threads):
            outputs = self.llm.generate(requests, params, use_tqdm=progress)
        out: dict[int, list[Sample]] = {i: [] for i in indices}
        for (i, j), res in zip(keys, outputs):
            out[i].append(to_sample(ids[i], res.outputs[0], i, j, spec.logprobs))
        return out

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
                self.llm.sleep(level=level)
            self._asleep = level
            self._weights_discarded = self._weights_discarded or level == 2

    def wake_up(self) -> None:
        """Take the memory back after ``sleep`` (no-op when awake or without sleep mode)."""
        if self.sleep_mode and self._asleep:
            if self.hosts_engine:
                self.llm.wake_up()
            self._asleep = 0

    # ------------------------------------------------------------------ lifetime
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("VLLMSampler is closed")

    _check_ready = _check_open

    def close(self) -> None:
        """Shut the engine down and delete the sampler's temporary folders (idempotent)."""
        if self._closed:
            return
        self._closed = True
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                shutdown_engine(engine)
            except Exception as e:  # noqa: BLE001 - closing must not fail
                logger.warning("VLLMSampler.close: engine shutdown raised %r", e)
            del engine
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
        layout = getattr(getattr(self, "layout", None), "mode", None)
        return (
            f"VLLMSampler(model_dir={getattr(self, 'model_dir', None)!r}, layout={layout!r}, "
            f"max_model_len={getattr(self, 'max_model_len', None)}, {state})"
        )
