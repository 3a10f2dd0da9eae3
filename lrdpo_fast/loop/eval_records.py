"""What the evaluation compares with and what it returns: ``Baseline`` (one response per prompt,
cached as JSONL) and ``EvalResult`` (``evaluate``'s win rates, lengths and per-pair records).

numpy only (no torch, no vllm).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .samples import Sample
from .win_rates import check_vector

__all__ = ["Baseline", "EvalResult", "as_baseline"]


# ---- the baseline ------------------------------------------------------------------------------
@dataclass
class Baseline:
    """The responses the policy is compared with, one per prompt (e.g. the start policy's).

    Attributes:
        texts: list[str] [P], the responses (what the judge reads).
        lengths: list[float] [P], their lengths in response tokens (``len(Sample.response_ids)``),
            >= 0.
        prompts: list [P] of the prompts they answer, or None; when set, ``evaluate`` checks that
            it is given the same prompts (a stale cache fails loudly).
        truncated: list[bool] [P] or None: whether each was cut by the token budget.

    Raises:
        ValueError naming the field: mismatched counts, a text not a str, a bad length.
    """

    texts: list[str]
    lengths: list[float]
    prompts: list[Any] | None = None
    truncated: list[bool] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.texts, (str, bytes)) or not isinstance(self.texts, Sequence):
            raise ValueError(f"texts must be a list of str, got {type(self.texts).__name__}")
        self.texts = list(self.texts)
        bad = next((i for i, t in enumerate(self.texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise ValueError(f"texts[{bad}] must be a str, got {type(self.texts[bad]).__name__}")
        if not self.texts:
            raise ValueError("texts is empty")
        lengths = check_vector("lengths", self.lengths, nonnegative=True)
        if lengths.size != len(self.texts):
            raise ValueError(f"lengths has {lengths.size} entries for {len(self.texts)} texts: one per response")
        self.lengths = [int(v) if float(v).is_integer() else float(v) for v in lengths]
        for name in ("prompts", "truncated"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != len(self.texts):
                    raise ValueError(f"{name} must be None or a list of {len(self.texts)} entries (one per response)")
                setattr(self, name, list(value))
        if self.truncated is not None and not all(isinstance(t, bool) for t in self.truncated):
            raise ValueError("truncated must hold bools")

    def __len__(self) -> int:
        return len(self.texts)

    @classmethod
    def from_samples(
        cls, samples: Sequence[Sample | Sequence[Sample]], prompts: Sequence[Any] | None = None
    ) -> Baseline:
        """From one ``Sample`` per prompt, or from ``VLLMSampler.generate(..., n=1)``'s output
        (a list of one-Sample lists). Lengths are ``len(response_ids)``."""
        flat = []
        for i, s in enumerate(samples):
            if not isinstance(s, Sample):
                if isinstance(s, Sequence) and len(s) == 1 and isinstance(s[0], Sample):
                    s = s[0]
                else:
                    raise ValueError(f"samples[{i}] must be a Sample or a list of exactly one Sample")
            flat.append(s)
        return cls(
            [s.text for s in flat],
            [s.num_tokens for s in flat],
            None if prompts is None else list(prompts),
            [s.truncated for s in flat],
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSONL (one ``{"prompt_index", "prompt", "text", "length", "truncated"}`` line
        per response), renamed into place. Returns the path."""
        path = Path(path)
        lines = []
        for i, (t, n) in enumerate(zip(self.texts, self.lengths)):
            rec = {
                "prompt_index": i,
                "prompt": None if self.prompts is None else self.prompts[i],
                "text": t,
                "length": n,
                "truncated": None if self.truncated is None else self.truncated[i],
            }
            lines.append(json.dumps(rec, ensure_ascii=True, allow_nan=False) + "\n")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(lines), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Baseline:
        """Read a ``save`` file back. Raises ValueError naming the line on a malformed record."""
        recs = []
        for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if rec.get("prompt_index") != len(recs):
                    raise ValueError(f"prompt_index {rec.get('prompt_index')!r} out of order")
                recs.append((rec["text"], rec["length"], rec.get("prompt"), rec.get("truncated")))
            except (ValueError, KeyError, AttributeError) as e:
                raise ValueError(f"{path}:{lineno}: {e!r}") from e
        prompts = [r[2] for r in recs]
        truncated = [r[3] for r in recs]
        return cls(
            [r[0] for r in recs],
            [r[1] for r in recs],
            None if any(p is None for p in prompts) else prompts,
            None if any(t is None for t in truncated) else truncated,
        )


def as_baseline(baseline: Any, baseline_lengths: Any, num_prompts: int) -> Baseline:
    if isinstance(baseline, Baseline):
        if baseline_lengths is not None:
            raise ValueError("baseline_lengths must be None when baseline is a Baseline (it carries its lengths)")
        out = baseline
    elif isinstance(baseline, (str, bytes)) or not isinstance(baseline, Sequence):
        raise ValueError(
            f"baseline must be a Baseline, a list of Samples or a list of str, got {type(baseline).__name__}"
        )
    elif len(baseline) and all(isinstance(b, str) for b in baseline):
        if baseline_lengths is None:
            raise ValueError("baseline_lengths is required when baseline is a list of str (response tokens each)")
        out = Baseline(list(baseline), baseline_lengths)
    else:
        if baseline_lengths is not None:
            raise ValueError("baseline_lengths must be None when baseline holds Samples (they carry their lengths)")
        try:
            out = Baseline.from_samples(baseline)
        except ValueError as e:
            raise ValueError(f"baseline: {e}") from None
    if len(out) != num_prompts:
        raise ValueError(f"baseline has {len(out)} responses for {num_prompts} prompts: one per prompt")
    return out


# ---- evaluation --------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """What ``evaluate`` measured on P prompts.

    Scalars (floats unless said): ``win_rate``, ``lc_win_rate``, ``bt_win_rate``,
    ``lc_bt_win_rate`` (in [0, 1], see ``lc_win_rate``); ``mean_response_length`` (tokens, of the
    compared policy responses: the selected one per prompt under select="judge", every sample under
    "all"); ``baseline_mean_response_length`` (tokens); ``sample_mean_response_length`` (tokens,
    every one of the n samples: best-of-n's pull toward length shows as the gap to
    ``mean_response_length``); ``mean_score``, ``baseline_mean_score`` (judge); ``truncated_rate``
    (share of compared policy responses cut by max_new_tokens); ``num_prompts``, ``n`` (ints),
    ``select`` (str); ``generate_seconds``, ``judge_seconds``.
    ``stats``: the full ``lc_win_rate`` dict (coefficients, wins/ties/losses, ...).
    ``records``: one JSON-able dict per compared pair (``write_records``): prompt_index,
    sample_index, prompt, response, response_length, finish_reason, truncated, score, baseline,
    baseline_length, baseline_score, outcome (1 / 0.5 / 0), p_win (sigmoid of the score gap) and,
    for best-of-n, candidate_scores and candidate_lengths.
    """

    win_rate: float
    lc_win_rate: float
    bt_win_rate: float
    lc_bt_win_rate: float
    mean_response_length: float
    baseline_mean_response_length: float
    sample_mean_response_length: float
    mean_score: float
    baseline_mean_score: float
    truncated_rate: float
    num_prompts: int
    n: int
    select: str
    generate_seconds: float
    judge_seconds: float
    stats: dict[str, Any] = field(repr=False)
    records: list[dict[str, Any]] = field(repr=False)

    def summary(self) -> dict[str, Any]:
        """The scalars, for a summary/metrics row (JSON-able; no records)."""
        return {
            k: getattr(self, k)
            for k in (
                "win_rate",
                "lc_win_rate",
                "bt_win_rate",
                "lc_bt_win_rate",
                "mean_response_length",
                "baseline_mean_response_length",
                "sample_mean_response_length",
                "mean_score",
                "baseline_mean_score",
                "truncated_rate",
                "num_prompts",
                "n",
                "select",
                "generate_seconds",
                "judge_seconds",
            )
        }

    def write_records(self, path: str | os.PathLike) -> Path:
        """Write ``records`` as JSONL (one line per compared pair), renamed into place."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(
            "".join(json.dumps(r, ensure_ascii=True, allow_nan=False) + "\n" for r in self.records), encoding="utf-8"
        )
        os.replace(tmp, path)
        return path
