"""Small iterative runs for the loop tests: a run YAML on the session's tiny Llama, the CLI in a
process of its own, and the outputs a resume must reproduce byte for byte."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent


def _write_run(
    tmp: Path,
    model_dir: Path,
    run_dir: str = "run",
    iterations: int = 2,
    eval_section: bool = True,
    sampler_extra: str = "",
    train_extra: str = "",
) -> Path:
    prompts = [f"the quick fox {i} says" for i in range(10)]
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    (tmp / "heldout.jsonl").write_text("".join(json.dumps({"prompt": f"hello world {i}"}) + "\n" for i in range(4)))
    text = f"""policy: {model_dir}
prompts: prompts.jsonl
iterations: {iterations}
prompts_per_iteration: 6
run_dir: {run_dir}
seed: 3
sampler: {{n: 4, temperature: 1.0, max_new_tokens: 10, dtype: float32, max_model_len: 256{sampler_extra}}}
reward: {{callable: "loop_rules:score"}}
pairs: {{strategy: best_worst, drop_truncated: false}}
train: {{beta: 0.1, alpha: 0.05, learning_rate: 2.0e-3, lr_scheduler: constant, pairs_per_step: 2, num_epochs: 1,
         save_steps: 1, progress: false, plot: false{train_extra}}}
"""
    if eval_section:
        text += 'eval: {prompts: heldout.jsonl, n: 2, metrics: {mean_chars: "loop_rules:mean_chars"}}\n'
    (tmp / "run.yaml").write_text(text)
    return tmp / "run.yaml"


def _cli(
    cfg: Path, env_extra: dict | None = None, timeout: int = 600, args: list[str] | None = None, preexec_fn=None
) -> subprocess.CompletedProcess:
    """``lrdpo-fast iterate CFG [args]`` in a process of its own (``args`` may start with a phase
    command instead: ``["pairs", "--iteration", "1"]``)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    env.pop("LRDPO_FAULT", None)
    env.update(env_extra or {})
    args = list(args or [])
    command = [args.pop(0)] if args and not args[0].startswith("-") else ["iterate"]
    return subprocess.run(
        [sys.executable, "-m", "lrdpo_fast.cli", *command, str(cfg), *args],
        cwd=cfg.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )


def _outputs(run: Path) -> dict[str, bytes]:
    keep = ("samples.jsonl", "scores.jsonl", "pairs.jsonl", "pairs_stats.json", "model.safetensors")
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.name in keep and "checkpoint-" not in str(p)
    }


def _float64_logps(model, prompt_ids, response_ids) -> float:
    """Summed log-prob of ``response_ids`` after ``prompt_ids`` with materialized float64 logits."""
    m = model.double().eval()
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = m(ids).logits[0, :-1].log_softmax(-1)
    tgt = ids[0, 1:]
    lp = logits.gather(-1, tgt[:, None])[:, 0]
    return float(lp[len(prompt_ids) - 1 :].sum())
