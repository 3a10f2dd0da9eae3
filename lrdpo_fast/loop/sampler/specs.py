"""The sampler's own parameter objects, each validated once where it is built.

``EngineSpec``: how the engine starts and syncs (``VLLMSampler(..., **fields)``).
``GenerationSpec``: how ``generate`` samples. The iterate YAML's ``sampler:`` section is split
into the two (``SamplerSection``), so every sampler knob is checked here and nowhere else.
Errors name the field with the owner's prefix (``where``), e.g. ``"IterateConfig: sampler.n"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ...ops.checks import check_int, check_number

ENGINE_DTYPES = ("auto", "float32", "float", "bfloat16", "float16", "half")


@dataclass(frozen=True)
class EngineSpec:
    """Engine options of ``VLLMSampler`` (see its docstring for each field's meaning)."""

    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool | None = None
    cpu_threads: int | None = None
    enforce_eager: bool | str = "auto"  # "auto": eager.choose_enforce_eager decides at the start
    verify_sync: bool = True
    quiet: bool = False
    where: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        w = self.where
        if not isinstance(self.dtype, torch.dtype) and (
            isinstance(self.dtype, bool) or self.dtype not in ENGINE_DTYPES
        ):
            raise ValueError(f"{w}dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if self.max_model_len is not None:
            check_int(f"{w}max_model_len", self.max_model_len, 2)
        check_number(f"{w}gpu_memory_utilization", self.gpu_memory_utilization, 0, 1, low_open=True)
        check_int(f"{w}tensor_parallel_size", self.tensor_parallel_size, 1)
        if self.enable_sleep_mode is not None:
            _check_bool(f"{w}enable_sleep_mode", self.enable_sleep_mode)
        if self.cpu_threads is not None:
            check_int(f"{w}cpu_threads", self.cpu_threads, 1)
        if self.enforce_eager != "auto":
            _check_bool(f"{w}enforce_eager", self.enforce_eager, " or auto")
        for name in ("verify_sync", "quiet"):
            _check_bool(f"{w}{name}", getattr(self, name))

    def engine_args(self) -> dict[str, Any]:
        """The fields that go to ``VLLMSampler`` as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "where"}


@dataclass(frozen=True)
class GenerationSpec:
    """Sampling arguments of ``VLLMSampler.generate``: ``n`` samples per prompt, ``temperature``
    (0 = greedy), nucleus ``top_p``, ``max_new_tokens``, ``stop`` strings, ``logprobs``."""

    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] | None = None
    logprobs: bool = False
    where: str = field(default="", compare=False, repr=False)
    min_n: int = field(default=1, compare=False, repr=False)  # the owner's floor (the loop: 2)

    def __post_init__(self) -> None:
        w = self.where
        check_int(f"{w}n", self.n, self.min_n)
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ValueError(f"{w}temperature must be a finite number >= 0, got {t!r}")
        check_number(f"{w}top_p", self.top_p, 0.0, 1.0, low_open=True)
        check_int(f"{w}max_new_tokens", self.max_new_tokens, 1)
        _check_bool(f"{w}logprobs", self.logprobs)
        object.__setattr__(self, "stop", _stop_strings(self.stop, f"{w}stop"))

    def sampling_args(self) -> dict[str, Any]:
        """The fields that go to ``VLLMSampler.generate`` as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("where", "min_n")}


def _check_bool(name: str, value: Any, also: str = "") -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool (true or false){also}, got {value!r}")


def _stop_strings(stop: Any, name: str) -> tuple[str, ...] | None:
    if stop is None:
        return None
    items = [stop] if isinstance(stop, str) else list(stop) if isinstance(stop, Sequence) else None
    if not items or not all(isinstance(s, str) and s for s in items):
        raise ValueError(f"{name} must be a non-empty string or a list of them, got {stop!r}")
    return tuple(items)


ENGINE_KEYS = tuple(f.name for f in fields(EngineSpec) if f.name not in ("where", "quiet", "enable_sleep_mode"))
GENERATION_KEYS = ("n", "temperature", "top_p", "max_new_tokens")
SECTION_DEFAULTS = {"max_new_tokens": 128}  # the loop's response budget (generate's own is 256)


@dataclass(frozen=True)
class SamplerSection:
    """The iterate YAML's ``sampler:`` section as the sampler's own two objects: ``engine`` (how
    the engine starts and syncs) and ``generation`` (how each phase samples)."""

    engine: EngineSpec
    generation: GenerationSpec

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str, min_n: int = 1) -> SamplerSection:
        """Split and check the mapping (every sampler knob is checked here and nowhere else); an
        unknown key is refused naming it and the valid ones. ``where`` prefixes every error
        (``"IterateConfig: sampler."``); ``min_n``: the owner's floor for ``n`` (a pair needs 2)."""
        unknown = sorted(set(values) - set(ENGINE_KEYS) - set(GENERATION_KEYS))
        if unknown:
            valid = sorted(ENGINE_KEYS + GENERATION_KEYS)
            raise ValueError(f"{where.rstrip('.')} has unknown key(s) {unknown}; valid keys are {valid}")
        engine = EngineSpec(**{k: v for k, v in values.items() if k in ENGINE_KEYS}, where=where)
        chosen = {**SECTION_DEFAULTS, **{k: v for k, v in values.items() if k in GENERATION_KEYS}}
        return cls(engine, GenerationSpec(**chosen, where=where, min_n=min_n))

    def to_dict(self) -> dict[str, Any]:
        """The section as the YAML has it (every key, defaults filled in)."""
        gen = self.generation.sampling_args()
        eng = self.engine.engine_args()
        return {**{k: gen[k] for k in GENERATION_KEYS}, **{k: eng[k] for k in ENGINE_KEYS}}
