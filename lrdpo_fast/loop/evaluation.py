"""Evaluation against a fixed baseline: the public ``evaluate`` and the loop's per-row evaluation.

    result = evaluate(sampler, baseline, prompts, judge, n=1)          # EvalResult
    row = evaluate_row(state, r, prompts, judge, metrics)             # the loop's eval/row_{r}.json

Both take one path: ``sample_and_judge`` (generate, check the groups, judge with checked scores)
then ``win_rates.compare_with_baseline`` (per-sample (score, length) records against the
baseline's: win rate, length-controlled win rate; the estimator is documented in
``loop/win_rates.py`` and docs/evaluation.md). They differ only in what the baseline is:
``evaluate`` judges a ``Baseline``'s texts in the same judge call; the loop compares with the
scores and lengths its row 0 (the start policy) recorded.

Best-of-n: ``evaluate(..., n=k, select="judge")`` draws k samples per prompt and keeps the one
the judge scores highest (the first on ties), so the same judge picks and grades: the upper
reference the trained policy should approach at n = 1. ``select="all"`` instead compares every
sample with the prompt's baseline (k pairs per prompt): an n = 1 estimate with k times the data.

``EvalSpec`` is the run config's ``eval:`` section, checked once at construction.

numpy and the reward spec; no vllm (the sampler is passed in).
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data.atomic import atomic_write_json, atomic_write_jsonl
from ..data.seeds import EVAL_STREAM, stream_seed
from ..ops.checks import check_int, check_number, check_str
from .eval_records import Baseline, EvalResult, as_baseline
from .rewards.spec import RewardSpec
from .samples import Sample
from .win_rates import compare_with_baseline, outcome, sigmoid

__all__ = [
    "SELECTS",
    "Baseline",
    "EvalResult",
    "EvalSpec",
    "JudgedSamples",
    "evaluate",
    "evaluate_row",
    "make_baseline",
    "sample_and_judge",
]

SELECTS = ("judge", "all")


# ---- the one path: sample, check, judge --------------------------------------------------------
@dataclass
class JudgedSamples:
    """What ``sample_and_judge`` returns.

    Attributes:
        groups: list [P] of lists of n ``Sample`` (prompt order).
        scores: list[float] [P*n], the judge's, sample j of prompt i at ``i*n + j``; None when
            ``judge_here`` is False.
        baseline_scores: list[float] [P] of the ``baseline_texts`` (``[]`` when none given).
        generate_seconds, judge_seconds: wall times of the two calls.
    """

    groups: list[list[Sample]]
    scores: list[float] | None
    baseline_scores: list[float]
    generate_seconds: float
    judge_seconds: float

    @property
    def lengths(self) -> list[int]:
        """Response tokens of every sample, flat [P*n] (``len(Sample.response_ids)``)."""
        return [s.num_tokens for g in self.groups for s in g]


def check_judge_scores(scores: Any, count: int) -> list[float]:
    """The judge's output as ``count`` finite floats, or a ValueError saying what is wrong."""
    if isinstance(scores, (str, bytes)) or not hasattr(scores, "__len__"):
        raise ValueError(f"judge must return a list of floats, got {type(scores).__name__}")
    scores = list(scores)
    if len(scores) != count:
        raise ValueError(f"judge returned {len(scores)} scores for {count} responses")
    out = []
    for i, v in enumerate(scores):
        if not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
            raise ValueError(f"judge returned a non-finite or non-numeric score at index {i}: {v!r}")
        out.append(float(v))
    return out


def check_groups(groups: Any, num_prompts: int, n: int, source: str = "policy_or_sampler") -> list[list[Sample]]:
    """``generate``'s output as P lists of n ``Sample``, or a ValueError naming ``source``."""
    if not isinstance(groups, Sequence) or len(groups) != num_prompts:
        got = len(groups) if isinstance(groups, Sequence) else type(groups).__name__
        raise ValueError(f"{source}.generate returned {got} groups for {num_prompts} prompts")
    for i, g in enumerate(groups):
        if not isinstance(g, Sequence) or len(g) != n or not all(isinstance(s, Sample) for s in g):
            raise ValueError(f"{source}.generate returned a bad group for prompt {i}: want a list of {n} Sample")
    return [list(g) for g in groups]


