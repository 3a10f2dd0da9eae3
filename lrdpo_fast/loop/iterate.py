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

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.atomic import atomic_write_jsonl
from ..data.files import read_jsonl
from ..train.distributed import DistInfo, barrier, init_distributed
from ..train.tracking import build_tracker, require_trackers
from . import engine_mode
from .config import EXAMPLE, IterateConfig
from .phases import PHASE_FUNCS, LoopState
from .report import format_table, plot_summary
from .resume import after_redo, check_run_config, first_to_run, phase_to_redo
from .rewards import build_reward
from .run_dir import PHASES, RunDir
from .sampler.gc_heap import collection_paused
from .summary import SUMMARY_TABLE, summary_rows


@dataclass
class StartPolicy:
    """The start policy as loaded: its folder, the causal LM (fp32) and the tokenizer."""

    path: str
    model: torch.nn.Module
    tokenizer: Any


@dataclass
class Evaluation:
    """What the per-row held-out evaluation needs: the prompts, the judge (a reward) and the
    extra metrics (name -> fn(prompts, responses) -> float). ``prompts`` is None without an
    ``eval`` section (no evaluation)."""

    prompts: list | None = None
    judge: Any = None
    metrics: dict[str, Callable] = field(default_factory=dict)


@dataclass
class Reporting:
    """Where the loop reports: progress bars and the table (``progress``), ``on_row`` callbacks
    with each new summary row (rank 0), and where to stop early (``stop_after``)."""

    progress: bool = True
    on_row: Callable[[dict], None] | None = None
    stop_after: tuple[int, str] | None = None


def load_prompts(spec: str, split: str) -> list:
    """The prompts of a ``prompts`` value: 'example' (the demo task's ``split``) or a JSONL file
    of ``{"prompt": str | chat messages}``; ValueError naming the file and record."""
    if spec == EXAMPLE:
        from ..demo.task import make_prompts, pool_size

        return make_prompts(pool_size(split), seed=0, split=split)
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


def load_start_policy(cfg: IterateConfig) -> StartPolicy:
    """The ``policy`` folder (or the embedded demo policy) and its tokenizer (``tokenizer``, else
    the policy's): safetensors only, no remote code; ValueError naming a missing folder."""
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
    return StartPolicy(path, model, load_tokenizer(tok_path, "tokenizer"))


def _build_reward(spec, cfg: IterateConfig, start: StartPolicy):
    """A reward of the run (implicit: scored on the tokens as training truncates them)."""
    train = cfg.train
    return build_reward(
        spec, start.model, start.tokenizer, max_length=train.max_length, max_prompt_length=train.max_prompt_length
    )


def build_evaluation(cfg: IterateConfig, reward, start: StartPolicy) -> Evaluation:
    """The held-out evaluation of ``cfg.eval`` (its judge: ``eval.judge``, else the run's reward)."""
    if cfg.eval is None:
        return Evaluation()
    from .rewards import load_callable

    prompts = load_prompts(cfg.eval.prompts, "eval")
    if cfg.eval.num_prompts is not None:
        prompts = prompts[: cfg.eval.num_prompts]
    judge = reward if cfg.eval.judge is None else _build_reward(cfg.eval.judge, cfg, start)
    metrics = {name: load_callable(spec) for name, spec in cfg.eval.metrics.items()}
    return Evaluation(prompts, judge, metrics)


def start_sampler(cfg: IterateConfig, start: StartPolicy, progress: bool, enforce_eager: bool | None = None):
    """The run's one ``VLLMSampler``, serving the start policy's folder (``sampler:`` engine
    options; ``enforce_eager``: the run's resolved engine mode, ``engine_mode.py``). With
    ``train.reference: sampler`` the engine's log-probs are checked to be policy_i's own."""
    from .sampler import VLLMSampler

    engine = cfg.sampler.engine.engine_args()
    engine["quiet"] = not progress  # no weight-loading bar or NUMA warning line in quiet runs
    if enforce_eager is not None:
        engine["enforce_eager"] = enforce_eager
    sampler = VLLMSampler(start.path, tokenizer=cfg.tokenizer or start.path, seed=cfg.seed, **engine)
    if cfg.train.reference == "sampler" and sampler.llm is not None:
        from .sampler_reference import check_distribution, check_engine_dtype

        try:
            check_engine_dtype(sampler.engine_dtype)
            gen = cfg.sampler.generation
            check_distribution(sampler.llm.llm_engine.model_config.logprobs_mode, gen.temperature, gen.top_p)
        except ValueError:
            sampler.close()
            raise
    return sampler


def _start_distributed(cfg: IterateConfig) -> DistInfo:
    """torchrun's process group (the backend the Trainer would pick), or one process; refuses
    what the loop cannot run on several ranks."""
    device = cfg.train.device
    ranks = init_distributed(torch.device(device).type if device else None)
    if ranks.enabled and cfg.train.lora is not None:
        raise ValueError(
            f"train.lora: the loop merges each iteration's adapter into the weights, which it does not do "
            f"for an FSDP2-sharded policy (world size {ranks.world_size}); run a LoRA loop in one process "
            "(the Trainer alone takes lora under torchrun)"
        )
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


