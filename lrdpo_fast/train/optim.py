"""AdamW and the learning-rate schedule of a training run.

The schedule is a ``LambdaLR`` over optimizer steps: linear warm-up from 0 to the peak learning
rate over ``warmup`` steps, then constant, linear decay to 0, or cosine decay to 0 at
``total_steps`` (the same shapes as transformers' ``get_*_schedule_with_warmup``).
"""

from __future__ import annotations

import math

import torch

from .config import LR_SCHEDULES, TrainConfig


def warmup_steps_for(cfg: TrainConfig, total_steps: int) -> int:
    """Warm-up length in steps: ``warmup_steps``, or ``ceil(warmup_ratio * total_steps)``."""
    if cfg.warmup_steps:
        return int(cfg.warmup_steps)
    return int(math.ceil(cfg.warmup_ratio * total_steps))


def lr_multiplier(step: int, *, total_steps: int, warmup: int, kind: str) -> float:
    """Multiplier of the peak learning rate used by optimizer step ``step`` (0-based).

    Warm-up multiplies by (step + 1) / warmup (transformers uses step / warmup, which spends the
    first step at learning rate 0); after it, the decay runs from 1 at ``warmup`` to 0 at
    ``total_steps``.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"kind must be one of {LR_SCHEDULES}, got {kind!r}")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices only (not norms/biases).

    Uses the fused CUDA implementation when the parameters live on CUDA.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=False everywhere)")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    on_cuda = all(p.device.type == "cuda" for p in params)
    kwargs = {"fused": True} if on_cuda else {}
    return torch.optim.AdamW(
        groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, **kwargs
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """LambdaLR implementing ``cfg.lr_scheduler`` with warm-up over ``total_steps`` steps."""
    warmup = warmup_steps_for(cfg, total_steps)
    kind = cfg.lr_scheduler

    def fn(step: int) -> float:
        return lr_multiplier(step, total_steps=total_steps, warmup=warmup, kind=kind)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
