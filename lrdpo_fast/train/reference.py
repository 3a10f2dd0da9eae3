"""Where the reference log-probs of a training run come from, and computing them.

``reference_source`` names one of five sources; the Trainer's ``_setup_reference`` acts on it:
- ``"none"``: SimPO has no reference;
- ``"live"``: a frozen reference model runs on every micro-batch (``live_reference``);
- ``"stored"``: every pair already carries ``ref_chosen_logps`` / ``ref_rejected_logps``;
- ``"through_root"``: distributed, reference = the policy before training: computed through the
  sharded root after sharding (every rank runs every batch in the same order);
- ``"precompute"``: the reference model (default: the policy before training) runs once over all
  pairs before training (``lrdpo_fast.model.precompute_reference_logps``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..data.packing import pack_pairs, token_budget_batches
from ..data.records import PairExample
from ..ops.length_control import ld_token_weights
from .config import TrainConfig

REFERENCE_SOURCES = ("none", "live", "stored", "through_root", "precompute")


def reference_source(
    cfg: TrainConfig, ref_model: nn.Module | None, examples: Sequence[PairExample], distributed: bool
) -> str:
    """One of ``REFERENCE_SOURCES`` for this run (see the module docstring)."""
    if cfg.loss_type == "simpo":
        return "none"
    if cfg.live_reference:
        return "live"
    if ref_model is None and all(ex.has_ref for ex in examples):
        return "stored"
    if ref_model is None and distributed:
        return "through_root"
    return "precompute"


@torch.no_grad()
def precompute_through_root(
    root: nn.Module,
    examples: Sequence[PairExample],
    *,
    max_tokens_per_batch: int,
    device: torch.device,
    autocast: Callable,
    ld_alpha: float | None = None,
) -> list[PairExample]:
    """Reference log-probs = the (sharded) policy of ``root`` (a ``PolicyLoss``) before training.

    Every rank computes every batch in the same order so FSDP's collectives line up. Returns the
    examples with ``ref_chosen_logps`` / ``ref_rejected_logps`` set (summed with LD-DPO's token
    weights when ``ld_alpha`` is set); the root is resharded after.
    """
    stripped = [PairExample(ex.prompt_ids, ex.chosen_ids, ex.rejected_ids, ex.num_truncated_tokens) for ex in examples]
    out = list(examples)
    policy = root.policy
    was_training = policy.training
    policy.eval()
    try:
        for idx in token_budget_batches(stripped, max_tokens_per_batch):
            batch = pack_pairs([stripped[i] for i in idx]).to(device)
            with autocast():
                tw = None if ld_alpha is None else ld_token_weights(batch.labels, batch.cu_seqlens, ld_alpha)
                vals = root.sequence_logps(batch, tw).logps.float().cpu().tolist()
            for j, i in enumerate(idx):
                out[i] = examples[i].with_ref(vals[2 * j], vals[2 * j + 1])
    finally:
        policy.train(was_training)
    # FSDP keeps the root unsharded after a forward: reshard so the optimizer is built on the
    # sharded parameters.
    reshard = getattr(root, "reshard", None)
    if reshard is not None:
        reshard()
    return out
