"""2 processes (torchrun, FSDP2 on gloo) vs 1 process on the same data: the same trajectory;
a 2-process resume from a checkpoint continues it; and the iterative loop under torchrun writes
the run directory of one process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import random_records, tiny_model, tiny_tokenizer

from lrdpo_fast import cli
from lrdpo_fast.train.checkpoint import load_model_weights, load_trainer_state

_HAS_PEFT = importlib.util.find_spec("peft") is not None
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


def _weights(checkpoint) -> dict[str, torch.Tensor]:
    """What a checkpoint's step trained: the LoRA adapter (PEFT's file) or the full weights."""
    adapter = checkpoint / "adapter_model.safetensors"
    if adapter.is_file():
        from safetensors.torch import load_file

        return load_file(str(adapter))
    return load_model_weights(checkpoint)


@pytest.mark.parametrize(
    "extra",
    [
        "",
        # LoRA under FSDP2: the adapter injected before sharding, frozen base shards with no
        # optimizer state, the adapter saved from the gathered weights and resumed into 2 ranks
        pytest.param("lora: {r: 4, lora_alpha: 8}\n", marks=pytest.mark.skipif(not _HAS_PEFT, reason="no peft")),
    ],
    ids=["full", "lora"],
)
def test_two_processes_match_one(tmp_path, extra):
    # 8 pairs, 5 per step: ranks get 3 and 2 pairs, steps cross an epoch, and the 120-token
    # budget gives each rank a different number of micro-batches.
    tiny_model("llama", seed=0).save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    records = random_records(8, seed=21, max_words=6)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "cfg.yaml").write_text(CONFIG + extra)
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
    w1 = _weights(tmp_path / "one" / "checkpoint-3")
    w2 = _weights(tmp_path / "two" / "checkpoint-3")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=1e-4, msg=k)
    # The step-3 metrics above come from the checkpoint's weights, before any resumed update. What
    # the resume must restore shows in the step it then takes: weights and AdamW moments after step
    # 3 equal the uninterrupted run's (fresh moments or a restarted schedule would move them).
    w_resumed = _weights(tmp_path / "two_resumed" / "checkpoint-3")
    w_before = _weights(tmp_path / "two" / "checkpoint-2")
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


ITERATE_RUN = """\
policy: {model}
prompts: prompts.jsonl
iterations: 2
prompts_per_iteration: 6
run_dir: run
seed: 3
sampler: {{n: 4, temperature: 1.0, max_new_tokens: 10, dtype: float32, max_model_len: 128, enforce_eager: true}}
reward: {{callable: "loop_rules:score"}}
pairs: {{strategy: best_worst, drop_truncated: false}}
train: {{beta: 0.1, alpha: 0.05, learning_rate: 2.0e-3, lr_scheduler: constant, pairs_per_step: 3, num_epochs: 1,
         save_steps: 1, progress: false, plot: false, device: cpu}}
eval: {{prompts: heldout.jsonl, n: 2, metrics: {{mean_chars: "loop_rules:mean_chars"}}}}
"""


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _run_one_and_two(tmp_path, run_yaml: str, phase: str) -> dict:
    """``lrdpo-fast PHASE run.yaml --iteration 1`` in 1 process and under torchrun with 2 CPU ranks
    (gloo; rank 0 hosts the vLLM engine), each in its own folder: {"one"|"two": (run dir, proc)}."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "LRDPO_FAULT", "LRDPO_SAMPLER_SHARDING")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        OMP_NUM_THREADS="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        VLLM_CPU_KVCACHE_SPACE="1",
        PYTHONPATH=tests_dir + os.pathsep + env.get("PYTHONPATH", ""),
    )
    runs = {}
    for name, launcher in (
        ("one", [sys.executable]),
        ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]),
    ):
        d = tmp_path / name
        d.mkdir()
        (d / "prompts.jsonl").write_text(
            "".join(json.dumps({"prompt": f"the quick fox {i} says"}) + "\n" for i in range(10))
        )
        (d / "heldout.jsonl").write_text("".join(json.dumps({"prompt": f"hello world {i}"}) + "\n" for i in range(4)))
        (d / "run.yaml").write_text(run_yaml)
        cmd = launcher + ["-m", "lrdpo_fast.cli", phase, "run.yaml", "--iteration", "1"]
        proc = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        runs[name] = (d / "run", proc)
    assert "the engine runs in another process" in runs["two"][1].stderr  # the rank0 layout: torchrun took effect
    return runs


