"""What one optimizer step adds up: pair-weighted sums of the loss and the pair metrics, and the
pair, token and micro-batch counts, summed across ranks (a typed hand-off, not a flat vector)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import distributed as dist_utils

PAIR_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "length/chosen",
    "length/rejected",
)
# metrics a run's loss gives only with some options: WPO's mean pair weight (``wpo: true``)
OPTIONAL_METRICS = ("wpo/weight",)


@dataclass
class StepTotals:
    """Sums over one step's micro-batches (and ranks, after ``all_reduce``).

    ``loss`` and ``metrics[k]`` are sums of (value x pairs of the micro-batch): divide by ``pairs``
    for the step's mean over pairs (``means()``). ``micro_batches`` is this rank's count.
    ``nonfinite``: why the step's forward stopped (non-finite inputs met, single process), else None.
    """

    loss: float = 0.0
    metrics: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PAIR_METRICS, 0.0))
    pairs: float = 0.0
    tokens: float = 0.0
    truncated_tokens: float = 0.0
    micro_batches: int = 0
    nonfinite: str | None = None

    def add(
        self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], *, pairs: int, tokens: int, truncated_tokens: int
    ) -> None:
        """Add one micro-batch: its mean loss and metrics (0-d tensors), weighted by its pairs
        (the ``OPTIONAL_METRICS`` too when the loss gave them: every micro-batch of a run does)."""
        keys = [*PAIR_METRICS, *(k for k in OPTIONAL_METRICS if k in metrics)]
        vals = torch.stack([loss.detach()] + [metrics[k].detach() for k in keys]).double().cpu().tolist()
        self.loss += vals[0] * pairs
        for k, v in zip(keys, vals[1:]):
            self.metrics[k] = self.metrics.get(k, 0.0) + v * pairs
        self.pairs += pairs
        self.tokens += tokens
        self.truncated_tokens += truncated_tokens

    def all_reduce(self, info: dist_utils.DistInfo, device: torch.device) -> StepTotals:
        """The totals summed over every rank (itself when single-process); micro_batches stays local.
        ``device``: where the collective runs (the training device: NCCL needs CUDA tensors)."""
        if not info.enabled:
            return self
        keys = list(self.metrics)  # the same keys in the same order on every rank (one config)
        flat = torch.tensor(
            [self.loss, *[self.metrics[k] for k in keys], self.pairs, self.tokens, self.truncated_tokens],
            dtype=torch.float64,
            device=device,
        )
        vals = dist_utils.all_reduce_sum(flat, info).cpu().tolist()
        n = len(keys)
        return StepTotals(
            vals[0], dict(zip(keys, vals[1 : n + 1])), vals[n + 1], vals[n + 2], vals[n + 3], self.micro_batches
        )

    def means(self) -> dict[str, float]:
        """``{"loss": mean loss over pairs, <each PAIR_METRICS key>: mean over pairs}``."""
        if self.pairs <= 0:
            raise ValueError("StepTotals has no pairs: nothing to average")
        return {"loss": self.loss / self.pairs, **{k: v / self.pairs for k, v in self.metrics.items()}}


def step_row(
    totals: StepTotals,
    *,
    step: int,
    epoch: float,
    skipped: bool,
    learning_rate: float,
    grad_norm: float,
    step_time_s: float,
    peak_memory_mb: float,
) -> dict:
    """The metrics row of one step (the keys of ``metrics.jsonl``): the step's pair means (NaN
    when its first micro-batch already failed), the guard's ``skipped``, the optimizer's numbers,
    counts and throughput, and ``nonfinite`` when the forward stopped on non-finite inputs."""
    row = {"step": step, "epoch": epoch}
    if totals.pairs > 0:
        row.update(totals.means())
    else:
        row.update({"loss": float("nan"), **dict.fromkeys(PAIR_METRICS, float("nan"))})
    row.update(
        {
            "skipped": skipped,
            "learning_rate": learning_rate,
            "grad_norm": grad_norm,
            "pairs": int(totals.pairs),
            "tokens": int(totals.tokens),
            "truncated_tokens": int(totals.truncated_tokens),
            "micro_batches": totals.micro_batches,
            "step_time_s": step_time_s,
            "tokens_per_s": totals.tokens / step_time_s,
            "pairs_per_s": totals.pairs / step_time_s,
            "peak_memory_mb": peak_memory_mb,
        }
    )
    if totals.nonfinite:
        row["nonfinite"] = totals.nonfinite
    return row
