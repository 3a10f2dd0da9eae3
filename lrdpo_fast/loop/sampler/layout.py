"""Where the engines run under torchrun, and which prompts each one samples.

``LRDPO_SAMPLER_SHARDING`` picks the layout (``auto``: ``replicate`` with CUDA, ``rank0``
otherwise); one process is the ``single`` layout. See the package docstring for each layout.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

SHARDING_ENV = "LRDPO_SAMPLER_SHARDING"
SHARDING_MODES = ("auto", "replicate", "rank0")


@dataclass(frozen=True)
class RankLayout:
    """This rank's place: ``mode`` is "single", "replicate" or "rank0"; prompts ``i`` with
    ``i % groups == group`` are sampled by this rank's engine, and a ``leader`` contributes its
    group's samples to the gather."""

    rank: int
    world_size: int
    mode: str
    group: int = 0
    groups: int = 1
    leader: bool = True

    @property
    def hosts_engine(self) -> bool:
        """True where this rank starts an engine (every rank except in ``rank0`` mode)."""
        return self.mode != "rank0" or self.rank == 0

    @property
    def engine_in_this_process(self) -> bool:
        """True where the engine may run in this process: alone, or one per rank on CUDA."""
        return self.mode == "single" or (self.mode == "replicate" and torch.cuda.is_available())


def dist_world() -> tuple[int, int]:
    """(rank, world size) from the process group, or from torchrun's environment."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def resolve_layout(tensor_parallel_size: int) -> RankLayout:
    """This rank's layout from torchrun's environment and ``LRDPO_SAMPLER_SHARDING``; starts the
    process group (as the trainer would) when there is more than one rank.

    Raises ValueError naming ``LRDPO_SAMPLER_SHARDING`` (unknown mode) or ``tensor_parallel_size``
    (does not divide the world size in the CUDA ``replicate`` layout)."""
    rank, world = dist_world()
    sharding = os.environ.get(SHARDING_ENV, "auto")
    if sharding not in SHARDING_MODES:
        raise ValueError(f"{SHARDING_ENV} must be one of {SHARDING_MODES}, got {sharding!r}")
    if world == 1:
        return RankLayout(rank, world, "single")
    cuda = torch.cuda.is_available()
    mode = "replicate" if sharding == "replicate" or (sharding == "auto" and cuda) else "rank0"
    from ...train.distributed import init_distributed

    init_distributed()
    if mode == "replicate" and cuda and world % tensor_parallel_size:
        raise ValueError(f"tensor_parallel_size={tensor_parallel_size} must divide the world size {world}")
    if mode == "replicate" and not cuda:  # one engine per rank, each its share of the prompts
        return RankLayout(rank, world, mode, group=rank, groups=world, leader=True)
    return RankLayout(rank, world, mode, leader=rank == 0)


def _rebuild_sync_error(name: str, message: str, payload: Any, rank: int) -> Exception | None:
    if name == "WeightSyncError" and payload is not None:
        from .verify import WeightSyncError

        return WeightSyncError(*payload, detail=f" (on rank {rank})")
    return None


def agree(error: Exception | None, world_size: int) -> None:
    """Raise on every rank when any rank failed (``train.distributed.agree_on_error``); another
    rank's ``WeightSyncError`` is raised as one."""
    from ...train.distributed import agree_on_error

    agree_on_error(error, world_size, _rebuild_sync_error)
