"""Multi-process training: torchrun set-up, FSDP2 sharding, rank sharding of steps, reductions.

Launch with ``torchrun --nproc_per_node K -m lrdpo_fast.cli train CONFIG.yaml``. Every rank
builds the same model and data; ``Trainer`` then
- shards the policy with FSDP2 (``fully_shard`` on every decoder layer and on a root wrapper
  that owns the embeddings, final norm and LM head), on NCCL (CUDA) or gloo (CPU);
- gives each rank ``step_pairs[rank::world]`` of every step's pairs and weights each micro-batch
  loss by its pairs over the GLOBAL pair count of the step, so the sum over ranks is exactly the
  single-process gradient (FSDP's reduce-scatter averages; the loss is multiplied by the world
  size to undo it);
- pads every rank to the same number of micro-batches (a zero-weight repeat) so the collectives
  of forward and backward line up;
- sums metric numerators across ranks, and saves full (unsharded) state dicts from rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, world size, local rank (GPU index)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the one that writes files and prints)."""
        return self.rank == 0


def init_distributed(device_type: str | None = None) -> DistInfo:
    """Initialise the default process group from torchrun's environment, once; idempotent.

    Without ``WORLD_SIZE`` > 1 in the environment (plain ``python``), returns a single-process
    DistInfo and initialises nothing. Backend: NCCL when CUDA is used, gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local)


def current() -> DistInfo:
    """DistInfo of the initialised process group (single process when none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def shard_indices(indices: list[int], info: DistInfo) -> list[int]:
    """This rank's share of a step's example indices: ``indices[rank::world]``."""
    return list(indices[info.rank :: info.world_size])


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (no-op single-process); returns ``t``."""
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def max_int(value: int, info: DistInfo, device: torch.device) -> int:
    """Maximum of an int over ranks."""
    if not info.enabled:
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op single-process)."""
    if info.enabled:
        dist.barrier()


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a transformers causal LM (``model.model.layers``)."""
    body = getattr(model, "model", model)
    layers = getattr(body, "layers", None)
    if layers is None:
        raise ValueError(f"model ({type(model).__name__}) has no .model.layers to shard")
    return list(layers)


def shard_policy(
    root: torch.nn.Module, policy: torch.nn.Module, info: DistInfo, forward_methods: tuple[str, ...] = ()
) -> torch.nn.Module:
    """FSDP2: ``fully_shard`` each decoder layer of ``policy``, then ``root`` (a module that
    owns ``policy`` and whose forward runs the whole loss); ``forward_methods`` are other methods of
    ``root`` that run the policy (they get FSDP's all-gather hooks too). Returns ``root`` (sharded
    in place).
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for layer in decoder_layers(policy):
        fully_shard(layer)
    fully_shard(root)
    for method in forward_methods:
        register_fsdp_forward_method(root, method)
    return root


def set_gradient_sync(root: torch.nn.Module, sync: bool) -> None:
    """FSDP2: reduce-scatter gradients on this backward (``sync``) or keep accumulating locally."""
    fn = getattr(root, "set_requires_gradient_sync", None)
    if fn is not None:
        fn(sync)


def full_state_dict(model: torch.nn.Module, info: DistInfo) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict of ``model``: full tensors on rank 0, {} on other ranks.

    Every rank must call it (it gathers). Single-process: a CPU copy of ``model.state_dict()``.
    """
    if not info.enabled:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if info.is_main else {}


def all_gather_objects(obj, world_size: int) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if world_size == 1:
        return [obj]
    out: list = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def all_gather_agreed(obj, error: Exception | None, world_size: int, rebuild=None) -> list:
    """The one rank-agreed gather: every rank's ``obj`` in rank order, or, when any rank failed
    (``error`` not None there), an error raised on every rank, so no rank goes on into a
    collective alone. This rank's own error is raised as it is; another rank's as a ValueError
    (when it was one) or a RuntimeError, naming the rank. ``rebuild(name, message, payload, rank)``
    may return another exception for a class it knows (``payload``: the error's picklable
    ``args_for_ranks`` attribute), e.g. the sampler's ``WeightSyncError``."""
    mine = None if error is None else (type(error).__name__, str(error), getattr(error, "args_for_ranks", None))
    gathered = all_gather_objects((mine, obj), world_size)
    if error is not None:
        raise error
    for r, (m, _) in enumerate(gathered):
        if m is None:
            continue
        rebuilt = rebuild(m[0], m[1], m[2], r) if rebuild is not None else None
        if rebuilt is not None:
            raise rebuilt
        raise (ValueError if m[0] == "ValueError" else RuntimeError)(f"{m[1]} (on rank {r})")
    return [o for _, o in gathered]


def agree_on_error(error: Exception | None, world_size: int, rebuild=None) -> None:
    """Raise on every rank when any rank failed (``all_gather_agreed`` with nothing to gather)."""
    all_gather_agreed(None, error, world_size, rebuild)


def on_main_agreed(info: DistInfo, fn) -> None:
    """Run ``fn()`` on rank 0 only; a ValueError it raises is raised on every rank (the others
    as a ValueError naming rank 0), and every rank returns after rank 0 is done."""
    error = None
    if info.is_main:
        try:
            fn()
        except ValueError as e:
            error = e
    agree_on_error(error, info.world_size)
