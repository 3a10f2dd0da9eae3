"""LoRA in the iterative loop: each iteration's adapter is merged into policy_{i+1}
(W + (lora_alpha / r) * B @ A), which the run directory holds as a plain transformers folder and
the sampler serves (verified sync); a fresh adapter trains the next iteration against it. On a
tied-embedding Qwen2.5-shaped model (GQA, q/k/v biases), not only the toy Llama."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import random_records, tiny_model, tiny_tokenizer

peft = pytest.importorskip("peft")
pytest.importorskip("vllm")

from loop_runs import _cli, _float64_logps, _write_run  # noqa: E402

from lrdpo_fast.model.tiny import family_config  # noqa: E402
from lrdpo_fast.train.checkpoint import load_model_weights  # noqa: E402
from lrdpo_fast.train.config import TrainConfig  # noqa: E402
from lrdpo_fast.train.trainer import Trainer  # noqa: E402

RANK, ALPHA = 4, 8


def _qwen25():
    kind, overrides = family_config("qwen2.5")
    return tiny_model(kind, seed=0, **overrides)


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_merged_policy_is_base_plus_scaled_b_a(tmp_path, rslora):
    model = _qwen25().train()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(
        learning_rate=1e-2,
        pairs_per_step=3,
        max_steps=2,
        output_dir=str(tmp_path),
        progress=False,
        plot=False,
        save_final=False,
        device="cpu",
        lora={"r": RANK, "lora_alpha": ALPHA, "use_rslora": rslora},
    )
    trainer = Trainer(model, tiny_tokenizer(), random_records(6, seed=1), cfg)
    trainer.train()
    adapter = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    merged = trainer.merge_adapter()
    assert merged is model and trainer.peft_model is None
    scale = ALPHA / (math.sqrt(RANK) if rslora else RANK)
    sd = merged.state_dict()
    assert sd.keys() == base.keys()  # the plain model's names: saved and synced as without LoRA
    moved = 0
    for name, w0 in base.items():
        layer = name.removesuffix(".weight")
        a = adapter.get(f"{layer}.lora_A.default.weight")
        if a is None:  # not a target (embeddings, norms, biases; the tied head): untouched
            assert torch.equal(sd[name], w0), name
            continue
        b = adapter[f"{layer}.lora_B.default.weight"]
        torch.testing.assert_close(sd[name], w0 + scale * b @ a, rtol=1e-6, atol=1e-7, msg=name)
        moved += bool((sd[name] - w0).abs().max() > 0)
    assert moved >= 7  # q, k, v, o, gate, up, down of a layer at least


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A 2-iteration LoRA run through the CLI (its own process) on a tied Qwen2.5-shaped model."""
    tmp = tmp_path_factory.mktemp("lora_loop")
    start = tmp / "start"
    _qwen25().save_pretrained(start)
    tiny_tokenizer().save_pretrained(start)
    lora = f", lora: {{r: {RANK}, lora_alpha: {ALPHA}}}"
    proc = _cli(_write_run(tmp, start, eval_section=False, train_extra=lora))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", start


def test_each_iteration_trains_an_adapter_and_saves_a_merged_plain_model(lora_run):
    run, start = lora_run
    w0 = load_model_weights(start)
    for i in range(2):
        policy = run / f"iter_{i}/policy"
        assert (policy / "model.safetensors").is_file() and not (policy / "adapter_model.safetensors").exists()
        checkpoints = sorted((run / f"iter_{i}/train").glob("checkpoint-*"))
        assert checkpoints and all((c / "adapter_model.safetensors").is_file() for c in checkpoints)
        assert not any((c / "model.safetensors").exists() for c in checkpoints)  # the adapter only
        w1 = load_model_weights(policy)
        assert w1.keys() == w0.keys()
        for name, before in w0.items():
            delta = w1[name] - before
            if name.endswith("proj.weight"):  # each iteration's change is a rank-r update
                assert torch.linalg.matrix_rank(delta.double(), atol=1e-6) <= RANK, (i, name)
            else:  # embeddings (= the tied head), norms, biases: frozen
                assert torch.equal(delta, torch.zeros_like(delta)), (i, name)
        assert max(float((w1[n] - w0[n]).abs().max()) for n in w0) > 1e-5, i
        w0 = w1  # iteration 1's adapter starts from policy_1: its delta is rank r on its own


def test_the_next_iteration_is_trained_and_sampled_from_the_merged_policy(lora_run):
    """Iteration 1's reference log-probs are the merged policy_1's (float64, materialized
    logits), and its samples came from the engine after the verified sync of those weights."""
    from transformers import AutoModelForCausalLM

    run, _ = lora_run
    model = AutoModelForCausalLM.from_pretrained(run / "iter_0/policy", dtype=torch.float32)
    pairs = [json.loads(line) for line in (run / "iter_1/pairs.jsonl").read_text().splitlines()]
    for rec in pairs[:3]:
        for side in ("chosen", "rejected"):
            ids = rec[f"{side}_input_ids"]
            eos = [] if ids[-1] == 2 or rec[f"{side}_truncated"] else [2]
            want = _float64_logps(model, rec["prompt_input_ids"], ids + eos)
            assert rec[f"ref_{side}_logps"] == pytest.approx(want, abs=2e-4), side
    # the sync into the sampler is verified by the loop itself (sampler.verify_sync, on by
    # default: a stale engine raises WeightSyncError and the run above would have failed)
    assert json.loads((run / "iter_1/done/sample.json").read_text())["samples"] > 0


def test_the_loop_refuses_lora_under_torchrun(tmp_path, tiny_model_dir):
    import os
    import subprocess
    import sys

    from loop_runs import TESTS

    cfg = _write_run(tmp_path, tiny_model_dir, eval_section=False, train_extra=", lora: {r: 4}")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(TESTS) + os.pathsep + env.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "lrdpo_fast.cli", "iterate", str(cfg)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lrdpo-fast: error:")]
    assert errors and all("train.lora" in line and "world size 2" in line for line in errors), proc.stderr[-2000:]
    assert "lrdpo_fast/" not in proc.stderr  # one line per rank, no traceback of ours (torchrun prints its own)
    assert not (tmp_path / "run" / "iter_0").exists()