@pytest.mark.slow
def test_iterate_two_processes_match_one(tmp_path, tiny_model_dir):
    """``lrdpo-fast pairs run.yaml --iteration 1`` (iteration 0 in full: sample, score, pairs,
    train, sync, eval; then iteration 1 up to its pairs) under torchrun with 2 CPU ranks (gloo,
    rank 0 hosts the vLLM engine) and in 1 process: the same run directory. Iteration 1 samples
    from the synced FSDP-trained policy_1 and takes its reference log-probs from the sharded root,
    so a wrong sync, a reference from a shard or ranks trained on different pairs all show."""
    pytest.importorskip("vllm")
    from lrdpo_fast.train.checkpoint import load_model_weights

    runs = _run_one_and_two(tmp_path, ITERATE_RUN.format(model=tiny_model_dir), "pairs")
    (one, _), (two, _) = runs["one"], runs["two"]
    assert not [p for p in two.rglob("*") if p.name.endswith((".tmp", ".partial"))]

    for i in range(2):
        for name in ("samples.jsonl", "scores.jsonl", "pairs_stats.json"):
            assert (two / f"iter_{i}" / name).read_bytes() == (one / f"iter_{i}" / name).read_bytes(), (i, name)
        pairs_one, pairs_two = _jsonl(one / f"iter_{i}/pairs.jsonl"), _jsonl(two / f"iter_{i}/pairs.jsonl")
        assert len(pairs_two) == len(pairs_one) >= 3
        for a, b in zip(pairs_one, pairs_two):
            ref = ("ref_chosen_logps", "ref_rejected_logps")
            assert {k: v for k, v in b.items() if k not in ref} == {k: v for k, v in a.items() if k not in ref}
            for k in ref:
                assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-6), (i, k)
    assert not (two / "iter_1/train").exists()  # stopped after iteration 1's pairs

    w1, w2 = load_model_weights(one / "iter_0/policy"), load_model_weights(two / "iter_0/policy")
    w0 = load_model_weights(tiny_model_dir)
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w0[k]).abs().max()) for k in w1) > 1e-3  # training moved the weights
    # per tensor, relative: AdamW amplifies the float noise of near-zero gradients (5e-6 measured here;
    # 4e-5 leaves room for another CPU's kernels and is still ~1000x under a rank training on other pairs)
    for k in w1:
        assert float((w2[k] - w1[k]).norm()) <= 4e-5 * float(w1[k].norm()), k

    timing = ("time_", "_per_s", "wall_s")
    rows = {}
    for name, (run, _) in runs.items():
        rows[name] = [
            {k: v for k, v in r.items() if not any(t in k for t in timing)} for r in _jsonl(run / "summary.jsonl")
        ]
    assert [r["iteration"] for r in rows["two"]] == [0, 1]
    assert "win_rate" in rows["two"][1] and rows["two"][1]["pairs_kept"] >= 3
    for a, b in zip(rows["one"], rows["two"]):
        assert b.keys() == a.keys()
        for k in a:
            assert b[k] == (pytest.approx(a[k], rel=1e-5, abs=1e-7) if isinstance(a[k], float) else a[k]), k


