"""Comparison 3: one epoch of LR-DPO training end to end, lrdpo-fast's Trainer vs TRL's
DPOTrainer (and TRL with use_liger_kernel=True), same tiny Llama, tokenizer, pairs, batch size,
learning rate and precision, reference log-probs precomputed by both.

Measured per trainer, in its own worker process:
- steady tokens/s: real (unpadded) tokens entering the model's training forwards between the end
  of the first optimizer step and the end of the last one, over that wall time (counted by a
  forward pre-hook on the decoder body and a global optimizer-step hook, so it needs nothing
  from either trainer);
- end-to-end tokens/s: the epoch's tokens over (trainer construction + train()), which includes
  tokenization and the reference precompute;
- peak memory growth over the model + data already built (bench/harness.py).

This is the worker side (``train_cell``, run by bench/worker.py); bench/train.py runs the cells.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from .harness import peak_growth

TRAINERS = {
    "lrdpo_fast": "lrdpo-fast Trainer",
    "trl": "TRL DPOTrainer",
    "trl_liger": "TRL DPOTrainer (use_liger_kernel=True)",
}
LEARNING_RATE = 1e-5
BETA = 0.1


class TokenMeter:
    """Counts tokens of gradient-enabled forwards of ``body`` and times optimizer steps."""

    def __init__(self, body: torch.nn.Module):
        self.tokens = 0
        self.step_ends: list[tuple[float, int]] = []  # (time, tokens counted so far)
        self._h1 = body.register_forward_pre_hook(self._count, with_kwargs=True)
        self._h2 = register_optimizer_step_post_hook(self._step)

    def _count(self, module, args, kwargs):
        if not torch.is_grad_enabled():
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape == (ids.shape[0], ids.shape[1]):
            self.tokens += int(mask.sum())
        elif ids is not None:
            self.tokens += int(ids.shape[0] * ids.shape[1])

    def _step(self, optimizer, args, kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.step_ends.append((time.perf_counter(), self.tokens))

    def close(self) -> None:
        self._h1.remove()
        self._h2.remove()

    def steady(self) -> dict:
        if len(self.step_ends) < 2:
            return {"steps": len(self.step_ends), "tokens_per_s": None}
        (t0, k0), (t1, k1) = self.step_ends[0], self.step_ends[-1]
        return {
            "steps": len(self.step_ends),
            "window_steps": len(self.step_ends) - 1,
            "window_tokens": k1 - k0,
            "window_s": t1 - t0,
            "tokens_per_s": (k1 - k0) / (t1 - t0),
        }


def _body(model) -> torch.nn.Module:
    return getattr(model, "model", model)


def run_lrdpo_fast(model, tokenizer, pairs, spec: dict, out_dir: str) -> dict:
    try:
        import lrdpo_fast as lf

        Trainer, TrainConfig = lf.Trainer, lf.TrainConfig
    except (ImportError, AttributeError):
        raise RuntimeError("n/a: lrdpo_fast.Trainer not available") from None
    cfg = TrainConfig(
        beta=BETA,
        learning_rate=LEARNING_RATE,
        num_epochs=spec["epochs"],
        pairs_per_step=spec["pairs_per_step"],
        max_tokens_per_batch=spec["max_tokens_per_batch"],
        seed=0,
        output_dir=out_dir,
        progress=False,
        plot=False,
        save_final=False,
        lr_scheduler="constant",
        max_grad_norm=1.0,
        dtype="bf16" if spec["device"].startswith("cuda") else "fp32",
        gradient_checkpointing=False,
    )
    trainer = Trainer(model, tokenizer, pairs, cfg)
    trainer.train()
    return {}


def run_trl(model, tokenizer, pairs, spec: dict, out_dir: str, liger: bool = False) -> dict:
    try:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer
    except ImportError as e:
        raise RuntimeError(f"n/a: trl not importable ({e})") from None
    cuda = spec["device"].startswith("cuda")
    args = DPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=spec["pairs_per_step"],
        gradient_accumulation_steps=1,
        num_train_epochs=spec["epochs"],
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        beta=BETA,
        loss_type=["sigmoid"],
        max_length=None,
        precompute_ref_log_probs=True,
        bf16=cuda,
        fp16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=not cuda,
        use_liger_kernel=liger,
        warmup_steps=0,
        weight_decay=0.0,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)
    trainer.train()
    return {}


def _preimport(key: str) -> None:
    """Import the trainer's libraries before the memory baseline (imports are not training memory)."""
    try:
        if key == "lrdpo_fast":
            import lrdpo_fast  # noqa: F401
        else:
            import datasets  # noqa: F401
            import trl  # noqa: F401
            from trl import DPOConfig, DPOTrainer  # noqa: F401

            if key == "trl_liger":
                import liger_kernel.transformers  # noqa: F401
    except ImportError:
        pass  # the runner reports it


def train_cell(spec: dict) -> dict:
    """One trainer on the seeded set-up; spec: trainer, device, n_pairs, pairs_per_step, epochs,
    max_tokens_per_batch, tiny."""
    from .train_data import build_model, build_pairs, build_tokenizer, pair_tokens

    key, device = spec["trainer"], spec["device"]
    out = {"trainer": key, "name": TRAINERS.get(key, key), "device": device}
    tiny = bool(spec.get("tiny"))
    tokenizer = build_tokenizer()
    model = build_model(tiny=tiny).to(device)
    pairs = build_pairs(spec["n_pairs"], seed=0, tiny=tiny)
    out.update(
        n_pairs=len(pairs),
        epoch_tokens=pair_tokens(pairs),
        params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
    )
    _preimport(key)
    runner = {"lrdpo_fast": run_lrdpo_fast, "trl": run_trl, "trl_liger": lambda *a: run_trl(*a, liger=True)}[key]
    meter = TokenMeter(_body(model))
    timing: dict = {}

    def work():
        with tempfile.TemporaryDirectory(prefix=f"bench-train-{key}-") as tmp:
            t0 = time.perf_counter()
            runner(model, tokenizer, pairs, spec, tmp)
            timing["end_to_end_s"] = time.perf_counter() - t0

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        out["memory"] = peak_growth(work, device)
    except Exception as e:  # noqa: BLE001 - a trainer that cannot run here is an n/a row
        msg = str(e).strip()
        if msg.startswith("n/a:"):
            return {**out, "status": msg}
        first = (msg.splitlines() or [""])[0][:160]
        if key == "trl_liger" and not device.startswith("cuda") and "active drivers" in msg:
            return {**out, "status": f"n/a: Liger's Triton kernels need a GPU ({type(e).__name__}: {first})"}
        if isinstance(e, torch.OutOfMemoryError) or "out of memory" in msg.lower():
            return {**out, "status": "n/a: out of memory"}
        return {**out, "status": f"n/a: {type(e).__name__}: {first}"}
    finally:
        meter.close()
    steady = meter.steady()
    out["steady"] = steady
    out["end_to_end_s"] = timing.get("end_to_end_s")
    out["tokens_per_s"] = steady["tokens_per_s"]
    out["end_to_end_tokens_per_s"] = out["epoch_tokens"] * spec["epochs"] / timing["end_to_end_s"]
    out["status"] = "ok" if steady["tokens_per_s"] else "n/a: fewer than 2 optimizer steps"
    return out