def sample_and_judge(
    sampler: Any,
    prompts: list,
    judge: Callable[[list, list], Any] | None,
    generate_args: dict[str, Any],
    *,
    baseline_texts: Sequence[str] = (),
    source: str = "policy_or_sampler",
    judge_here: bool = True,
) -> JudgedSamples:
    """Sample ``prompts`` once, check the groups, and judge them in one call.

    Args:
        sampler: has ``generate(prompts, **generate_args)`` (``VLLMSampler``'s signature).
        prompts: list [P]. judge: ``judge(prompts, responses) -> list[float]``, called once on the
            P*n samples (each with its prompt) followed by ``baseline_texts`` (one per prompt);
            None scores every sample 0.0 (a loop run without a judge).
        generate_args: ``generate``'s keyword arguments, passed as given; ``n`` among them.
        source: how errors name the sampler.
        judge_here: False samples only (under torchrun every rank samples, rank 0 alone judges).
    Raises:
        ValueError: a sampler output of the wrong shape (naming ``source``), a judge returning
        the wrong count or a non-finite or non-numeric score.
    """
    n = generate_args["n"]
    t0 = time.perf_counter()
    groups = check_groups(sampler.generate(prompts, **generate_args), len(prompts), n, source)
    t1 = time.perf_counter()
    if not judge_here:
        return JudgedSamples(groups, None, [], t1 - t0, 0.0)
    judged_prompts = [p for p in prompts for _ in range(n)]
    if baseline_texts:
        judged_prompts += prompts
    texts = [s.text for g in groups for s in g] + list(baseline_texts)
    if judge is None:
        scores = [0.0] * len(texts)
    else:
        scores = check_judge_scores(judge(judged_prompts, texts), len(texts))
    t2 = time.perf_counter()
    count = len(prompts) * n
    return JudgedSamples(groups, scores[:count], scores[count:], t1 - t0, t2 - t1)


# ---- the public evaluation -----------------------------------------------------------------------
def make_baseline(
    sampler: Any,
    prompts: Sequence[Any],
    *,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    stop: str | Sequence[str] | None = None,
    seed: int = 0,
) -> Baseline:
    """One response per prompt from ``sampler`` (e.g. the start policy's, before training),
    as a ``Baseline`` remembering its prompts. Cache it with ``Baseline.save``."""
    if not callable(getattr(sampler, "generate", None)):
        raise ValueError(f"sampler must have a generate method (a VLLMSampler), got {type(sampler).__name__}")
    prompts = list(prompts)
    groups = sampler.generate(
        prompts,
        n=1,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        stop=stop,
        seed=seed,
        logprobs=False,
    )
    return Baseline.from_samples(check_groups(groups, len(prompts), 1), prompts)


def _check_evaluate_args(policy_or_sampler, prompts, judge, n, select, temperature) -> list:
    if not callable(getattr(policy_or_sampler, "generate", None)):
        raise ValueError(
            "policy_or_sampler must have VLLMSampler.generate's signature, "
            f"got {type(policy_or_sampler).__name__} without a generate method"
        )
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of prompts")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if select not in SELECTS:
        raise ValueError(f"select must be one of {SELECTS}, got {select!r}")
    if n > 1 and temperature == 0:
        raise ValueError(f"temperature=0 with n={n} draws {n} equal samples; use temperature > 0 or n=1")
    if not callable(judge):
        raise ValueError(f"judge must be callable as judge(prompts, responses), got {type(judge).__name__}")
    return list(prompts)


def _pair_record(i, j, sample, prompt, policy, base, base_text, candidates) -> dict[str, Any]:
    """One compared pair's JSON-able record (``EvalResult.records``)."""
    rec = {
        "prompt_index": i,
        "sample_index": j,
        "prompt": prompt,
        "response": sample.text,
        "response_length": policy["length"],
        "finish_reason": sample.finish_reason,
        "truncated": sample.truncated,
        "score": policy["score"],
        "baseline": base_text,
        "baseline_length": base["length"],
        "baseline_score": base["score"],
        "outcome": outcome(policy["score"], base["score"]),
        "p_win": float(sigmoid(policy["score"] - base["score"])),
    }
    if candidates is not None:
        rec["candidate_scores"], rec["candidate_lengths"] = candidates
    return rec


