"""alpha = 0, sigmoid: our Trainer reproduces TRL's DPOTrainer step for step.

Same tiny model weights, same token ids (we feed TRL's own tokenization of the pairs to our
trainer as pre-tokenized ids), same hyper-parameters (no dropout, no warm-up, constant LR, fp32,
AdamW with identical settings, gradient clipping at 1.0), one step = all pairs. TRL pads and runs
the full LM head; we pack and use the fused kernel: loss, rewards and the pre-clip gradient norm
must agree to 1e-4 for 5 steps, and the weights after them. Step 1 alone proves little (the
reference is the policy: loss ln 2 and zero rewards for any implementation), its gradient norm
does, and so do the later steps. TRL has no length term: alpha > 0 is checked on TRL's own
tokenization against the hand-written loss here, and in full (gradients, AdamW step) against a
float64 step in test_trainer_reference.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

trl = pytest.importorskip("trl")

from helpers import random_records, tiny_model, tiny_tokenizer  # noqa: E402

from lrdpo_fast.train.config import TrainConfig  # noqa: E402
from lrdpo_fast.train.trainer import Trainer  # noqa: E402

N_PAIRS = 6
STEPS = 5
LR = 1e-3


def _trl_run(model, tok, records, out_dir, steps=STEPS, *, peft_config=None, adapter_at_start=None, **extra):
    """TRL's DPOTrainer on ``records``; with ``peft_config`` TRL wraps the model in LoRA (its
    reference: the adapter disabled) and ``adapter_at_start`` (a dict) receives the adapter
    weights as initialised, before the first step."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    losses: list[float] = []

    class RecordingDPOTrainer(DPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            losses.append(float((out[0] if return_outputs else out).detach()))
            return out

    args = DPOConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=N_PAIRS,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        max_grad_norm=1.0,
        beta=0.1,
        loss_type=["sigmoid"],
        label_smoothing=0.0,
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        disable_dropout=True,
        precompute_ref_log_probs=False,
        max_length=None,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        **extra,
    )
    trainer = RecordingDPOTrainer(
        model=model,
        ref_model=None if peft_config is not None else copy.deepcopy(model),
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tok,
        peft_config=peft_config,
    )
    if adapter_at_start is not None:
        from peft import get_peft_model_state_dict

        adapter_at_start.update({k: v.detach().clone() for k, v in get_peft_model_state_dict(trainer.model).items()})
    tokenized = [
        {
            "prompt_input_ids": r["prompt_ids"],
            "chosen_input_ids": r["chosen_ids"],
            "rejected_input_ids": r["rejected_ids"],
        }
        for r in trainer.train_dataset
    ]
    trainer.train()
    rows = [h for h in trainer.state.log_history if "rewards/chosen" in h]
    return losses, rows, tokenized, trainer.model


