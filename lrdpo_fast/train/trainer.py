"""Trainer: packed batches in, fused LR-DPO loss, AdamW step, metrics out.

One step, in order:
1. take the next ``pairs_per_step`` pairs of the (per-epoch shuffled) data; with several ranks,
   this rank keeps ``pairs[rank::world]``;
2. pack them into micro-batches of at most ``max_tokens_per_batch`` tokens (no padding);
3. per micro-batch: decoder body -> hidden [N, d] -> ``fused_lrdpo_loss`` with the LM head ->
   ``backward`` of ``loss * pairs_in_micro / pairs_in_step`` (weighted BY PAIRS, so uneven
   micro-batches and ranks add up to exactly the full-batch mean-over-pairs gradient);
4. clip the gradient norm, AdamW step, LR-schedule step;
5. one metrics row (pair-weighted means over micro-batches and ranks) to ``metrics.jsonl``.

The guard: a step whose loss or gradient norm is not finite, or whose forward met non-finite
hidden states / LM-head values (single process), is SKIPPED: gradients dropped, no optimizer or
LR-schedule step (the schedule counts applied updates; the step still consumes its pairs and
counts toward ``total_steps``), a metrics row with ``"skipped": true`` is always written, and no
checkpoint is saved at it. After ``cfg.max_bad_steps`` consecutive skipped steps the run stops
with ``NonFiniteTrainingError``, before any further checkpoint: the last one saved (at a good
step) is left intact.

Read as a recipe: ``__init__`` reads the config and the data; ``setup()`` (run once, lazily, by
``train``/``train_step``/checkpointing) builds the reference, the model root, the optimizer and
the LR schedule, each in its own ``_setup_*`` method that returns its object; ``train_step()`` is
one step (its micro-batch mechanics live in ``micro_batches.py``, its metrics row in ``steps.py``);
``train()`` is the loop; checkpoints are read and written by ``trainer_state.py``. The reference log-probs come from one of the sources of ``reference.py`` (default: the
policy itself before its first step, precomputed once). ``trainer.model`` is the live policy,
``trainer.policy_loss`` the root that owns it (sharded under FSDP2): the iterative loop passes it
to the next iteration's Trainer as ``model``; ``trainer.export_state_dict()`` gives full weights
(e.g. to sync a vLLM sampler).
"""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from ..data.atomic import fault_point
from ..data.files import load_pairs
from ..data.records import PairExample
from ..model.packed import precompute_reference_logps
from . import checkpoint as ckpt
from . import distributed as dist_utils
from . import micro_batches, trainer_state
from .config import TrainConfig
from .lora import adapters_off, apply_lora, merge_adapter, save_adapter
from .metrics import PLOT_FILE, MetricsWriter, peak_memory_mb, plot_history, summary_line
from .optim import build_optimizer, build_scheduler
from .policy import PolicyLoss, disable_dropout
from .reference import precompute_through_root, reference_source
from .steps import PAIR_METRICS, StepTotals, step_row
from .tracking import build_tracker, require_trackers

__all__ = [
    "PAIR_METRICS",
    "NonFiniteTrainingError",
    "PolicyLoss",
    "StepTotals",
    "Trainer",
    "disable_dropout",
    "load_pairs",
]


def _model_vocab_size(model: nn.Module) -> int | None:
    """Rows of the model's LM head (or ``config.vocab_size``); None when it has neither."""
    m = model.policy if isinstance(model, PolicyLoss) else model
    head = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    n = getattr(getattr(m, "config", None), "vocab_size", None)
    return n if isinstance(n, int) and n > 0 else None


class NonFiniteTrainingError(RuntimeError):
    """``max_bad_steps`` consecutive steps had a non-finite loss or gradient: the run stopped."""


