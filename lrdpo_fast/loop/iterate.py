"""``lf.iterate(cfg)``: the whole iterative LR-DPO run, resumable at any point.

One sampler engine and one policy live for the run. For i = 0 .. iterations-1: sample (policy_i),
score, pair (+ reference log-probs of policy_i), train policy_{i+1} against policy_i, save it,
sync it into the sampler in memory, evaluate; then one summary row per policy (row 0 = the start
policy). Each phase is skipped when its completion marker exists, so rerunning the same command
after a kill continues from the last complete phase (training from its last checkpoint).

Under torchrun (``torchrun --nproc_per_node K -m lrdpo_fast.cli iterate run.yaml``) every rank
runs the same loop: the Trainer shards the policy with FSDP2, the sampler splits the prompts over
ranks or keeps its engine on rank 0 (``VLLMSampler``'s layouts) and gives every rank all samples,
and rank 0 alone writes the run directory (which every rank must see: one machine, or a shared
file system). Every rank waits for rank 0's writes before going on, so all ranks agree on which
phases are done and train on the same pairs.jsonl. An implicit reward scores a sharded policy
through its FSDP root on every rank (score phase); an implicit-reward eval judge is refused
there (the evaluation judges on rank 0 alone).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data.atomic import atomic_write_jsonl
from ..train.distributed import DistInfo, barrier, init_distributed, on_main_agreed
from .config import EXAMPLE, IterateConfig, RewardSpec
from .phases import LoopState, pairs_phase, sample_phase, score_phase, train_phase
from .report import format_table, plot_summary
from .run_dir import PHASES, RunDir

SUMMARY_TABLE = (
    "iteration",
    "true_accuracy",
    "judge_reward",
    "mean_response_length",
    "win_rate",
    "lc_win_rate",
    "reward_mean",
    "pairs_kept",
    "chosen_length",
    "rejected_length",
    "loss",
    "reward_accuracy",
)
PHASE_FUNCS = {"sample": sample_phase, "score": score_phase, "pairs": pairs_phase, "train": train_phase}


def _load_prompts(spec: str, split: str) -> list:
    if spec == EXAMPLE:
        from ..demo.task import make_prompts, pool_size

        return make_prompts(pool_size(split), seed=0, split=split)
    from ..data.files import read_jsonl

    prompts = []
    for k, rec in enumerate(read_jsonl(spec), 1):
        if "prompt" not in rec:
            raise ValueError(f"prompts file {spec!r} record {k}: no 'prompt' key")
        p = rec["prompt"]
        if not (isinstance(p, str) and p) and not (isinstance(p, list) and p):
            raise ValueError(f"prompts file {spec!r} record {k}: 'prompt' must be a non-empty string or chat messages")
        prompts.append(p)
    if not prompts:
        raise ValueError(f"prompts file {spec!r} holds no prompt")
    return prompts


def _load_policy(cfg: IterateConfig):
    if cfg.policy == EXAMPLE:
        from ..demo.policy import start_policy_path

        path = str(start_policy_path())
    else:
        path = cfg.policy
    if not Path(path, "config.json").is_file():
        raise ValueError(f"policy {path!r} is not a save_pretrained model folder (no config.json)")
    from ..model.loading import load_causal_lm, load_tokenizer

    tok_path = cfg.tokenizer or path
    if not Path(tok_path).is_dir():
        raise ValueError(f"tokenizer {tok_path!r} is not a folder")
    model = load_causal_lm(path, "policy", dtype="float32")  # safetensors only, no remote code
    model.config._attn_implementation = "sdpa"
    return path, model, load_tokenizer(tok_path, "tokenizer")


def build_reward(spec: RewardSpec, st_policy=None, tokenizer=None, train: dict | None = None):
    """The reward object of a ``reward`` section (implicit: policy vs ``spec.reference``, with the
    ``train`` section's max_length / max_prompt_length truncation, as training sees the pairs)."""
    from .rewards import CallableReward, ImplicitReward, RewardModel

    if spec.callable is not None:
        return CallableReward(spec.callable)
    if spec.reward_model is not None:
        return RewardModel(spec.reward_model, batch_size=spec.batch_size)
    from ..model.loading import load_causal_lm

    ref = load_causal_lm(spec.reference, "reward.reference", dtype="float32")
    train = train or {}
    return ImplicitReward(
        st_policy,
        ref,
        tokenizer,
        max_length=train.get("max_length"),
        max_prompt_length=train.get("max_prompt_length"),
    )


def _start_distributed(cfg: IterateConfig) -> DistInfo:
    """torchrun's process group (the backend the Trainer would pick), or one process; refuses
    what the loop cannot run on several ranks."""
    device = cfg.train_config().device
    ranks = init_distributed(torch.device(device).type if device else None)
    if ranks.enabled and cfg.eval is not None:
        # the reward scores through the sharded root on every rank (score phase); the evaluation
        # judges on rank 0 alone, which a sharded policy cannot serve
        judge, name = (
            (cfg.eval.judge, "eval.judge")
            if cfg.eval.judge is not None
            else (cfg.reward, "eval (its judge is the reward)")
        )
        if judge.implicit:
            raise ValueError(
                f"{name}: an implicit-reward judge is not supported under torchrun (world size "
                f"{ranks.world_size}); give eval a callable or reward_model judge"
            )
    return ranks


def _summary_row(st: LoopState, r: int, eval_row: dict | None) -> dict[str, Any]:
    run = st.run
    row: dict[str, Any] = {"iteration": r}
    if eval_row:
        row.update(eval_row)
    if r < st.cfg.iterations and run.is_done(r, "sample"):
        info = run.done_info(r, "sample")
        row.setdefault("mean_response_length", info["response_length_mean"])
        row["sample_length_mean"] = info["response_length_mean"]
        row["time_sample_s"] = info["time_sample_s"]
        row["sample_tokens_per_s"] = info["sample_tokens_per_s"]
        if run.is_done(r, "score"):
            s = run.done_info(r, "score")
            row.update(reward_mean=s["reward_mean"], time_score_s=s["time_score_s"])
    if r > 0:
        p = run.done_info(r - 1, "pairs")
        t = run.done_info(r - 1, "train")
        row.update(
            pairs_kept=p.get("kept"),
            chosen_length=p.get("mean_chosen_length"),
            rejected_length=p.get("mean_rejected_length"),
            length_alpha=p.get("length_alpha"),
            time_pairs_s=p.get("time_pairs_s"),
            loss=t.get("loss"),
            reward_accuracy=t.get("reward_accuracy"),
            time_train_s=t.get("time_train_s"),
            train_tokens_per_s=t.get("train_tokens_per_s"),
        )
    return row


def iterate(
    cfg: IterateConfig,
    *,
    progress: bool = True,
    stop_after: tuple[int, str] | None = None,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Run (or resume) the iterative loop of ``cfg``; returns the summary rows (= summary.jsonl).

    ``progress``: progress bars while sampling, evaluating and training (``train.progress``), and
    the summary table after each iteration. ``on_row``: called with each new
    summary row (row 0 = the start policy, then one per finished iteration) as it is written.
    Under torchrun (module docstring) every rank returns the rows; rank 0 alone prints and calls
    ``on_row``.

    ``stop_after=(i, phase)``: run what is missing up to and including that phase of iteration
    ``i``, then stop (``lrdpo-fast sample|score|pairs|train run.yaml --iteration i``).

    Raises ValueError (naming the key, file or line) for bad input, and before anything is
    written when ``run_dir`` belongs to another config.
    """
    if not isinstance(cfg, IterateConfig):
        raise ValueError(f"cfg must be an IterateConfig, got {type(cfg).__name__}")
    if stop_after is not None:
        it, ph = stop_after
        if not isinstance(it, int) or isinstance(it, bool) or not 0 <= it < cfg.iterations:
            raise ValueError(f"iteration must be an int in [0, {cfg.iterations - 1}], got {it!r}")
        if ph not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {ph!r}")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import lrdpo_fast

    ranks = _start_distributed(cfg)
    run = RunDir(Path(cfg.run_dir))
    prompt_pool = _load_prompts(cfg.prompts, "train")
    eval_prompts = None
    if cfg.eval is not None:
        eval_prompts = _load_prompts(cfg.eval.prompts, "eval")
        if cfg.eval.num_prompts is not None:
            eval_prompts = eval_prompts[: cfg.eval.num_prompts]
    policy_path, model, tokenizer = _load_policy(cfg)
    on_main_agreed(ranks, lambda: run.check_or_write_config(cfg.to_dict(), lrdpo_fast.__version__))

    # where to start: after the last iteration whose policy was saved
    first = 0
    while first < cfg.iterations and run.is_done(first, "train"):
        first += 1
    if first > 0:
        from ..train.checkpoint import apply_model_weights, load_model_weights

        apply_model_weights(model, load_model_weights(run.path(first - 1, "policy")))
    reward = build_reward(cfg.reward, model, tokenizer, cfg.train)
    judge = (
        reward
        if cfg.eval is None or cfg.eval.judge is None
        else build_reward(cfg.eval.judge, model, tokenizer, cfg.train)
    )
    metrics = {}
    if cfg.eval is not None:
        from .rewards import load_callable

        metrics = {name: load_callable(spec) for name, spec in cfg.eval.metrics.items()}

    from .sampler import VLLMSampler

    sc = cfg.sampler
    sampler = VLLMSampler(
        policy_path,
        tokenizer=cfg.tokenizer or policy_path,
        seed=cfg.seed,
        dtype=sc.dtype,
        max_model_len=sc.max_model_len,
        gpu_memory_utilization=sc.gpu_memory_utilization,
        tensor_parallel_size=sc.tensor_parallel_size,
        cpu_threads=sc.cpu_threads,
        **({"enforce_eager": True} if sc.enforce_eager else {}),
        quiet=not progress,  # no weight-loading bar or NUMA warning line in quiet runs
    )
    st = LoopState(cfg, run, tokenizer, model, sampler, reward, prompt_pool, dist=ranks, progress=progress)
    try:
        if first > 0:
            sampler.load_weights(model)
        _eval(st, first, eval_prompts, judge, metrics)  # the start policy (row 0), or a resumed one
        if on_row is not None and first == 0 and stop_after is None and ranks.is_main:
            on_row(summary_rows(st, 0)[0])
        for i in range(first, cfg.iterations):
            for phase in PHASES:
                if run.is_done(i, phase):
                    continue
                if phase == "train" and sampler.sleep_mode:
                    sampler.sleep()
                t0 = time.perf_counter()
                info = PHASE_FUNCS[phase](st, i)
                info["wall_s"] = time.perf_counter() - t0
                if ranks.is_main:
                    run.mark_done(i, phase, info)
                barrier(ranks)  # every rank sees the outputs and the marker before going on
                if phase == "train" and sampler.sleep_mode:
                    sampler.wake_up()
                if stop_after == (i, phase):
                    return summary_rows(st, i)
            if stop_after is not None and stop_after[0] == i:
                return summary_rows(st, i)
            if i + 1 < cfg.iterations or cfg.eval is not None:
                sampler.load_weights(st.model)
            _eval(st, i + 1, eval_prompts, judge, metrics)
            rows = summary_rows(st, i + 1)
            if ranks.is_main:
                atomic_write_jsonl(run.summary_path, rows)
                if progress:
                    print(format_table(rows, SUMMARY_TABLE), flush=True)
                if on_row is not None:
                    on_row(rows[-1])
        rows = summary_rows(st, cfg.iterations)
        if ranks.is_main:
            atomic_write_jsonl(run.summary_path, rows)
            plot_summary(rows, run.root / "report.png")
        barrier(ranks)
        return rows
    finally:
        sampler.close()


def summary_rows(st: LoopState, last: int) -> list[dict]:
    """Rows 0..last (row r = policy_r) rebuilt from the phase markers and evaluation caches."""
    return [_summary_row(st, r, _eval_cached(st.run, r)) for r in range(last + 1)]


def _eval(st: LoopState, r: int, prompts, judge, metrics) -> dict | None:
    if st.cfg.eval is None:
        return None
    from .evaluation import evaluate_row

    row = evaluate_row(st, r, prompts, judge, metrics)
    barrier(st.dist)  # rank 0 wrote eval/row_{r}.json: every rank reads it from here on
    return row


def _eval_cached(run: RunDir, r: int) -> dict | None:
    p = run.eval_dir / f"row_{r}.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