def test_matches_trl_dpo_trainer(tmp_path):
    tok = tiny_tokenizer()
    records = random_records(N_PAIRS, seed=11, max_words=8)
    model_trl = tiny_model("llama", seed=0)
    model_ours = copy.deepcopy(model_trl)
    trl_losses, trl_rows, tokenized, trained_trl = _trl_run(model_trl, tok, records, tmp_path / "trl")
    assert len(trl_losses) == STEPS and len(trl_rows) == STEPS

    cfg = TrainConfig(
        beta=0.1,
        alpha=0.0,
        loss_type="sigmoid",
        learning_rate=LR,
        lr_scheduler="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_eps=1e-8,
        max_grad_norm=1.0,
        pairs_per_step=N_PAIRS,
        max_steps=STEPS,
        max_tokens_per_batch=4096,
        dtype="fp32",
        device="cpu",  # as TRL's use_cpu
        output_dir=str(tmp_path / "ours"),
        progress=False,
        plot=False,
        save_final=False,
    )
    ours = Trainer(model_ours, tok, tokenized, cfg).train()
    # the same token ids: TRL's prompt / completion split, EOS included
    assert all(
        ex.chosen_ids[-1] == tok.eos_token_id for ex in Trainer(copy.deepcopy(model_ours), tok, tokenized, cfg).examples
    )
    for step, (loss, row_trl, row) in enumerate(zip(trl_losses, trl_rows, ours), 1):
        assert row["loss"] == pytest.approx(loss, abs=1e-4), f"loss at step {step}"
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
            assert row[key] == pytest.approx(row_trl[key], abs=1e-4, rel=1e-5), f"{key} at step {step}"
        assert row["grad_norm"] == pytest.approx(row_trl["grad_norm"], rel=1e-4), f"grad_norm at step {step}"
    assert ours[0]["grad_norm"] > 1e-2  # step 1's comparison has content even though its loss is ln 2
    assert abs(trl_rows[-1]["rewards/margins"]) > 1e-2 and abs(trl_losses[-1] - math.log(2)) > 1e-3
    assert ours[-1]["loss"] < ours[0]["loss"]
    for (name, p), q in zip(trained_trl.named_parameters(), model_ours.parameters()):
        torch.testing.assert_close(q, p, atol=1e-4, rtol=1e-4, msg=name)

    # alpha > 0 (no TRL counterpart): on TRL's tokenization, step 1 (reference = policy, log-ratios
    # 0) is the length term alone, mean -log sigma(alpha (|w| - |l|)) over the pairs
    alpha = 0.1
    cfg_lr = TrainConfig(**{**cfg.to_dict(), "alpha": alpha, "max_steps": 1, "output_dir": str(tmp_path / "ours_lr")})
    lr_trainer = Trainer(tiny_model("llama", seed=0), tok, tokenized, cfg_lr)
    (row,) = lr_trainer.train()
    d_len = [len(ex.chosen_ids) - len(ex.rejected_ids) for ex in lr_trainer.examples]
    assert any(d_len)
    by_hand = sum(math.log1p(math.exp(-alpha * d)) for d in d_len) / len(d_len)
    assert row["loss"] == pytest.approx(by_hand, rel=1e-5)
    assert abs(row["rewards/margins"]) < 1e-5 and row["length/chosen"] == pytest.approx(
        sum(len(ex.chosen_ids) for ex in lr_trainer.examples) / N_PAIRS
    )


@pytest.mark.parametrize(
    "ours,theirs",
    [(dict(ld_alpha=0.5), dict(ld_alpha=0.5)), (dict(wpo=True), dict(use_weighting=True))],
    ids=["ld_alpha", "wpo"],
)
def test_first_step_matches_trl_with_length_control(tmp_path, ours, theirs):
    # LD-DPO (TRL's ld_alpha: shared and tail masks, policy and reference alike) and WPO (TRL's
    # use_weighting, Eq. 2): the same first step, loss and pre-clip gradient norm
    tok = tiny_tokenizer()
    records = random_records(N_PAIRS, seed=11, max_words=8)
    model_trl = tiny_model("llama", seed=0)
    model_ours = copy.deepcopy(model_trl)
    trl_losses, trl_rows, tokenized, _ = _trl_run(model_trl, tok, records, tmp_path / "trl", steps=1, **theirs)
    cfg = TrainConfig(
        beta=0.1,
        learning_rate=LR,
        lr_scheduler="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        pairs_per_step=N_PAIRS,
        max_steps=1,
        max_tokens_per_batch=4096,
        dtype="fp32",
        device="cpu",
        output_dir=str(tmp_path / "ours"),
        progress=False,
        plot=False,
        save_final=False,
        **ours,
    )
    trainer = Trainer(model_ours, tok, tokenized, cfg)
    (row,) = trainer.train()
    assert row["loss"] == pytest.approx(trl_losses[0], abs=1e-5, rel=1e-5)
    assert row["grad_norm"] == pytest.approx(trl_rows[0]["grad_norm"], rel=1e-4)
    if "wpo" in ours:  # the weights matter: the loss is not ln 2 at the reference
        assert abs(row["loss"] - math.log(2)) > 1e-3 and 0 < row["wpo/weight"] < 1
    else:  # the tails count half: the logps differ from plain DPO's on these pairs
        plain = [len(ex.chosen_ids) != len(ex.rejected_ids) for ex in trainer.examples]
        assert any(plain) and row["logps/chosen"] == pytest.approx(trl_rows[0]["logps/chosen"], abs=1e-4, rel=1e-5)
