"""A Trainer's state on disk: ``checkpoint-<step>`` folders (weights + tokenizer, optimizer,
schedule, data position, RNG, the reference log-probs and the config), written atomically and
read back so that training continues bit-for-bit (CPU)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Protocol

import torch

from ..data.atomic import begin_dir, cleaned_on_failure, commit_dir
from ..data.records import PairExample
from . import checkpoint as ckpt
from . import distributed as dist_utils
from .lora import load_adapter
from .metrics import read_metrics


class Trainer(Protocol):
    """What of a ``trainer.Trainer`` its state on disk reads and writes (the Trainer passes
    itself; this module does not import it)."""

    cfg: Any
    device: torch.device
    dist: dist_utils.DistInfo
    epoch: int
    examples: list[PairExample]
    global_step: int
    history: list[dict]
    is_set_up: bool
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    peft_model: Any  # the PEFT wrapper of a LoRA run, else None
    policy_loss: torch.nn.Module
    position: int
    ref_model: torch.nn.Module | None
    scheduler: Any
    writer: Any

    def save_model(self, output_dir: str | os.PathLike) -> None: ...

    def setup(self) -> None: ...


def reference_table(examples: list[PairExample]) -> torch.Tensor | None:
    """float64 [n, 2] (chosen, rejected) reference log-probs of every example, or None when some
    example has none."""
    if not all(ex.has_ref for ex in examples):
        return None
    return torch.tensor([[ex.ref_chosen_logps, ex.ref_rejected_logps] for ex in examples], dtype=torch.float64)


def _optimizer_state(trainer: Trainer) -> dict:
    """The optimizer's full state (gathered to CPU from every rank when distributed)."""
    if not trainer.dist.enabled:
        return trainer.optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        trainer.policy_loss, trainer.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def save_checkpoint(trainer: Trainer, path: str | os.PathLike | None = None) -> str:
    """``Trainer.save_checkpoint``: into ``<path>.partial`` (rank 0 writes), renamed into place
    once complete; every rank must call it when distributed. Returns the folder."""
    cfg, info = trainer.cfg, trainer.dist
    path = Path(path) if path is not None else Path(cfg.output_dir) / f"{ckpt.CHECKPOINT_PREFIX}{trainer.global_step}"
    opt_state = _optimizer_state(trainer)
    staging = begin_dir(path) if info.is_main else path.with_name(path.name + ".partial")
    dist_utils.barrier(info)
    with cleaned_on_failure(path, staging) if info.is_main else contextlib.nullcontext():
        _write_checkpoint(trainer, staging, path, opt_state)
    dist_utils.barrier(info)
    return str(path)


def _write_checkpoint(trainer: Trainer, staging: Path, path: Path, opt_state: dict) -> None:
    cfg, info = trainer.cfg, trainer.dist
    trainer.save_model(staging)
    if info.is_main:
        ckpt.save_trainer_state(
            staging,
            {
                "optimizer": opt_state,
                "scheduler": trainer.scheduler.state_dict(),
                "global_step": trainer.global_step,
                "epoch": trainer.epoch,
                "position": trainer.position,
                "num_examples": len(trainer.examples),
                "rng": ckpt.rng_state(),
                "reference_logps": reference_table(trainer.examples),
                "config": cfg.to_dict(),
            },
        )
        cfg.to_yaml(staging / "train_config.yaml")
        commit_dir(staging, path)


def _restore_optimizer(trainer: Trainer, state: dict) -> None:
    if not trainer.dist.enabled:
        trainer.optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        trainer.policy_loss, trainer.optimizer, state, options=StateDictOptions(full_state_dict=True)
    )


def load_checkpoint(trainer: Trainer, path: str | os.PathLike) -> None:
    """``Trainer.load_checkpoint``: weights, optimizer, schedule, data position, RNG and reference
    log-probs from ``path``; the metrics log is cut back to the checkpoint's step."""
    state = ckpt.load_trainer_state(path)
    if state["num_examples"] != len(trainer.examples):
        raise ValueError(
            f"checkpoint {str(path)!r} was trained on {state['num_examples']} pairs, this trainer has "
            f"{len(trainer.examples)}: resume needs the same pairs"
        )
    ref = state.get("reference_logps")
    if ref is not None:
        trainer.examples = [ex.with_ref(float(r[0]), float(r[1])) for ex, r in zip(trainer.examples, ref.tolist())]
        trainer.ref_model = None
    if trainer.is_set_up and trainer.dist.enabled:
        raise ValueError("load_checkpoint must run before training starts when distributed")
    if trainer.peft_model is not None:  # a LoRA run's checkpoint holds the adapter only
        load_adapter(trainer.peft_model, path)
    else:
        ckpt.apply_model_weights(
            trainer.model, {k: v.to(trainer.device) for k, v in ckpt.load_model_weights(path).items()}
        )
    trainer.setup()
    _restore_optimizer(trainer, state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.global_step = state["global_step"]
    trainer.epoch = state["epoch"]
    trainer.position = state["position"]
    ckpt.set_rng_state(state["rng"])
    trainer.writer.reset(keep_until_step=trainer.global_step)
    if trainer.writer.enabled and trainer.writer.path.exists():
        trainer.history = read_metrics(trainer.writer.path)