@pytest.mark.slow
def test_implicit_reward_two_processes_match_one(tmp_path, tiny_model_dir):
    """DICE's implicit reward under torchrun: iteration 1 scores policy_1 (FSDP-sharded over 2 CPU
    ranks) against the reference through the sharded root on every rank; the scores equal the
    1-process run's. Iteration 0 (the unsharded start policy) scores on rank 0 alone."""
    pytest.importorskip("vllm")
    from helpers import tiny_model, tiny_tokenizer

    ref_dir = tmp_path / "reference"  # another model than the start policy, as in DICE's rounds
    tiny_model("llama", seed=1).save_pretrained(ref_dir)
    tiny_tokenizer().save_pretrained(ref_dir)
    run = ITERATE_RUN.format(model=tiny_model_dir).replace(
        'reward: {callable: "loop_rules:score"}', f"reward: {{implicit: true, reference: {ref_dir}}}"
    )
    run = run.replace(
        "eval: {prompts: heldout.jsonl,", 'eval: {prompts: heldout.jsonl, judge: {callable: "loop_rules:score"},'
    )
    assert "implicit: true" in run and "judge:" in run
    runs = _run_one_and_two(tmp_path, run, "score")
    one, two = runs["one"][0], runs["two"][0]
    for i in range(2):
        assert (two / f"iter_{i}/samples.jsonl").read_bytes() == (one / f"iter_{i}/samples.jsonl").read_bytes(), i
    assert (two / "iter_0/scores.jsonl").read_bytes() == (one / "iter_0/scores.jsonl").read_bytes()
    s1, s2 = _jsonl(one / "iter_1/scores.jsonl"), _jsonl(two / "iter_1/scores.jsonl")
    assert len(s1) == len(s2) == 6 * 4
    for a, b in zip(s1, s2):
        assert (a["prompt_index"], a["sample_index"]) == (b["prompt_index"], b["sample_index"])
        assert b["score"] == pytest.approx(a["score"], rel=1e-4, abs=1e-4)
    assert not (two / "iter_1/pairs.jsonl").exists()  # stopped after iteration 1's scores

    # the score phase's own numbers (1 process, the unsharded start policy): every sample's
    # float64 log-ratio, a truncated one on exactly its sampled tokens, a finished one with its EOS
    # (the random tiny policy's finished answers are the empty ones: EOS alone)
    policy, ref = tiny_model("llama", seed=0).double().eval(), tiny_model("llama", seed=1).double().eval()
    samples, scores = _jsonl(one / "iter_0/samples.jsonl"), _jsonl(one / "iter_0/scores.jsonl")
    cut = [x for x in samples if x["truncated"]]
    done = [x for x in samples if not x["truncated"]]  # here: empty answers (EOS at once), scored on their EOS
    assert cut and done
    by_key = {(r["prompt_index"], r["sample_index"]): r["score"] for r in scores}
    for x in cut[:3] + done[:3]:
        ids = x["response_ids"] + ([] if x["truncated"] or x["response_ids"][-1] == 2 else [2])
        want = _logp64(policy, x["prompt_ids"], ids) - _logp64(ref, x["prompt_ids"], ids)
        assert by_key[(x["prompt_index"], x["sample_index"])] == pytest.approx(want, abs=2e-4), x["truncated"]


def _logp64(model, prompt_ids, response_ids) -> float:
    """Summed log-prob of ``response_ids`` after ``prompt_ids``, float64 model, materialized logits."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].log_softmax(-1)
    return float(logp.gather(-1, ids[0, 1:, None])[len(prompt_ids) - 1 :].sum())


def test_implicit_judge_is_refused_under_torchrun(tmp_path, tiny_model_dir, monkeypatch):
    from lrdpo_fast.loop import iterate as it
    from lrdpo_fast.loop.config import IterateConfig
    from lrdpo_fast.train.distributed import DistInfo

    base = dict(policy=str(tiny_model_dir), prompts="example", run_dir=str(tmp_path / "run"))
    implicit = {"implicit": True, "reference": str(tiny_model_dir)}
    two = DistInfo(rank=0, world_size=2)
    monkeypatch.setattr(it, "init_distributed", lambda *a, **k: two)
    with pytest.raises(ValueError, match="eval \\(its judge is the reward\\): an implicit-reward judge"):
        it._start_distributed(IterateConfig.from_dict({**base, "reward": implicit, "eval": {"prompts": "example"}}))
    ok = {**base, "reward": implicit, "eval": {"prompts": "example", "judge": {"callable": "loop_rules:score"}}}
    assert it._start_distributed(IterateConfig.from_dict(ok)) is two