def evaluate(
    policy_or_sampler: Any,
    baseline: Any,
    prompts: Sequence[Any],
    judge: Callable[[list, list], Any],
    *,
    n: int = 1,
    select: str = "judge",
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    stop: str | Sequence[str] | None = None,
    seed: int = 0,
    baseline_lengths: Sequence[float] | None = None,
) -> EvalResult:
    """Sample the policy on ``prompts``, judge it against ``baseline``, and report win rates.

    Args:
        policy_or_sampler: anything with ``VLLMSampler.generate``'s signature (the live sampler,
            holding the current policy's weights); called once with ``n``, ``temperature``,
            ``top_p``, ``max_new_tokens``, ``stop``, ``seed`` and ``logprobs=False``.
        baseline: one response per prompt: a ``Baseline``, a list of ``Sample`` (or ``generate``'s
            n=1 output), or a list of str with ``baseline_lengths`` (tokens).
        prompts: list [P] of prompts as the sampler and the judge take them (str or chat messages).
        judge: ``judge(prompts, responses) -> list[float]`` (any reward); called once on the P*n
            policy samples followed by the P baseline responses, so its batching sees them all.
        n: samples per prompt (>= 1). select: "judge" keeps each prompt's highest-scored sample
            (best-of-n; the first on ties); "all" compares every sample with the baseline.
        temperature, top_p, max_new_tokens, stop, seed: passed to ``generate``. Use a seed other
            than the baseline's when the policy may equal the baseline's policy, or the two draws
            coincide (every prompt a tie, win rate exactly 0.5).
        baseline_lengths: only with a list-of-str baseline.
    Returns:
        ``EvalResult``. Lengths are response tokens, ``len(Sample.response_ids)`` (the final EOS
        included when the response stopped on it, as in the baseline's Samples). Truncated
        responses are compared as they are (the user would see them) and counted in
        ``truncated_rate``.
    Raises:
        ValueError naming the argument: no ``generate``, empty prompts, n < 1, an unknown select,
        n > 1 with temperature 0 (n equal samples), a baseline of the wrong size or of other
        prompts, a sampler output of the wrong shape, a judge returning the wrong count or a
        non-finite score.
    """
    prompts = _check_evaluate_args(policy_or_sampler, prompts, judge, n, select, temperature)
    base = as_baseline(baseline, baseline_lengths, len(prompts))
    if base.prompts is not None and base.prompts != prompts:
        first = next(i for i, (a, b) in enumerate(zip(base.prompts, prompts)) if a != b)
        raise ValueError(
            f"baseline answers other prompts (first difference at prompt {first}): regenerate it for these prompts"
        )
    args = dict(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop, seed=seed)
    judged = sample_and_judge(policy_or_sampler, prompts, judge, {**args, "logprobs": False}, baseline_texts=base.texts)
    groups, P = judged.groups, len(prompts)
    sample_scores = [judged.scores[i * n : (i + 1) * n] for i in range(P)]
    if select == "judge":
        pairs = [(i, int(np.argmax(sample_scores[i]))) for i in range(P)]  # (prompt_index, sample_index)
    else:
        pairs = [(i, j) for i in range(P) for j in range(n)]
    policy = [{"score": sample_scores[i][j], "length": groups[i][j].num_tokens} for i, j in pairs]
    baseline_side = [{"score": judged.baseline_scores[i], "length": base.lengths[i]} for i, _ in pairs]
    stats = compare_with_baseline(policy, baseline_side)
    records = []
    for (i, j), pol, bas in zip(pairs, policy, baseline_side):
        candidates = None
        if select == "judge" and n > 1:
            candidates = (list(sample_scores[i]), [c.num_tokens for c in groups[i]])
        records.append(_pair_record(i, j, groups[i][j], prompts[i], pol, bas, base.texts[i], candidates))
    return EvalResult(
        win_rate=stats["win_rate"],
        lc_win_rate=stats["lc_win_rate"],
        bt_win_rate=stats["bt_win_rate"],
        lc_bt_win_rate=stats["lc_bt_win_rate"],
        mean_response_length=float(np.mean([p["length"] for p in policy])),
        baseline_mean_response_length=float(np.mean(base.lengths)),
        sample_mean_response_length=float(np.mean(judged.lengths)),
        mean_score=float(np.mean([p["score"] for p in policy])),
        baseline_mean_score=float(np.mean(judged.baseline_scores)),
        truncated_rate=float(np.mean([groups[i][j].truncated for i, j in pairs])),
        num_prompts=P,
        n=n,
        select=select,
        generate_seconds=judged.generate_seconds,
        judge_seconds=judged.judge_seconds,
        stats=stats,
        records=records,
    )


# ---- the loop's evaluation -----------------------------------------------------------------------
def _key(key: str) -> str:
    return f"IterateConfig: {key}"


