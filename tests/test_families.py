"""The model families users train, each as a tiny random model whose config keeps the family's
distinctive features (``tiny.FAMILIES``; ``families.TESTED`` says what each exercises):

(a) packed per-sequence log-probs equal transformers' unpacked ones (fp32);
(c) one ``lf.iterate`` iteration runs, and the saved policy folder loads in transformers (the
    trained weights, a tied head still tied) and in a fresh vLLM engine;
(b) that engine's greedy tokens and their log-probs equal transformers', before and after a sync
    of weights with every parameter perturbed (embeddings, and so a tied head, included).

And the refusals: an architecture the sampler or the packed path cannot serve is refused at
start with an error naming it and what it lacks (real configs, no mocks)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_serves, perturbed, random_records, tiny_tokenizer, unpacked_logps

from lrdpo_fast.data import tokenize_pairs
from lrdpo_fast.data.packing import pack_pairs
from lrdpo_fast.model.families import TESTED, check_packed
from lrdpo_fast.model.loading import load_causal_lm
from lrdpo_fast.model.packed import model_sequence_logprobs
from lrdpo_fast.model.tiny import FAMILIES, family_config, tiny_causal_lm, tiny_config

PROMPTS = ["The quick brown fox", "What is the capital of France?"]


def start_model(family: str) -> torch.nn.Module:
    """The family's tiny model with every parameter moved off its init (non-zero biases, norms
    other than 1), in eval mode."""
    kind, overrides = family_config(family)
    return perturbed(tiny_causal_lm(kind, seed=0, **overrides), seed=11).eval()


def as_reference(model: torch.nn.Module, family: str) -> torch.nn.Module:
    """A loaded model on the attention its tiny config uses (eager for the soft-capped Gemmas)."""
    kind, overrides = family_config(family)
    model.config._attn_implementation = tiny_config(kind, **overrides)._attn_implementation
    return model.eval()


def test_the_table_is_the_tested_list():
    assert sorted(TESTED) == sorted(FAMILIES)
    for family, (arch, _) in TESTED.items():
        assert type(tiny_causal_lm(family_config(family)[0])).__name__ == arch, family


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_packed_logprobs_equal_unpacked(family):
    model = start_model(family)
    check_packed(model)
    examples = tokenize_pairs(random_records(3, seed=7), tiny_tokenizer(), max_length=24)
    with torch.no_grad():
        got, _ = model_sequence_logprobs(model, pack_pairs(examples), backend="torch")
        want = unpacked_logps(model, examples)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _run_config(tmp_path, policy_dir) -> dict:
    (tmp_path / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"the quick fox {i}"}) + "\n" for i in range(4))
    )
    return {
        "policy": str(policy_dir),
        "prompts": str(tmp_path / "prompts.jsonl"),
        "iterations": 1,
        "prompts_per_iteration": 4,
        "run_dir": str(tmp_path / "run"),
        "seed": 3,
        "sampler": {
            "n": 3,
            "temperature": 1.0,
            "max_new_tokens": 6,
            "dtype": "float32",
            "max_model_len": 64,
            "enforce_eager": True,
            "cpu_threads": 1,
        },
        "reward": {"callable": "loop_rules:score"},
        "pairs": {"strategy": "best_worst", "drop_truncated": False},
        "train": {
            "beta": 0.1,
            "alpha": 0.05,
            "learning_rate": 5e-3,
            "lr_scheduler": "constant",
            "pairs_per_step": 2,
            "num_epochs": 1,
            "device": "cpu",
            "progress": False,
            "plot": False,
        },
    }


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_iteration_then_the_saved_policy_serves(family, tmp_path):
    pytest.importorskip("vllm")
    import lrdpo_fast as lf
    from lrdpo_fast.loop.sampler import VLLMSampler

    start = start_model(family)
    start.save_pretrained(tmp_path / "start")
    tiny_tokenizer().save_pretrained(tmp_path / "start")
    lf.iterate(lf.IterateConfig.from_dict(_run_config(tmp_path, tmp_path / "start")), progress=False)

    # (c) the saved policy loads in transformers: the trained weights, a tied head still tied
    folder = tmp_path / "run" / "iter_0" / "policy"
    trained = as_reference(load_causal_lm(folder, "policy", dtype=torch.float32), family)
    if start.config.tie_word_embeddings:
        assert trained.get_output_embeddings().weight is trained.get_input_embeddings().weight
    moved = {n for n, p in trained.named_parameters() if not torch.equal(p, start.get_parameter(n))}
    assert "model.embed_tokens.weight" in moved and len(moved) > len(dict(start.named_parameters())) // 2

    # (c) + (b) a fresh engine serves it; then a sync of every parameter moved
    with VLLMSampler(str(folder), seed=0, dtype="float32", max_model_len=64, enforce_eager=True, cpu_threads=1) as s:
        assert_serves(s, trained, PROMPTS, max_new_tokens=8)
        changed = perturbed(trained, seed=5)
        s.load_weights(changed.state_dict())
        assert_serves(s, changed, PROMPTS, max_new_tokens=8)


def _olmo2_folder(tmp_path):
    model = tiny_causal_lm("olmo2")
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    return tmp_path


def test_sampler_refuses_an_architecture_vllm_serves_only_through_transformers(tmp_path):
    """vLLM 0.32 maps Olmo2ForCausalLM to its Transformers modeling backend, which fails on the
    CPU build ('do_not_compile'): refused before an engine starts."""
    pytest.importorskip("vllm")
    from lrdpo_fast.loop.sampler import VLLMSampler

    folder = _olmo2_folder(tmp_path)
    with pytest.raises(ValueError, match=r"Olmo2ForCausalLM: .* lacks a native implementation"):
        VLLMSampler(str(folder), dtype="float32", max_model_len=64, enforce_eager=True)
    assert type(load_causal_lm(folder)).__name__ == "Olmo2ForCausalLM"  # training it is fine


def test_sampler_refuses_a_qwen2_head_dim_vllm_would_ignore(tmp_path):
    """vLLM's Qwen2 takes head_dim = hidden_size / num_attention_heads whatever the config says:
    with another head_dim it would serve another model from the start."""
    pytest.importorskip("vllm")
    from lrdpo_fast.loop.sampler import VLLMSampler

    tiny_causal_lm("qwen2", head_dim=64).save_pretrained(tmp_path)  # 2 heads x 64 != hidden 64
    tiny_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"Qwen2ForCausalLM with head_dim=64 != hidden_size / num_attention_heads"):
        VLLMSampler(str(tmp_path), dtype="float32", max_model_len=64, enforce_eager=True)


def test_packed_path_refuses_attention_outside_the_attention_interface(tmp_path):
    """Bloom computes its ALiBi attention itself: packed sequences would see each other."""
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=320, hidden_size=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="BloomForCausalLM lacks attention through transformers' AttentionInterface"):
        check_packed(model)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"policy folder .*BloomForCausalLM lacks attention"):
        load_causal_lm(tmp_path, "policy")


def test_trainer_refuses_a_bidirectional_gemma3():
    import lrdpo_fast as lf

    model = tiny_causal_lm("gemma3", use_bidirectional_attention=True)
    records = random_records(2, seed=1)
    with pytest.raises(ValueError, match="Gemma3ForCausalLM with use_bidirectional_attention=True lacks causal"):
        lf.Trainer(model, tiny_tokenizer(), records, lf.TrainConfig(device="cpu", progress=False, plot=False)).train()
