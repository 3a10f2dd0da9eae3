"""The summary of a run: one row per policy (row 0 = the start policy), rebuilt at any time from
the phase markers and the evaluation caches of the run directory (``summary.jsonl``)."""

from __future__ import annotations

import json
from typing import Any

from .run_dir import RunDir

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


def _summary_row(run: RunDir, iterations: int, r: int, eval_row: dict | None) -> dict[str, Any]:
    row: dict[str, Any] = {"iteration": r}
    if eval_row:
        row.update(eval_row)
    if r < iterations and run.is_done(r, "sample"):
        info = run.done_info(r, "sample")
        row.setdefault("mean_response_length", info["response_length_mean"])
        row["sample_length_mean"] = info["response_length_mean"]
        row["time_sample_s"] = info["time_sample_s"]
        row["sample_tokens_per_s"] = info["sample_tokens_per_s"]
        if run.is_done(r, "score"):
            s = run.done_info(r, "score")
            row.update(reward_mean=s["reward_mean"], time_score_s=s["time_score_s"])
    if r > 0:
        row.update(_trained_fields(run, r - 1))
    return row


def _trained_fields(run: RunDir, i: int) -> dict[str, Any]:
    """The summary fields of the pairs and train phases of iteration ``i`` (row i + 1)."""
    p = run.done_info(i, "pairs")
    t = run.done_info(i, "train")
    extra = {k: p[k] for k in ("reference_mismatch_max", "reference_recomputed_pairs") if k in p}
    return {
        **extra,
        "pairs_kept": p.get("kept"),
        "chosen_length": p.get("mean_chosen_length"),
        "rejected_length": p.get("mean_rejected_length"),
        "pairs_length_alpha": p.get("length_alpha"),  # the pairs' shaping alpha (not train.alpha)
        "time_pairs_s": p.get("time_pairs_s"),
        "loss": t.get("loss"),
        "reward_accuracy": t.get("reward_accuracy"),
        "time_train_s": t.get("time_train_s"),
        "train_tokens_per_s": t.get("train_tokens_per_s"),
    }


def summary_rows(run: RunDir, iterations: int, last: int) -> list[dict]:
    """Rows 0..last (row r = policy_r) of a run of ``iterations``, rebuilt from the phase markers
    and evaluation caches."""
    return [_summary_row(run, iterations, r, _eval_cached(run, r)) for r in range(last + 1)]


def _eval_cached(run: RunDir, r: int) -> dict | None:
    p = run.eval_dir / f"row_{r}.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
