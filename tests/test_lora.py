"""TrainConfig(lora=...): only adapter weights train and hold optimizer state, the base (LM head
included) is unchanged by a step, the reference is the model with its adapters off, the first
steps match TRL's DPOTrainer with the same PEFT config, and checkpoint + resume gives identical
adapters on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import random_records, tiny_model, tiny_tokenizer

peft = pytest.importorskip("peft")

from lrdpo_fast.train.config import TrainConfig  # noqa: E402
from lrdpo_fast.train.lora import adapters_off  # noqa: E402
from lrdpo_fast.train.trainer import Trainer  # noqa: E402

LORA = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}


def _cfg(tmp_path, name="run", **kw):
    base = dict(
        beta=0.1,
        learning_rate=1e-2,
        lr_scheduler="constant",
        pairs_per_step=3,
        max_steps=2,
        max_tokens_per_batch=4096,
        output_dir=str(tmp_path / name),
        progress=False,
        plot=False,
        save_final=False,
        device="cpu",
        lora=LORA,
    )
    base.update(kw)
    return TrainConfig(**base)


def _is_adapter(name: str) -> bool:
    return "lora_A" in name or "lora_B" in name


def test_only_adapters_get_gradients_and_optimizer_state_and_the_base_stays(tmp_path):
    model = tiny_model("llama", seed=0).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, tiny_tokenizer(), random_records(6, seed=1), _cfg(tmp_path))
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(_is_adapter(n) for n in trainable)
    assert not trainer.model.get_output_embeddings().weight.requires_grad  # the head stays frozen

    trainer.accumulate_gradients(list(range(3)))
    with_grad = [n for n, p in trainer.model.named_parameters() if p.grad is not None]
    assert with_grad and all(_is_adapter(n) for n in with_grad)
    assert any(_is_adapter(n) and "lora_B" in n for n in with_grad)
    trainer.optimizer.zero_grad(set_to_none=True)

    trainer.train()
    adapter_params = {id(p) for n, p in trainer.model.named_parameters() if _is_adapter(n)}
    held = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert held and all(id(p) in adapter_params for p in held)
    assert all(id(p) in adapter_params for p in trainer.optimizer.state)

    after = trainer.model.state_dict()
    for k, v in before.items():  # PEFT renames a wrapped linear's weight to <name>.base_layer.weight
        moved = k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        torch.testing.assert_close(after[k] if k in after else after[moved], v, rtol=0, atol=0, msg=k)
    assert any(v.abs().max() > 0 for n, v in after.items() if "lora_B" in n)  # the adapter learned


def test_reference_is_the_model_with_adapters_off(tmp_path):
    """Live reference (every micro-batch) = the base: the same rows as the reference precomputed
    before training; and adapters_off gives the start model's outputs after training."""
    tok, records = tiny_tokenizer(), random_records(6, seed=1)
    start = tiny_model("llama", seed=0)
    live = Trainer(copy.deepcopy(start).train(), tok, records, _cfg(tmp_path, "live", live_reference=True))
    pre = Trainer(copy.deepcopy(start).train(), tok, records, _cfg(tmp_path, "pre"))
    rows_live, rows_pre = live.train(), pre.train()
    for a, b in zip(rows_live, rows_pre):
        for k in ("loss", "rewards/margins", "logps/chosen", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    assert abs(rows_live[-1]["rewards/margins"]) > 1e-4  # the adapter moved the policy off the reference
    ids = torch.tensor([[1, 5, 9, 17, 33, 2]])
    live.model.eval()
    with torch.no_grad(), adapters_off(live.model):
        base = live.model(ids).logits
    with torch.no_grad():
        torch.testing.assert_close(base, start.eval()(ids).logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(live.model(ids).logits, base, atol=1e-5)  # adapters back on


def test_checkpoint_resume_gives_identical_adapters(tmp_path):
    tok, records = tiny_tokenizer(), random_records(9, seed=2)
    straight = Trainer(tiny_model("llama", seed=0).train(), tok, records, _cfg(tmp_path, "a", max_steps=4))
    rows_a = straight.train()
    cfg_b = _cfg(tmp_path, "b", max_steps=4, save_steps=2)
    first = Trainer(tiny_model("llama", seed=0).train(), tok, records, cfg_b.replace(max_steps=4))
    first.train()
    ckpt = tmp_path / "b" / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    resumed = Trainer(tiny_model("llama", seed=0).train(), tok, records, cfg_b)
    rows_b = resumed.train(resume_from_checkpoint=str(ckpt))
    assert [r["loss"] for r in rows_b] == [r["loss"] for r in rows_a]
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize(
    "lora, msg",
    [
        ({"target_modules": ["q_proj", "lm_head"]}, "LM head"),
        ({"r": 0}, r"lora\.r"),
        ({"rank": 4}, "unknown key"),
        ({"lora_dropout": 1.5}, "lora_dropout"),
        ({"target_modules": []}, "target_modules"),
        ("yes", "mapping"),
    ],
)
def test_bad_lora_names_the_field(lora, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(lora=lora)


def test_a_peft_lora_config_is_accepted_and_round_trips(tmp_path):
    cfg = TrainConfig(lora=peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), output_dir="x")
    assert cfg.lora["r"] == 8 and cfg.lora["target_modules"] == ["q_proj", "v_proj"]
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg
    assert TrainConfig(lora={}).lora["target_modules"] == "all-linear"


def test_the_loop_takes_the_same_lora_keys_and_its_help_names_them():
    import lrdpo_fast as lf
    from lrdpo_fast.loop.config import describe_keys

    cfg = lf.IterateConfig.from_dict({"reward": {"callable": "x.y:z"}, "train": {"lora": LORA}})
    assert cfg.train.lora == {**TrainConfig(lora=LORA).lora}
    with pytest.raises(ValueError, match=r"train: TrainConfig: lora\.r"):
        lf.IterateConfig.from_dict({"reward": {"callable": "x.y:z"}, "train": {"lora": {"r": 0}}})
    line = next(row for row in describe_keys().splitlines() if row.strip().startswith("train.lora"))
    assert all(key in line for key in ("r:", "lora_alpha", "target_modules", "merged"))


def test_first_steps_match_trl_with_the_same_peft_config(tmp_path):
    """TRL's DPOTrainer with peft_config (its reference: the adapter disabled) and ours from the
    same adapter initialisation: loss, rewards and pre-clip gradient norm of 3 steps."""
    pytest.importorskip("trl")
    from peft import set_peft_model_state_dict
    from test_trl_parity import LR, N_PAIRS, _trl_run

    tok = tiny_tokenizer()
    records = random_records(N_PAIRS, seed=11, max_words=8)
    model_trl = tiny_model("llama", seed=0)
    model_ours = copy.deepcopy(model_trl)
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    start: dict = {}
    steps = 3
    trl_losses, trl_rows, tokenized, _ = _trl_run(
        model_trl, tok, records, tmp_path / "trl", steps=steps, peft_config=lora, adapter_at_start=start
    )
    cfg = _cfg(
        tmp_path,
        "ours",
        lora=lora,
        learning_rate=LR,
        pairs_per_step=N_PAIRS,
        max_steps=steps,
        dtype="fp32",
        weight_decay=0.0,
        max_grad_norm=1.0,
    )
    trainer = Trainer(model_ours, tok, tokenized, cfg)
    assert start and not set_peft_model_state_dict(trainer.peft_model, start).unexpected_keys
    ours = trainer.train()
    assert ours[0]["grad_norm"] > 1e-3  # step 1 has content: lora_B's gradient through lora_A
    for step, (loss, row_trl, row) in enumerate(zip(trl_losses, trl_rows, ours), 1):
        assert row["loss"] == pytest.approx(loss, abs=1e-4), f"loss at step {step}"
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
            assert row[key] == pytest.approx(row_trl[key], abs=1e-4, rel=1e-5), f"{key} at step {step}"
        assert row["grad_norm"] == pytest.approx(row_trl["grad_norm"], rel=1e-4), f"grad_norm at step {step}"
    assert abs(ours[-1]["rewards/margins"]) > 1e-3  # later steps moved the policy: they compare something