@dataclass
class EvalSpec:
    """The ``eval`` section: held-out prompts, judged after every iteration (row 0 = the start).

    Attributes:
        prompts: held-out prompts (JSONL or 'example'). num_prompts: how many (None: all).
        n: samples per held-out prompt. temperature, max_new_tokens: the evaluation's sampling
            (None: the sampler section's). judge: a reward section (None: the run's reward).
        metrics: {name: 'package.module:function'}, each (prompts, responses) -> float.
    """

    prompts: str
    num_prompts: int | None = None
    n: int = 1
    temperature: float | None = None
    max_new_tokens: int | None = None
    judge: RewardSpec | None = None
    metrics: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_str(_key("eval.prompts"), self.prompts)
        if self.num_prompts is not None:
            check_int(_key("eval.num_prompts"), self.num_prompts, 1)
        check_int(_key("eval.n"), self.n, 1)
        if self.temperature is not None:
            self.temperature = check_number(_key("eval.temperature"), self.temperature, 0.0)
        if self.max_new_tokens is not None:
            check_int(_key("eval.max_new_tokens"), self.max_new_tokens, 1)
        if self.judge is not None and not isinstance(self.judge, RewardSpec):
            raise ValueError(f"{_key('eval.judge')} must be a reward section, got {type(self.judge).__name__}")
        if not isinstance(self.metrics, dict):
            raise ValueError(f"{_key('eval.metrics')} must be a mapping, got {type(self.metrics).__name__}")
        for name, spec in self.metrics.items():
            check_str(_key(f"eval.metrics.{name}"), spec)


def row_win_rates(policy: list[dict], baseline: list[dict]) -> dict:
    """A summary row's win rates: per-sample (score, length) records against row 0's (same
    prompts and sample slots, same order), through ``compare_with_baseline``."""
    res = compare_with_baseline(policy, baseline)
    return {
        "win_rate": float(res["win_rate"]),
        "lc_win_rate": float(res["lc_win_rate"]),
        "baseline_length": sum(b["length"] for b in baseline) / len(baseline),
    }


def evaluate_row(state, r: int, prompts: list, judge, metrics: dict[str, Any]) -> dict:
    """Held-out evaluation of the live policy for summary row ``r`` (row 0 = the start policy,
    the baseline of the win rates), cached in ``run_dir/eval/row_{r}.jsonl`` + ``row_{r}.json``.

    Samples the held-out ``prompts`` from the live sampler (``state.cfg.eval``'s n, temperature
    and budget, the evaluation's own seed stream), judges them (a judge returning the wrong count
    or a non-finite score is a ValueError), computes the extra ``metrics`` (name -> fn(prompts,
    responses) -> float) and, for r > 0, the win rates against row 0. Returns the row's fields
    (also written to ``eval/row_{r}.json``).

    Under torchrun every rank takes part in the (collective) sampling; rank 0 alone judges and
    writes, the other ranks return ``{}`` (the loop waits for rank 0, then reads the file)."""
    path = state.run.eval_dir / f"row_{r}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    spec: EvalSpec = state.cfg.eval
    sampling = state.cfg.sampler.generation
    t0 = time.perf_counter()
    generate_args = dict(
        n=spec.n,
        temperature=sampling.temperature if spec.temperature is None else spec.temperature,
        top_p=sampling.top_p,
        max_new_tokens=spec.max_new_tokens or sampling.max_new_tokens,
        seed=stream_seed(state.cfg.seed, EVAL_STREAM),
        progress=state.progress and state.dist.is_main,
    )
    judged = sample_and_judge(
        state.sampler, prompts, judge, generate_args, source="sampler", judge_here=state.dist.is_main
    )
    if not state.dist.is_main:
        return {}
    groups, scores, lengths = judged.groups, judged.scores, judged.lengths
    flat_prompts = [p for p, g in zip(prompts, groups) for _ in g]
    responses = [s.text for g in groups for s in g]
    row: dict[str, Any] = {
        "judge_reward": sum(scores) / len(scores),
        "mean_response_length": sum(lengths) / len(lengths),
        "eval_samples": len(responses),
        "truncated_rate": sum(s.truncated for g in groups for s in g) / len(responses),
    }
    for name, fn in metrics.items():
        row[name] = float(fn(flat_prompts, responses))
    # one record per sample: sample j of prompt k is compared with the baseline's sample j of prompt k
    records = [{"prompt": p, "score": float(score), "length": n} for p, score, n in zip(flat_prompts, scores, lengths)]
    if r > 0:
        lines = (state.run.eval_dir / "row_0.jsonl").read_text().splitlines()
        row.update(row_win_rates(records, [json.loads(line) for line in lines]))
    row["time_eval_s"] = time.perf_counter() - t0
    atomic_write_jsonl(state.run.eval_dir / f"row_{r}.jsonl", records)
    atomic_write_json(path, row)
    return row
