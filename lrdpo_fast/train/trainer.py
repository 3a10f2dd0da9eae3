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

The reference log-probs are computed once before training from ``ref_model`` (default: the
policy itself before its first step, i.e. a frozen copy without the memory), unless
``live_reference`` runs the reference forward on each micro-batch. ``trainer.model`` is always
the live policy; ``trainer.export_state_dict()`` gives full weights (e.g. to sync a vLLM sampler).
"""
from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from . import distributed as dist_utils
from .config import TrainConfig
from ..data.files import load_pairs
from ..data.records import PairExample
from ..ops.fused import fused_lrdpo_loss
from .metrics import PLOT_FILE, MetricsWriter, peak_memory_mb, plot_history, summary_line
from ..model.packed import lm_head_params, model_sequence_logprobs, packed_hidden_states, precompute_reference_logps
from .optim import build_optimizer, build_scheduler
from ..data.packing import PackedBatch, pack_pairs, token_budget_batches

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
    and LM head, whose weight the fused kernel reads directly).
    """

    def __init__(self, policy: nn.Module, cfg: TrainConfig, compute_dtype: torch.dtype | None):
        super().__init__()
        self.policy = policy
        self.cfg = cfg
        self.compute_dtype = compute_dtype

    def forward(self, batch: PackedBatch, ref_logps: torch.Tensor | None, logps_only: bool = False):
        """batch: PackedBatch on the model's device; ref_logps float32 [S] or None (simpo).
        Returns (loss float32 scalar = mean over the batch's pairs, metrics dict of 0-d tensors);
        with ``logps_only`` the policy's (logps float32 [S], lengths int64 [S]) instead (used to
        precompute reference log-probs through the sharded root)."""
        cfg = self.cfg
        if logps_only:
            return model_sequence_logprobs(self.policy, batch, backend=cfg.backend)
        hidden = packed_hidden_states(self.policy, batch)
        weight, bias = lm_head_params(self.policy)
        dt = self.compute_dtype or weight.dtype
        hidden, weight = hidden.to(dt), weight.to(dt)
        bias = None if bias is None else bias.to(dt)
        return fused_lrdpo_loss(
            hidden, weight, batch.labels, batch.cu_seqlens,
            ref_logps=ref_logps, bias=bias, beta=cfg.beta, alpha=cfg.alpha, loss_type=cfg.loss_type,
            gamma=cfg.gamma, label_smoothing=cfg.label_smoothing, backend=cfg.backend,
        )


