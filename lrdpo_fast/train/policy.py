"""The trained policy plus its objective, as one module: the root that FSDP2 shards and that the
iterative loop keeps across iterations (``trainer.policy_loss``, passed to the next ``Trainer``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.packing import PackedBatch
from ..model.families import check_packed
from ..model.head import lm_head
from ..model.packed import model_sequence_logprobs, packed_hidden_states
from ..ops.fused import fused_pair_loss
from .config import TrainConfig


@dataclass(frozen=True)
class SequenceLogps:
    """Per-sequence response log-probs of a packed batch: ``logps`` float32 [S] (summed over
    response tokens), ``lengths`` int64 [S] (response tokens), sequences in pair order."""

    logps: torch.Tensor
    lengths: torch.Tensor


def disable_dropout(model: nn.Module) -> None:
    """Set every ``nn.Dropout`` probability (and the config's attention dropout) to 0: DPO
    log-prob differences must be deterministic."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "attention_dropout", 0.0):
        cfg.attention_dropout = 0.0


class PolicyLoss(nn.Module):
    """The policy plus the objective: ``forward(batch, ref_logps) -> (loss, metrics)``.

    A module of its own so FSDP2 can shard it as the root (it owns the embeddings, final norm
    and LM head, whose weight the fused kernel reads directly). ``sequence_logps(batch)`` runs the
    same sharded policy without the loss (registered as an FSDP forward method when sharded).
    ``cfg`` and ``compute_dtype`` are set by each Trainer that trains it; setting ``cfg`` builds
    its validated ``loss_args`` once, which every micro-batch's fused loss then takes as they are.
    """

    def __init__(self, policy: nn.Module, cfg: TrainConfig, compute_dtype: torch.dtype | None):
        super().__init__()
        check_packed(policy)  # ValueError naming the architecture the packed path cannot train
        self.policy = policy
        self.cfg = cfg
        self.compute_dtype = compute_dtype
        self.sharded = False

    @property
    def cfg(self) -> TrainConfig:
        """The TrainConfig of the Trainer training this root (its objective: ``loss_args``)."""
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: TrainConfig) -> None:
        self._cfg = cfg
        self.loss_args = cfg.loss_args()

    def forward(self, batch: PackedBatch, ref_logps: torch.Tensor | None, token_weights: torch.Tensor | None = None):
        """batch: PackedBatch on the model's device; ref_logps float32 [S] or None (simpo);
        token_weights float32 [N] or None (LD-DPO / SamPO, see ``micro_batches.token_weights``).
        Returns (loss float32 scalar = mean over the batch's pairs, metrics dict of 0-d tensors)."""
        cfg = self.cfg
        hidden = packed_hidden_states(self.policy, batch)
        head = lm_head(self.policy)
        dt = self.compute_dtype or head.weight.dtype
        hidden, weight = hidden.to(dt), head.weight.to(dt)
        bias = None if head.bias is None else head.bias.to(dt)
        return fused_pair_loss(
            hidden,
            weight,
            batch.labels,
            batch.cu_seqlens,
            self.loss_args,
            ref_logps=ref_logps,
            bias=bias,
            backend=cfg.backend,
            token_weights=token_weights,
            wpo=cfg.wpo,
            **head.kernel_args(),
        )

    def sequence_logps(self, batch: PackedBatch, token_weights: torch.Tensor | None = None) -> SequenceLogps:
        """The policy's per-sequence log-probs of ``batch`` (no loss), each token's log-prob times
        its weight (float32 [N]) when ``token_weights`` is given; see ``SequenceLogps``."""
        logps, lengths = model_sequence_logprobs(
            self.policy, batch, backend=self.cfg.backend, token_weights=token_weights
        )
        return SequenceLogps(logps, lengths)