def _check_call(cfg: Any, stop_after: tuple[int, str] | None) -> None:
    if not isinstance(cfg, IterateConfig):
        raise ValueError(f"cfg must be an IterateConfig, got {type(cfg).__name__}")
    if stop_after is not None:
        it, ph = stop_after
        if not isinstance(it, int) or isinstance(it, bool) or not 0 <= it < cfg.iterations:
            raise ValueError(f"iteration must be an int in [0, {cfg.iterations - 1}], got {it!r}")
        if ph not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {ph!r}")


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
    _check_call(cfg, stop_after)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import lrdpo_fast

    ranks = _start_distributed(cfg)
    run = RunDir(Path(cfg.run_dir))
    check_run_config(run, cfg, ranks, lrdpo_fast.__version__)  # before anything loads or prints
    require_trackers(cfg.report_to)  # a missing tracker package: refused before any work
    with collection_paused():  # the start's imports: no collector walks over them (sampler/gc_heap.py)
        prompt_pool = load_prompts(cfg.prompts, "train")
        start = load_start_policy(cfg)
        mode = engine_mode.resolve(cfg, run, start.path, start.model, ranks)
        engine_mode.record(run, mode, ranks, progress)
        first = first_to_run(run, cfg.iterations, ranks)
        if first > 0:  # resume from the last saved policy
            from ..train.checkpoint import apply_model_weights, load_model_weights

            apply_model_weights(start.model, load_model_weights(run.path(first - 1, "policy")))
        reward = _build_reward(cfg.reward, cfg, start)
        evaluation = build_evaluation(cfg, reward, start)
        sampler = start_sampler(cfg, start, progress, mode["enforce_eager"])
    state = LoopState(
        cfg, run, start.tokenizer, start.model, sampler, reward, prompt_pool, dist=ranks, progress=progress
    )
    state.start_path = start.path
    if ranks.is_main:
        state.tracker = build_tracker(cfg.report_to, run.root, run_name=run.root.name, config=cfg.to_dict())
    try:
        return _run(state, first, evaluation, Reporting(progress, on_row, stop_after))
    finally:
        sampler.close()
        if state.tracker is not None:
            state.tracker.close()


def _run(state: LoopState, first: int, evaluation: Evaluation, report: Reporting) -> list[dict]:
    """The iterations from ``first`` on: the phases, then the sync, evaluation and summary row."""
    if first > 0:
        _sync(state)
    _evaluate(state, first, evaluation)  # the start policy (row 0), or a resumed one
    if report.on_row is not None and first == 0 and report.stop_after is None and state.dist.is_main:
        report.on_row(summary_rows(state.run, state.cfg.iterations, 0)[0])
    for i in range(first, state.cfg.iterations):
        if _run_phases(state, i, report.stop_after) or (report.stop_after and report.stop_after[0] == i):
            return summary_rows(state.run, state.cfg.iterations, i)
        if i + 1 < state.cfg.iterations or evaluation.prompts is not None:
            _sync(state)
        _evaluate(state, i + 1, evaluation)
        _write_summary(state, i + 1, report)
    rows = summary_rows(state.run, state.cfg.iterations, state.cfg.iterations)
    if state.dist.is_main:
        atomic_write_jsonl(state.run.summary_path, rows)
        plot = plot_summary(rows, state.run.root / "report.png")
        if state.tracker is not None:
            state.tracker.log_image("report", plot, state.cfg.iterations)
    barrier(state.dist)
    return rows


def _run_phases(state: LoopState, i: int, stop_after: tuple[int, str] | None) -> bool:
    """The missing phases of iteration ``i`` in order; True when ``stop_after`` ended the run."""
    sampler = state.sampler
    for phase in PHASES:
        redo, recorded = phase_to_redo(state.run, i, phase, state.dist)
        if not redo:
            continue
        sleeps = phase == "train" and sampler.sleep_mode  # free the engine's memory for training
        if sleeps:
            sampler.sleep()
        t0 = time.perf_counter()
        info = PHASE_FUNCS[phase](state, i)
        info["wall_s"] = time.perf_counter() - t0
        if state.dist.is_main:
            state.run.mark_done(i, phase, info)
        barrier(state.dist)  # every rank sees the outputs and the marker before going on
        if recorded is not None:
            after_redo(state.run, i, phase, recorded, state.dist)
        if sleeps:
            sampler.wake_up()
        if stop_after == (i, phase):
            return True
    return False


def _sync(state: LoopState) -> None:
    """The live policy into the sampler, verified; a sharded policy is checked through its root."""
    state.sampler.load_weights(state.model, verify_with=state.policy if state.sharded else None)


def _write_summary(state: LoopState, r: int, report: Reporting) -> None:
    rows = summary_rows(state.run, state.cfg.iterations, r)
    if not state.dist.is_main:
        return
    atomic_write_jsonl(state.run.summary_path, rows)
    if state.tracker is not None:
        _track_summary(state, rows)
    if report.progress:
        print(format_table(rows, SUMMARY_TABLE), flush=True)
    if report.on_row is not None:
        report.on_row(rows[-1])


def _track_summary(state: LoopState, rows: list[dict]) -> None:
    """Hand the tracker each summary value this process has not handed over yet (all rows on a
    resume): a row gains fields later (row i's sampling stats come with iteration i)."""
    for row in rows:
        sent = state.tracked.setdefault(row["iteration"], {})
        new = {k: v for k, v in row.items() if sent.get(k) != v}
        if set(new) - {"iteration"}:
            state.tracker.log_row(new, row["iteration"], prefix="summary/", axis="summary/iteration")
            sent.update(new)


def _evaluate(state: LoopState, r: int, evaluation: Evaluation) -> dict | None:
    if evaluation.prompts is None:
        return None
    from .evaluation import evaluate_row

    row = evaluate_row(state, r, evaluation.prompts, evaluation.judge, evaluation.metrics)
    barrier(state.dist)  # rank 0 wrote eval/row_{r}.json: every rank reads it from here on
    return row