class Trainer:
    """LR-DPO training of ``model`` on preference ``pairs`` (see the module docstring).

    Args:
        model: a transformers causal LM (``*ForCausalLM``); trained in place, ``trainer.model``.
        tokenizer: its tokenizer (saved with every checkpoint; may be None for pre-tokenized
            pairs, then nothing tokenizer-related is saved).
        pairs: JSONL path, ``datasets.Dataset``, list of records or ``PairExample`` (see
            ``load_pairs``). Records may carry ``ref_chosen_logps``/``ref_rejected_logps``: they
            are used as the reference when no ``ref_model`` is given.
        config: TrainConfig (default ``TrainConfig()``).
        ref_model: the reference policy (phase 2: the previous iterate). Default: the policy as
            it is before training (precomputed), or a frozen deep copy when ``live_reference``.
    """

    def __init__(self, model: nn.Module, tokenizer, pairs, config: TrainConfig | None = None, *, ref_model: nn.Module | None = None):
        cfg = TrainConfig() if config is None else config
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(cfg).__name__}")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.device = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dist = dist_utils.init_distributed(self.device.type)
        if self.device.type == "cuda" and self.dist.enabled and cfg.device is None:
            self.device = torch.device("cuda", self.dist.local_rank)
        torch.manual_seed(cfg.seed)
        self.examples: list[PairExample] = load_pairs(
            pairs, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length
        )
        self.model = model.to(self.device)
        disable_dropout(self.model)
        self.ref_model = ref_model
        self.compute_dtype = self._compute_dtype()
        n = len(self.examples)
        self.steps_per_epoch = math.ceil(n / cfg.pairs_per_step)
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else cfg.num_epochs * self.steps_per_epoch
        # progress through the data: the permutation of epoch e is a function of (seed, e)
        self.global_step = 0
        self.epoch = 0
        self.position = 0
        self.history: list[dict] = []
        self.last_checkpoint: str | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.loss_module: PolicyLoss | None = None
        self._prepared = False
        self._precompute_after_sharding = False
        self._order_cache: tuple[int, list[int]] | None = None
        self.writer = MetricsWriter(cfg.output_dir, enabled=self.dist.is_main)

    # ---- set-up ------------------------------------------------------------------------------
    def _compute_dtype(self) -> torch.dtype | None:
        d = self.cfg.dtype
        if d == "bf16" or (d == "auto" and self.device.type == "cuda"):
            return torch.bfloat16
        return None  # the parameters' dtype (fp32 on CPU)

    def _autocast(self):
        if self.compute_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def _prepare_reference(self) -> None:
        cfg = self.cfg
        if cfg.loss_type == "simpo":
            return
        if cfg.live_reference:
            if self.ref_model is None:
                root = self.model.__dict__.pop("_lrdpo_policy_loss", None)
                try:
                    if root is not None and self.dist.enabled:
                        raise ValueError(
                            "live_reference on a policy already sharded by an earlier Trainer: pass ref_model "
                            "(an unsharded copy of the previous policy) explicitly"
                        )
                    self.ref_model = copy.deepcopy(self.model)
                finally:
                    if root is not None:
                        object.__setattr__(self.model, "_lrdpo_policy_loss", root)
            self.ref_model.to(self.device).eval().requires_grad_(False)
            disable_dropout(self.ref_model)
            return
        if self.ref_model is None and all(ex.has_ref for ex in self.examples):
            return  # stored reference log-probs
        if self.ref_model is None and self.dist.enabled:
            self._precompute_after_sharding = True  # the policy itself, through the sharded root
            return
        ref = self.ref_model if self.ref_model is not None else self.model
        ref.to(self.device)
        with self._autocast():
            self.examples = precompute_reference_logps(
                ref, self.examples, max_tokens_per_batch=cfg.max_tokens_per_batch, backend=cfg.backend,
                progress=cfg.progress and self.dist.is_main,
            )
        if self.ref_model is not None:  # not needed any more: free it
            self.ref_model = None

    def _prepare(self) -> None:
        """Reference, attention, checkpointing, sharding, optimizer, schedule: once, lazily."""
        if self._prepared:
            return
        from ..model.attention import enable_varlen_attention

        self._prepare_reference()
        if self.cfg.gradient_checkpointing:
            # recomputation in backward must see the same attention as the forward
            enable_varlen_attention(self.model)
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()
        # A policy trained by an earlier Trainer (iterative loop) keeps its root wrapper: when
        # distributed it is already sharded, and FSDP cannot shard a module twice.
        root = self.model.__dict__.get("_lrdpo_policy_loss")
        if root is None:
            root = PolicyLoss(self.model, self.cfg, self.compute_dtype)
            if self.dist.enabled:
                dist_utils.shard_policy(root, self.model, self.dist)
            object.__setattr__(self.model, "_lrdpo_policy_loss", root)  # not a registered submodule
        root.cfg, root.compute_dtype = self.cfg, self.compute_dtype
        self.loss_module = root
        if self._precompute_after_sharding:
            self._precompute_through_root()
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, self.total_steps)
        self._prepared = True

    @torch.no_grad()
    def _precompute_through_root(self) -> None:
        """Reference log-probs = the (sharded) policy before training, every rank computing every
        batch in the same order so FSDP's collectives line up."""
        budget = self.cfg.max_tokens_per_batch
        stripped = [PairExample(ex.prompt_ids, ex.chosen_ids, ex.rejected_ids, ex.num_truncated_tokens)
                    for ex in self.examples]
        out = list(self.examples)
        self.model.eval()
        try:
            for idx in token_budget_batches(stripped, budget):
                batch = pack_pairs([stripped[i] for i in idx]).to(self.device)
                with self._autocast():
                    logps, _ = self.loss_module(batch, None, logps_only=True)
                vals = logps.float().cpu().tolist()
                for j, i in enumerate(idx):
                    out[i] = self.examples[i].with_ref(vals[2 * j], vals[2 * j + 1])
        finally:
            self.model.train()
        # FSDP keeps the root unsharded after a forward: reshard so the optimizer is built on the
        # sharded parameters.
        reshard = getattr(self.loss_module, "reshard", None)
        if reshard is not None:
            reshard()
        self.examples = out
        self._precompute_after_sharding = False

    # ---- data order --------------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> list[int]:
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1]
        n = len(self.examples)
        if self.cfg.shuffle:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        self._order_cache = (epoch, order)
        return order

    def _next_step_indices(self) -> list[int]:
        if self.position >= len(self.examples):
            self.epoch += 1
            self.position = 0
        order = self._epoch_order(self.epoch)
        idx = order[self.position:self.position + self.cfg.pairs_per_step]
        self.position += len(idx)
        return idx

    # ---- one step ----------------------------------------------------------------------------
    def _micro_batches(self, mine: list[int]) -> list[tuple[list[int], float]]:
        """(example indices, weight) per micro-batch of this rank, padded with zero-weight
        repeats so every rank runs the same number (FSDP collectives must line up)."""
        exs = [self.examples[i] for i in mine]
        groups = [[mine[j] for j in b] for b in token_budget_batches(exs, self.cfg.max_tokens_per_batch)] if mine else []
        out = [(g, 1.0) for g in groups]
        want = dist_utils.max_int(len(out), self.dist, self.device)
        filler = groups[0] if groups else None
        while len(out) < want:
            out.append((filler if filler is not None else [self._filler_index], 0.0))
        return out

    def _ref_logps(self, batch: PackedBatch) -> torch.Tensor | None:
        if self.cfg.loss_type == "simpo":
            return None
        if self.cfg.live_reference:
            with torch.no_grad(), self._autocast():
                logps, _ = model_sequence_logprobs(self.ref_model, batch, backend=self.cfg.backend)
            return logps.float()
        return batch.ref_logps

    def accumulate_gradients(self, step_idx: list[int]) -> torch.Tensor:
        """Forward + backward of the step made of examples ``step_idx`` (global indices, same on
        every rank); gradients ADD into ``.grad``. Returns float64 numerators summed over ranks:
        [loss*pairs, each PAIR_METRICS value*pairs, pairs, tokens, truncated tokens]."""
        self._prepare()
        info = self.dist
        if not step_idx:
            raise ValueError("step_idx is empty: a step needs at least one pair")
        global_pairs = len(step_idx)
        self._filler_index = step_idx[0]
        mine = dist_utils.shard_indices(step_idx, info)
        micro = self._micro_batches(mine)
        sums = torch.zeros(len(PAIR_METRICS) + 4, dtype=torch.float64)
        for j, (idx, w) in enumerate(micro):
            batch = pack_pairs([self.examples[i] for i in idx]).to(self.device)
            if info.enabled:
                dist_utils.set_gradient_sync(self.loss_module, j == len(micro) - 1)
            ref = self._ref_logps(batch)
            with self._autocast():
                loss, m = self.loss_module(batch, ref)
            # weighted BY PAIRS over the GLOBAL step; x world size undoes FSDP's gradient averaging
            scale = w * batch.num_pairs / global_pairs * info.world_size
            (loss * scale).backward()
            if w:
                p = batch.num_pairs
                vals = [loss.detach()] + [m[k] for k in PAIR_METRICS]
                sums[: len(vals)] += torch.stack([v.double().cpu() for v in vals]) * p
                sums[len(vals):] += torch.tensor([p, batch.num_tokens, batch.num_truncated_tokens], dtype=torch.float64)
        self._last_micro_batches = len(micro)
        return dist_utils.all_reduce_sum(sums, info)

    def train_step(self) -> dict:
        """One optimizer step on the next ``pairs_per_step`` pairs; returns its metrics row."""
        self._prepare()
        cfg = self.cfg
        t0 = time.perf_counter()
        sums = self.accumulate_gradients(self._next_step_indices())
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        n_pairs, n_tokens = sums[len(PAIR_METRICS) + 1].item(), sums[len(PAIR_METRICS) + 2].item()
        row = {"step": self.global_step, "epoch": round(self.epoch + self.position / len(self.examples), 4)}
        row["loss"] = sums[0].item() / n_pairs
        for k, v in zip(PAIR_METRICS, sums[1:len(PAIR_METRICS) + 1].tolist()):
            row[k] = v / n_pairs
        row.update({
            "learning_rate": lr,
            "grad_norm": float(grad_norm),
            "pairs": int(n_pairs),
            "tokens": int(n_tokens),
            "truncated_tokens": int(sums[-1].item()),
            "micro_batches": self._last_micro_batches,
            "step_time_s": dt,
            "tokens_per_s": n_tokens / dt,
            "pairs_per_s": n_pairs / dt,
            "peak_memory_mb": peak_memory_mb(self.device),
        })
        return row

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
        self._prepare()
        if info.is_main:
            cfg.to_yaml(Path(cfg.output_dir) / "train_config.yaml")
        from tqdm.auto import tqdm

        bar = tqdm(total=self.total_steps, initial=self.global_step, desc="lr-dpo", unit="step",
                   disable=not (cfg.progress and info.is_main))
        while self.global_step < self.total_steps:
            row = self.train_step()
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['rewards/accuracies']:.2f}",
                            margin=f"{row['rewards/margins']:.3f}")
            if self.global_step % cfg.logging_steps == 0 or self.global_step == self.total_steps:
                self.history.append(row)
                self.writer.write(row)
            if cfg.save_steps and self.global_step % cfg.save_steps == 0 and self.global_step < self.total_steps:
                self.save_checkpoint()
        bar.close()
        if cfg.save_final and (self.last_checkpoint is None or not self.last_checkpoint.endswith(f"-{self.global_step}")):
            self.save_checkpoint()
        if cfg.plot and info.is_main:
            plot_history(self.history, Path(cfg.output_dir) / PLOT_FILE)
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
        if self.dist.is_main:
            ckpt.save_model(self.model, path, tokenizer=self.tokenizer, state_dict=sd)
        dist_utils.barrier(self.dist)
        return str(path)

    def _reference_table(self) -> torch.Tensor | None:
        if not all(ex.has_ref for ex in self.examples):
            return None
        return torch.tensor([[ex.ref_chosen_logps, ex.ref_rejected_logps] for ex in self.examples], dtype=torch.float64)

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> str:
        """Weights + tokenizer + trainer state to ``path`` (default output_dir/checkpoint-<step>)."""
        self._prepare()
        path = Path(path) if path is not None else Path(self.cfg.output_dir) / f"{ckpt.CHECKPOINT_PREFIX}{self.global_step}"
        if self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            opt_state = get_optimizer_state_dict(
                self.loss_module, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        else:
            opt_state = self.optimizer.state_dict()
        self.save_model(path)
        if self.dist.is_main:
            ckpt.save_trainer_state(path, {
                "optimizer": opt_state,
                "scheduler": self.scheduler.state_dict(),
                "global_step": self.global_step,
                "epoch": self.epoch,
                "position": self.position,
                "num_examples": len(self.examples),
                "rng": ckpt.rng_state(),
                "reference_logps": self._reference_table(),
                "config": self.cfg.to_dict(),
            })
            self.cfg.to_yaml(path / "train_config.yaml")
        dist_utils.barrier(self.dist)
        self.last_checkpoint = str(path)
        return str(path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore weights, optimizer, schedule, data position, RNG and reference log-probs."""
        state = ckpt.load_trainer_state(path)
        if state["num_examples"] != len(self.examples):
            raise ValueError(
                f"checkpoint {str(path)!r} was trained on {state['num_examples']} pairs, this trainer has "
                f"{len(self.examples)}: resume needs the same pairs"
            )
        ref = state.get("reference_logps")
        if ref is not None:
            self.examples = [ex.with_ref(float(r[0]), float(r[1])) for ex, r in zip(self.examples, ref.tolist())]
            self.ref_model = None
        weights = ckpt.load_model_weights(path)
        if self._prepared and self.dist.enabled:
            raise ValueError("load_checkpoint must run before training starts when distributed")
        ckpt.apply_model_weights(self.model, {k: v.to(self.device) for k, v in weights.items()})
        self._prepare()
        if self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.loss_module, self.optimizer, state["optimizer"], options=StateDictOptions(full_state_dict=True)
            )
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step = state["global_step"]
        self.epoch = state["epoch"]
        self.position = state["position"]
        ckpt.set_rng_state(state["rng"])
        self.last_checkpoint = str(path)
        self.writer.reset(keep_until_step=self.global_step)
        from .metrics import read_metrics

        if self.writer.enabled and self.writer.path.exists():
            self.history = read_metrics(self.writer.path)
