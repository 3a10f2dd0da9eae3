"""One step's mechanics below the recipe: the order the pairs come in (a per-epoch permutation),
this rank's share of a step split into packed micro-batches, and the forward + backward of each,
weighted by pairs so that uneven micro-batches and ranks add up to the full-batch mean gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..data.packing import PackedBatch, pack_pairs, token_budget_batches
from ..data.records import PairExample
from ..data.seeds import stream_seed
from ..model.packed import model_sequence_logprobs
from ..ops.length_control import ld_token_weights, sampo_token_weights
from ..ops.validation import NonFiniteInputError
from . import distributed as dist_utils
from .config import TrainConfig
from .lora import adapters_off
from .policy import PolicyLoss
from .steps import StepTotals


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, shuffle: bool, seed: int, epoch: int) -> tuple[int, ...]:
    """The order of the ``n`` examples in ``epoch``: a permutation that is a function of
    (seed, epoch) when ``shuffle``, else 0..n-1 (cached: one step after another reads it)."""
    if not shuffle:
        return tuple(range(n))
    g = torch.Generator().manual_seed(stream_seed(seed, epoch))
    return tuple(torch.randperm(n, generator=g).tolist())


def plan_micro_batches(
    examples: Sequence[PairExample],
    mine: list[int],
    filler: int,
    max_tokens: int,
    info: dist_utils.DistInfo,
    device: torch.device,
) -> list[tuple[list[int], float]]:
    """(example indices, weight) per micro-batch of this rank's indices ``mine``, each at most
    ``max_tokens`` tokens, padded with zero-weight repeats (of ``filler``, an example of the step)
    so every rank runs the same number (FSDP collectives must line up)."""
    exs = [examples[i] for i in mine]
    groups = [[mine[j] for j in b] for b in token_budget_batches(exs, max_tokens)] if mine else []
    out = [(g, 1.0) for g in groups]
    want = dist_utils.max_int(len(out), info, device)
    while len(out) < want:
        out.append((groups[0] if groups else [filler], 0.0))
    return out


def token_weights(batch: PackedBatch, idx: list[int], cfg: TrainConfig, epoch: int) -> torch.Tensor | None:
    """float32 [N] token weights of ``batch`` (examples ``idx``, global indices) on its device:
    LD-DPO's with ``cfg.ld_alpha``, SamPO's with ``cfg.sampo`` (pair i of epoch e draws from
    stream_seed(stream_seed(seed, e), i): the same positions for the policy and the live
    reference, new ones every epoch), else None."""
    if cfg.ld_alpha is not None:
        return ld_token_weights(batch.labels, batch.cu_seqlens, cfg.ld_alpha)
    if cfg.sampo:
        run = stream_seed(cfg.seed, epoch)
        return sampo_token_weights(batch.labels, batch.cu_seqlens, [stream_seed(run, i) for i in idx])
    return None


def reference_logps(
    batch: PackedBatch,
    cfg: TrainConfig,
    ref_model: nn.Module | None,
    autocast: Callable,
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """float32 [S] reference log-probs of ``batch``: None for simpo, the live reference's forward
    (no grad, under ``autocast()``, summed with ``token_weights`` float32 [N] when given) with
    ``live_reference``, else the precomputed ones it carries."""
    if cfg.loss_type == "simpo":
        return None
    if cfg.live_reference:
        with torch.no_grad(), autocast(), adapters_off(ref_model):  # LoRA: the reference is the base
            logps, _ = model_sequence_logprobs(ref_model, batch, backend=cfg.backend, token_weights=token_weights)
        return logps.float()
    return batch.ref_logps


def accumulate_gradients(
    root: PolicyLoss,
    examples: Sequence[PairExample],
    step_idx: list[int],
    *,
    cfg: TrainConfig,
    info: dist_utils.DistInfo,
    device: torch.device,
    ref_model: nn.Module | None,
    autocast: Callable,
    epoch: int = 0,
) -> StepTotals:
    """Forward + backward of the step made of ``examples[step_idx]`` (global indices, the same on
    every rank) through ``root``; gradients ADD into ``.grad``. Returns the step's totals summed
    over ranks. ``epoch`` seeds SamPO's draws. A micro-batch meeting non-finite inputs ends the step with loss NaN and
    ``nonfinite`` set (single process; distributed, the error is raised)."""
    if not step_idx:
        raise ValueError("step_idx is empty: a step needs at least one pair")
    global_pairs = len(step_idx)
    mine = dist_utils.shard_indices(step_idx, info)
    micro = plan_micro_batches(examples, mine, step_idx[0], cfg.max_tokens_per_batch, info, device)
    totals = StepTotals(micro_batches=len(micro))
    for j, (idx, w) in enumerate(micro):
        batch = pack_pairs([examples[i] for i in idx]).to(device)
        if info.enabled:
            dist_utils.set_gradient_sync(root, j == len(micro) - 1)
        try:
            tw = token_weights(batch, idx, cfg, epoch)
            ref = reference_logps(batch, cfg, ref_model, autocast, tw)
            with autocast():
                loss, m = root(batch, ref, tw)
        except NonFiniteInputError as e:
            if info.enabled:  # the other ranks are inside collectives: no skipping here
                raise
            totals.loss, totals.nonfinite = float("nan"), str(e)  # a bad step: train_step skips it
            break
        # weighted BY PAIRS over the GLOBAL step; x world size undoes FSDP's gradient averaging
        scale = w * batch.num_pairs / global_pairs * info.world_size
        (loss * scale).backward()
        if w:
            totals.add(
                loss, m, pairs=batch.num_pairs, tokens=batch.num_tokens, truncated_tokens=batch.num_truncated_tokens
            )
    return totals.all_reduce(info, device)
