"""2 processes (torchrun, FSDP2 on gloo) vs 1 process on the same data: the same trajectory;
and a 2-process resume from a checkpoint continues it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import random_records, tiny_model, tiny_tokenizer

from lrdpo_fast import cli
from lrdpo_fast.train.checkpoint import load_model_weights, load_trainer_state

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

CONFIG = """\
model: model
data: pairs.jsonl
alpha: 0.02
learning_rate: 1.0e-3
lr_scheduler: linear
pairs_per_step: 5
max_tokens_per_batch: 120
max_steps: 3
save_steps: 2
plot: false
progress: false
device: cpu
"""


def _rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(tmp_path):
    # 8 pairs, 5 per step: ranks get 3 and 2 pairs, steps cross an epoch, and the 120-token
    # budget gives each rank a different number of micro-batches.
    tiny_model("llama", seed=0).save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    records = random_records(8, seed=21, max_words=6)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "lrdpo_fast.cli",
        "train",
        str(tmp_path / "cfg.yaml"),
        "--output-dir",
        str(tmp_path / "two"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "world size 2" in proc.stdout
    # resume the 2-process run from its step-2 checkpoint (full optimizer state re-sharded)
    resume = cmd[:-1] + [str(tmp_path / "two_resumed"), "--resume", str(tmp_path / "two" / "checkpoint-2")]
    proc = subprocess.run(resume, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    assert cli.main(["train", str(tmp_path / "cfg.yaml"), "--output-dir", str(tmp_path / "one")]) == 0
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3]
    assert max(r["micro_batches"] for r in two) >= 2
    for a, b in zip(one, two):
        for key in (
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "length/chosen",
            "length/rejected",
            "grad_norm",
        ):
            assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-5), (a["step"], key)
        assert a["pairs"] == b["pairs"] and a["tokens"] == b["tokens"]
    (resumed,) = _rows(tmp_path / "two_resumed")
    assert resumed["step"] == 3
    assert resumed["loss"] == pytest.approx(two[2]["loss"], abs=1e-6)
    assert resumed["rewards/margins"] == pytest.approx(two[2]["rewards/margins"], abs=1e-6)
    w1 = load_model_weights(tmp_path / "one" / "checkpoint-3")
    w2 = load_model_weights(tmp_path / "two" / "checkpoint-3")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=1e-4, msg=k)
    # The step-3 metrics above come from the checkpoint's weights, before any resumed update. What
    # the resume must restore shows in the step it then takes: weights and AdamW moments after step
    # 3 equal the uninterrupted run's (fresh moments or a restarted schedule would move them).
    w_resumed = load_model_weights(tmp_path / "two_resumed" / "checkpoint-3")
    w_before = load_model_weights(tmp_path / "two" / "checkpoint-2")
    assert w_resumed.keys() == w2.keys()
    moved = max(float((w2[k] - w_before[k]).abs().max()) for k in w2)
    assert moved > 1e-4  # step 3 changed the weights well beyond the tolerance below
    for k in w2:
        torch.testing.assert_close(w_resumed[k], w2[k], atol=1e-6, rtol=1e-5, msg=k)
    opt_straight = load_trainer_state(tmp_path / "two" / "checkpoint-3")["optimizer"]["state"]
    opt_resumed = load_trainer_state(tmp_path / "two_resumed" / "checkpoint-3")["optimizer"]["state"]
    assert opt_resumed.keys() == opt_straight.keys() and len(opt_straight) == len(w2)
    for k, st in opt_straight.items():
        assert st.keys() == opt_resumed[k].keys(), k
        for name, value in st.items():
            torch.testing.assert_close(
                torch.as_tensor(opt_resumed[k][name]),
                torch.as_tensor(value),
                atol=1e-7,
                rtol=1e-5,
                msg=f"optimizer state {name} of {k}",
            )


ITERATIVE_SCRIPT = """\
import json, sys
import torch.distributed as dist
from helpers import random_records, tiny_model, tiny_tokenizer
from lrdpo_fast.train.config import TrainConfig
from lrdpo_fast.train.trainer import Trainer

out = sys.argv[1]
model, tok = tiny_model("llama", seed=0), tiny_tokenizer()
records = random_records(6, seed=22, max_words=6)
rows = []
for it in range(2):  # iteration 1 trains the live (already sharded) policy against itself
    cfg = TrainConfig(alpha=0.01, learning_rate=1e-3, lr_scheduler="constant", pairs_per_step=3, max_steps=2,
                      max_tokens_per_batch=120, output_dir=f"{out}/it{it}", progress=False, plot=False,
                      save_final=False, device="cpu")
    trainer = Trainer(model, tok, records, cfg)
    rows += trainer.train()
    model = trainer.policy_loss  # the loop keeps the (sharded) root and hands it to the next Trainer
state = trainer.export_state_dict()
if trainer.dist.is_main:
    json.dump({"rows": rows, "norm": float(sum(v.double().pow(2).sum() for v in state.values()))},
              open(f"{out}/result.json", "w"))
if dist.is_initialized():
    dist.destroy_process_group()
"""


def test_iterative_loop_two_processes_match_one(tmp_path):
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "iterate.py"
    script.write_text(ITERATIVE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = tests_dir + os.pathsep + env.get("PYTHONPATH", "")
    results = {}
    for name, launcher in (
        ("one", [sys.executable]),
        ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]),
    ):
        (tmp_path / name).mkdir()
        proc = subprocess.run(
            launcher + [str(script), str(tmp_path / name)], env=env, capture_output=True, text=True, timeout=240
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        results[name] = json.loads((tmp_path / name / "result.json").read_text())
    one, two = results["one"]["rows"], results["two"]["rows"]
    assert len(one) == len(two) == 4
    assert abs(two[2]["rewards/margins"]) < 1e-4  # iteration 1: reference = the iteration-0 policy
    for a, b in zip(one, two):
        for key in ("loss", "rewards/margins", "logps/chosen", "grad_norm"):
            assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-5), (key, a["step"])
    assert results["two"]["norm"] == pytest.approx(results["one"]["norm"], rel=1e-6)
