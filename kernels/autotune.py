"""Tile configurations ``triton.autotune`` picks from for the logits-tile kernels.

Two families, chosen per device by its opt-in shared memory per block: ``BIG`` for A100 (163 KiB)
/ H100 (227 KiB) class GPUs, ``SMALL`` for ~100 KiB consumer GPUs (RTX 30xx/40xx: 99 KiB).
Within the family, configs whose estimated shared memory exceeds the device's (or, for float32
inputs, twice the bytes) are pruned before any compile. ``tests/compile_kernels.py`` compiles
every surviving config for sm_80 and sm_90 and checks the estimate against the compiler's number.
Under ``TRITON_INTERPRET=1`` (read at import) there is one tiny config: no tuning, fast tests.

Keys: ``D`` and ``V`` (the autotuner adds every tensor argument's dtype); N is not a key (the best
tile depends little on it, and re-tuning per batch length would stall training).
"""

from __future__ import annotations

import inspect
import os

import torch
import triton

BIG_MIN_SMEM = 160 * 1024  # A100 opt-in: 163 KiB; H100: 227 KiB
A100_SMEM = 163 * 1024
CONSUMER_SMEM = 99 * 1024  # RTX 3090/4090 opt-in per block


def _cfg(bn: int, bv: int, bd: int, warps: int, stages: int) -> triton.Config:
    return triton.Config(dict(BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=bd), num_warps=warps, num_stages=stages)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


INTERPRETER = [_cfg(16, 32, 16, 1, 1)]
# forward: one [BLOCK_N, BLOCK_V] logits tile per step, pipelined over d
FWD_BIG = [_cfg(64, 128, 64, 4, 4), _cfg(128, 128, 64, 8, 3), _cfg(128, 256, 64, 8, 3), _cfg(64, 256, 64, 8, 4)]
FWD_SMALL = [_cfg(64, 128, 32, 4, 3), _cfg(128, 128, 32, 8, 3), _cfg(64, 64, 64, 4, 3)]
# backward: the logits tile, then dz (in the input dtype) against W and H slices per d step
BWD_BIG = [_cfg(64, 128, 64, 8, 3), _cfg(128, 128, 64, 8, 3), _cfg(64, 256, 64, 8, 3)]
BWD_SMALL = [_cfg(64, 128, 32, 4, 2), _cfg(64, 64, 64, 4, 2)]


# LRDPO_AUTOTUNE=0 (read at import): this one tile, no tuning (quick GPU test runs; A100/H100)
UNTUNED = _cfg(64, 128, 64, 8, 3)


def configs(kind: str) -> list[triton.Config]:
    """Every config of kernel ``kind`` ("fwd" | "bwd"), both families (the interpreter's alone)."""
    if interpreting():
        return INTERPRETER
    if os.environ.get("LRDPO_AUTOTUNE", "1") == "0":
        return [UNTUNED]
    return (FWD_BIG + FWD_SMALL) if kind == "fwd" else (BWD_BIG + BWD_SMALL)


def family(kind: str, smem: int) -> list[triton.Config]:
    """The family for a device with ``smem`` bytes of opt-in shared memory per block."""
    big = smem >= BIG_MIN_SMEM
    if kind == "fwd":
        return FWD_BIG if big else FWD_SMALL
    return BWD_BIG if big else BWD_SMALL


def smem_estimate(kind: str, cfg: triton.Config, elem_bytes: int) -> int:
    """Upper estimate of a config's shared memory in bytes (checked by compile_kernels.py)."""
    bn, bv, bd = (cfg.kwargs[k] for k in ("BLOCK_N", "BLOCK_V", "BLOCK_D"))
    operands = cfg.num_stages * (bn + bv) * bd * elem_bytes
    if kind == "fwd":
        return operands
    # backward: + the dz tile as a dot operand, and a float32 layout conversion of the result
    return max(operands, (bn * bv + (bn + bv) * bd) * elem_bytes + max(bn, bv) * bd * 4) + bn * bv * elem_bytes


def fits(kind: str, smem: int, elem_bytes: int) -> list[triton.Config]:
    """The configs of the device's family whose estimate fits ``smem`` (at least the smallest)."""
    fam = family(kind, smem)
    ok = [c for c in fam if smem_estimate(kind, c, elem_bytes) <= smem]
    return ok or [min(fam, key=lambda c: smem_estimate(kind, c, elem_bytes))]


def device_smem(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or CONSUMER_SMEM)


def pruner(kind: str):
    """``early_config_prune`` for triton.autotune: keep the fitting configs of the device's family."""

    def prune(cfgs, named_args, **kwargs):
        if interpreting():
            return list(cfgs)
        h = named_args["H"]
        keep = {id(c) for c in fits(kind, device_smem(h.device), h.element_size())}
        return [c for c in cfgs if id(c) in keep] or list(cfgs)[:1]

    return prune


def quick_bench(fn, quantiles=None):
    """Short timing per config (the first call of a shape bucket pays it once)."""
    return triton.testing.do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


def tuning_options() -> dict:
    """``do_bench=quick_bench, cache_results=True`` for ``triton.autotune``, each only where this
    Triton takes it (older releases lack one or both: they tune with their default timing and
    without the on-disk cache rather than fail at import)."""
    accepted = inspect.signature(triton.autotune).parameters
    wanted = {"do_bench": quick_bench, "cache_results": True}
    return {k: v for k, v in wanted.items() if k in accepted}