class Trainer:
    """LR-DPO training of ``model`` on preference ``pairs`` (see the module docstring).

    Args:
        model: a transformers causal LM (``*ForCausalLM``), trained in place (``trainer.model``),
            or the ``PolicyLoss`` root of an earlier Trainer (``trainer.policy_loss``: the
            iterative loop's way to keep one, possibly sharded, policy across iterations).
        tokenizer: its tokenizer (saved with every checkpoint; may be None for pre-tokenized
            pairs, then nothing tokenizer-related is saved).
        pairs: JSONL path, ``datasets.Dataset``, list of records or ``PairExample`` (see
            ``load_pairs``). Records may carry ``ref_chosen_logps``/``ref_rejected_logps``: they
            are used as the reference when no ``ref_model`` is given.
        config: TrainConfig (default ``TrainConfig()``).
        ref_model: the reference policy (phase 2: the previous iterate). Default: the policy as
            it is before training (precomputed), or a frozen deep copy when ``live_reference``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        pairs,
        config: TrainConfig | None = None,
        *,
        ref_model: nn.Module | None = None,
    ):
        cfg = TrainConfig() if config is None else config
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(cfg).__name__}")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.device, self.dist = self._setup_device()
        torch.manual_seed(cfg.seed)
        self.examples: list[PairExample] = load_pairs(
            pairs,
            tokenizer,
            max_length=cfg.max_length,
            max_prompt_length=cfg.max_prompt_length,
            vocab_size=_model_vocab_size(model),  # ids outside the model's vocabulary: refused here
        )
        self.policy_loss: PolicyLoss | None = model if isinstance(model, PolicyLoss) else None
        self.model: nn.Module = (model.policy if self.policy_loss is not None else model).to(self.device)
        disable_dropout(self.model)
        if cfg.lora is not None and self.policy_loss is not None:
            raise ValueError("TrainConfig: lora needs the model itself, not an earlier Trainer's root (merge_adapter)")
        self.peft_model = apply_lora(self.model, cfg.lora)  # None without lora; LoRA layers injected in place
        self.ref_model = ref_model
        self.compute_dtype = self._compute_dtype()
        self.steps_per_epoch = math.ceil(len(self.examples) / cfg.pairs_per_step)
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.num_epochs * self.steps_per_epoch
        # progress through the data: the permutation of epoch e is a function of (seed, e)
        self.global_step = 0
        self.epoch = 0
        self.position = 0
        self.history: list[dict] = []
        self.last_checkpoint: str | None = None
        self.bad_steps = 0  # consecutive skipped (non-finite) steps
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self._is_set_up = False
        self.writer = MetricsWriter(cfg.output_dir, enabled=self.dist.is_main)
        if cfg.report_to and self.dist.is_main:
            require_trackers(cfg.report_to)  # a missing package fails here, before any work

    # ---- set-up: each part in its own method, returning what it builds -----------------------
    @property
    def is_set_up(self) -> bool:
        """True once ``setup()`` has run (reference, model root, optimizer, LR schedule built)."""
        return self._is_set_up

    def setup(self) -> None:
        """Reference, model root (checkpointing, sharding), optimizer, LR schedule: once."""
        if self._is_set_up:
            return
        source = reference_source(self.cfg, self.ref_model, self.examples, self.dist.enabled)
        self.ref_model = self._setup_reference(source)
        self.policy_loss = self._setup_model()
        if source == "through_root":
            self.examples = precompute_through_root(
                self.policy_loss,
                self.examples,
                max_tokens_per_batch=self.cfg.max_tokens_per_batch,
                device=self.device,
                autocast=self._autocast,
                ld_alpha=self.cfg.ld_alpha,
            )
        self.optimizer = self._setup_optimizer()
        self.scheduler = self._setup_lr_scheduler(self.optimizer)
        self._is_set_up = True

    def _setup_device(self) -> tuple[torch.device, dist_utils.DistInfo]:
        cfg = self.cfg
        device = (
            torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        info = dist_utils.init_distributed(device.type)
        if device.type == "cuda" and info.enabled and cfg.device is None:
            device = torch.device("cuda", info.local_rank)
        return device, info

    def _compute_dtype(self) -> torch.dtype | None:
        d = self.cfg.dtype
        if d == "bf16" or (d == "auto" and self.device.type == "cuda"):
            return torch.bfloat16
        return None  # the parameters' dtype (fp32 on CPU)

    def _autocast(self):
        if self.compute_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def _setup_reference(self, source: str) -> nn.Module | None:
        """Acts on the reference ``source`` (see ``reference.py``); returns the model kept for a
        live reference, else None (a precomputed reference model is freed)."""
        cfg = self.cfg
        if source == "live":
            ref = self.ref_model
            if ref is None and self.peft_model is not None:
                return self.model  # run with its adapters off (lora.adapters_off): no second copy
            if ref is None:
                if self.policy_loss is not None and self.policy_loss.sharded:
                    raise ValueError(
                        "live_reference on a policy already sharded by an earlier Trainer: pass ref_model "
                        "(an unsharded copy of the previous policy) explicitly"
                    )
                ref = copy.deepcopy(self.model)
            ref.to(self.device).eval().requires_grad_(False)
            disable_dropout(ref)
            return ref
        if source == "precompute":
            ref = self.ref_model if self.ref_model is not None else self.model
            ref.to(self.device)
            with self._autocast(), adapters_off(ref):
                self.examples = precompute_reference_logps(
                    ref,
                    self.examples,
                    max_tokens_per_batch=cfg.max_tokens_per_batch,
                    backend=cfg.backend,
                    progress=cfg.progress and self.dist.is_main,
                    ld_alpha=cfg.ld_alpha,
                )
        return None

    def _setup_model(self) -> PolicyLoss:
        """Varlen attention + gradient checkpointing, train mode, and the ``PolicyLoss`` root
        (sharded with FSDP2 when distributed; an earlier Trainer's root is reused as it is)."""
        from ..model.attention import enable_varlen_attention

        if self.cfg.gradient_checkpointing:
            # recomputation in backward must see the same attention as the forward
            enable_varlen_attention(self.model)
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        root = self.policy_loss
        if root is None:
            root = PolicyLoss(self.model, self.cfg, self.compute_dtype)
            if self.dist.enabled:
                dist_utils.shard_policy(root, self.model, self.dist, forward_methods=("sequence_logps",))
                root.sharded = True
        root.cfg, root.compute_dtype = self.cfg, self.compute_dtype
        return root

    def _setup_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model, self.cfg)

    def _setup_lr_scheduler(self, optimizer: torch.optim.Optimizer):
        return build_scheduler(optimizer, self.cfg, self.total_steps)

    # ---- one step (mechanics in micro_batches.py) ---------------------------------------------
    def _next_step_indices(self) -> list[int]:
        if self.position >= len(self.examples):
            self.epoch += 1
            self.position = 0
        order = micro_batches.epoch_order(len(self.examples), self.cfg.shuffle, self.cfg.seed, self.epoch)
        idx = list(order[self.position : self.position + self.cfg.pairs_per_step])
        self.position += len(idx)
        return idx

    def accumulate_gradients(self, step_idx: list[int]) -> StepTotals:
        """Forward + backward of the step made of examples ``step_idx`` (global indices, same on
        every rank); gradients ADD into ``.grad``. Returns the step's ``StepTotals`` summed over
        ranks (pair-weighted loss and metric sums, pairs, tokens, truncated tokens)."""
        self.setup()
        return micro_batches.accumulate_gradients(
            self.policy_loss,
            self.examples,
            step_idx,
            cfg=self.cfg,
            info=self.dist,
            device=self.device,
            ref_model=self.ref_model,
            autocast=self._autocast,
            epoch=self.epoch,
        )

    def _clip_gradients(self) -> float:
        """Clip the gradient norm at ``max_grad_norm`` (none when unset); returns the norm before."""
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        return float(grad_norm)

    def _optimizer_step(self, skipped: bool) -> None:
        """AdamW + schedule step, or (the guard, module docstring) drop the gradients and keep
        weights and schedule as they are."""
        if skipped:
            self.bad_steps += 1
        else:
            self.bad_steps = 0
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train_step(self) -> dict:
        """One optimizer step on the next ``pairs_per_step`` pairs; returns its metrics row."""
        self.setup()
        t0 = time.perf_counter()
        totals = self.accumulate_gradients(self._next_step_indices())
        grad_norm = self._clip_gradients()
        lr = self.scheduler.get_last_lr()[0]
        skipped = not (math.isfinite(totals.loss) and math.isfinite(grad_norm))
        self._optimizer_step(skipped)
        self.global_step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return step_row(
            totals,
            step=self.global_step,
            epoch=round(self.epoch + self.position / len(self.examples), 4),
            skipped=skipped,
            learning_rate=lr,
            grad_norm=grad_norm,
            step_time_s=time.perf_counter() - t0,
            peak_memory_mb=peak_memory_mb(self.device),
        )

    def _check_bad_steps(self, row: dict) -> None:
        """Stop the run after ``max_bad_steps`` consecutive skipped steps (see the guard)."""
        if self.bad_steps >= self.cfg.max_bad_steps:
            why = row.get("nonfinite") or f"loss {row['loss']}, grad_norm {row['grad_norm']}"
            last = self.last_checkpoint or "none saved"
            raise NonFiniteTrainingError(
                f"training stopped at step {self.global_step}: {self.bad_steps} consecutive steps had a non-finite "
                f"loss or gradient (max_bad_steps={self.cfg.max_bad_steps}; last: {why}); last good checkpoint: {last}"
            )

    # ---- the loop ----------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | os.PathLike | None = None) -> list[dict]:
        """Run until ``total_steps``; returns the logged metric rows (= metrics.jsonl rows).

        ``resume_from_checkpoint``: a ``checkpoint-<step>`` folder, or "latest" for the newest one
        in ``output_dir``; training continues from there bit-for-bit (CPU).
        """
        cfg, info = self.cfg, self.dist
        if resume_from_checkpoint is not None:
            path = resume_from_checkpoint
            if path == "latest":
                path = ckpt.latest_checkpoint(cfg.output_dir)
                if path is None:
                    raise ValueError(f"resume_from_checkpoint='latest' but {cfg.output_dir!r} has no checkpoint")
            self.load_checkpoint(path)
        else:
            self.writer.reset(keep_until_step=0)
        self.setup()
        if info.is_main:
            cfg.to_yaml(Path(cfg.output_dir) / "train_config.yaml")
        own_tracker = self.writer.tracker is None and bool(cfg.report_to) and info.is_main
        if own_tracker:  # else none, or the iterative loop's (set on the writer)
            self.writer.tracker = build_tracker(
                cfg.report_to, cfg.output_dir, run_name=Path(cfg.output_dir).name, config=cfg.to_dict()
            )
        from tqdm.auto import tqdm

        bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            desc="lr-dpo",
            unit="step",
            disable=not (cfg.progress and info.is_main),
        )
        while self.global_step < self.total_steps:
            row = self.train_step()
            fault_point("train_step")
            bar.update(1)
            bar.set_postfix(
                loss=f"{row['loss']:.4f}",
                acc=f"{row['rewards/accuracies']:.2f}",
                margin=f"{row['rewards/margins']:.3f}",
            )
            if row["skipped"] or self.global_step % cfg.logging_steps == 0 or self.global_step == self.total_steps:
                self.history.append(row)
                self.writer.write(row)
            if row["skipped"]:
                if self.bad_steps >= cfg.max_bad_steps:
                    bar.close()
                    self._check_bad_steps(row)
                continue  # no checkpoint at a skipped step
            if cfg.save_steps and self.global_step % cfg.save_steps == 0 and self.global_step < self.total_steps:
                self.save_checkpoint()
        bar.close()
        if (
            cfg.save_final
            and self.bad_steps == 0
            and (self.last_checkpoint is None or not self.last_checkpoint.endswith(f"-{self.global_step}"))
        ):
            self.save_checkpoint()
        plot = plot_history(self.history, Path(cfg.output_dir) / PLOT_FILE) if cfg.plot and info.is_main else None
        if own_tracker:
            self.writer.tracker.log_image("training_curves", plot, self.global_step)
            self.writer.tracker.close()
        return self.history

    def summary(self) -> str:
        """One line: final loss, reward accuracy, mean chosen/rejected length, throughput."""
        return summary_line(self.history)

    # ---- weights and checkpoints -------------------------------------------------------------
    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) CPU weights of the live policy: all of them on rank 0, {} on other
        ranks. Every rank must call it when distributed. Feed it to a vLLM sampler's
        ``load_weights(state_dict.items())`` or to ``save_pretrained``."""
        return dist_utils.full_state_dict(self.model, self.dist)

    def save_model(self, path: str | os.PathLike) -> str:
        """``save_pretrained`` of the policy (+ tokenizer) to ``path`` (rank 0 writes)."""
        sd = self.export_state_dict() if self.dist.enabled else None
        if self.peft_model is not None and self.dist.is_main:  # the adapter only, PEFT's format
            save_adapter(self.peft_model, path, state_dict=sd)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(str(path))
        elif self.peft_model is None and self.dist.is_main:
            ckpt.save_model(self.model, path, tokenizer=self.tokenizer, state_dict=sd)
        dist_utils.barrier(self.dist)
        return str(path)

    def merge_adapter(self) -> nn.Module:
        """LoRA: fold the trained adapter into the weights (``lora.merge_adapter``) and train and
        save the plain model from here on (the loop's policy_{i+1}); returns ``trainer.model``.
        One process only (a sharded adapter is not merged)."""
        if self.peft_model is not None:
            if self.dist.enabled:
                raise ValueError("merge_adapter: the adapter of an FSDP2-sharded policy is not merged")
            self.model, self.peft_model, self.policy_loss = merge_adapter(self.peft_model), None, None
        return self.model

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> str:
        """Weights + tokenizer + trainer state to ``path`` (default output_dir/checkpoint-<step>).

        Written into ``<path>.partial`` and renamed into place once complete, so a run killed
        mid-save never leaves a folder that ``latest_checkpoint`` would take as a checkpoint."""
        self.setup()
        self.last_checkpoint = trainer_state.save_checkpoint(self, path)
        return self.last_checkpoint

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore weights, optimizer, schedule, data position, RNG and reference log-probs."""
        trainer_state.load_checkpoint(self, path)
        self.last_checkpoint = str(path)
