"""Held-out evaluation of the live policy, once per summary row (row 0 = the start policy, the
baseline of the win rates), cached in ``run_dir/eval/row_{r}.jsonl`` + ``row_{r}.json``."""

from __future__ import annotations

import time
from typing import Any

from ..data.atomic import atomic_write_json, atomic_write_jsonl
from ..data.seeds import EVAL_STREAM, stream_seed
from .config import EvalSpec


def evaluate_row(st, r: int, prompts: list, judge, metrics: dict[str, Any]) -> dict:
    """Sample the held-out ``prompts`` from the live sampler, judge them, compute the extra
    ``metrics`` (name -> fn(prompts, responses) -> float) and, for r > 0, the win rates against
    row 0. Returns the row's fields (also written to ``eval/row_{r}.json``).

    Under torchrun every rank takes part in the (collective) sampling; rank 0 alone judges and
    writes, the other ranks return ``{}`` (the loop waits for rank 0, then reads the file)."""
    path = st.run.eval_dir / f"row_{r}.json"
    if path.is_file():
        import json

        return json.loads(path.read_text(encoding="utf-8"))
    ev: EvalSpec = st.cfg.eval
    sc = st.cfg.sampler.generation
    t0 = time.perf_counter()
    groups = st.sampler.generate(
        prompts,
        n=ev.n,
        temperature=sc.temperature if ev.temperature is None else ev.temperature,
        top_p=sc.top_p,
        max_new_tokens=ev.max_new_tokens or sc.max_new_tokens,
        seed=stream_seed(st.cfg.seed, EVAL_STREAM),
        progress=st.progress and st.dist.is_main,
    )
    if not st.dist.is_main:
        return {}
    flat_p = [p for p, g in zip(prompts, groups) for _ in g]
    flat_r = [s.text for g in groups for s in g]
    lengths = [s.num_tokens for g in groups for s in g]
    scores = judge(flat_p, flat_r) if judge is not None else [0.0] * len(flat_r)
    row: dict[str, Any] = {
        "judge_reward": sum(scores) / len(scores),
        "mean_response_length": sum(lengths) / len(lengths),
        "eval_samples": len(flat_r),
        "truncated_rate": sum(s.truncated for g in groups for s in g) / len(flat_r),
    }
    for name, fn in metrics.items():
        row[name] = float(fn(flat_p, flat_r))
    # one record per sample: sample j of prompt k is compared with the baseline's sample j of prompt k
    per_prompt = [{"prompt": p, "score": float(sc), "length": n} for p, sc, n in zip(flat_p, scores, lengths)]
    if r > 0:
        import json

        base = [json.loads(line) for line in (st.run.eval_dir / "row_0.jsonl").read_text().splitlines()]
        row.update(win_rates(per_prompt, base))
    row["time_eval_s"] = time.perf_counter() - t0
    atomic_write_jsonl(st.run.eval_dir / f"row_{r}.jsonl", per_prompt)
    atomic_write_json(path, row)
    return row


def win_rates(policy: list[dict], baseline: list[dict]) -> dict:
    """Win rate and length-controlled win rate of per-sample (score, length) records against the
    baseline's (same prompts and sample slots, same order), with ``evaluate.lc_win_rate``."""
    from .evaluate import lc_win_rate

    res = lc_win_rate(
        [p["score"] for p in policy],
        [b["score"] for b in baseline],
        [p["length"] for p in policy],
        [b["length"] for b in baseline],
    )
    return {
        "win_rate": float(res["win_rate"]),
        "lc_win_rate": float(res["lc_win_rate"]),
        "baseline_length": sum(b["length"] for b in baseline) / len(baseline),
    }
