"""Preference pairs from scored samples: ``build_pairs`` -> (pair records, ``PairStats``).

Per prompt (a ``ScoredGroup``: the prompt, its k ``Sample`` objects, their k scores), at most one
pair: the samples are filtered (truncated ones when ``drop_truncated``, empty ones always), then
picked on the SHAPED score ``score - length_alpha * len(response tokens)``:
- ``"best_worst"`` (Storm-7B, DICE): chosen = the highest shaped score, rejected = the lowest;
- ``"best_random"``: chosen = the highest, rejected = a uniformly random valid sample whose shaped
  score is more than ``min_score_gap`` below it (seeded per prompt).
Ties go to the lowest sample index. A prompt is dropped when fewer than 2 samples are valid, or
when the shaped gap between the best and every other valid sample is <= ``min_score_gap`` (a
tie); each drop reason is counted in ``PairStats``.

Lengths are ``len(Sample.response_ids)``, the sampled tokens (a response that ended on EOS counts
it). A sample is *empty* when it has no response token, or a single token that decoded to nothing
and stopped (a lone EOS/stop token): the Trainer refuses empty responses.

``length_alpha="auto"`` (DICE): the smallest alpha >= 0 that minimizes the absolute mean length
gap ``|mean(len_chosen - len_rejected)|`` of the kept pairs. The selection of a prompt only
changes where two valid samples i, j (len_i > len_j) swap order or cross the tie threshold:
``alpha = (s_i - s_j - c) / (len_i - len_j)`` with ``c`` in {0, +min_score_gap, -min_score_gap},
in units of score per token. The grid is 0, the midpoint of every two consecutive positive
breakpoints and twice the largest one: each grid point stands for one open interval of alphas
that all make the same pairs, so scanning the grid scans every alpha >= 0 (at most
``AUTO_ALPHA_MAX_POINTS`` breakpoints are kept, evenly spaced quantiles, beyond that).
``PairStats.length_alpha`` reports the alpha used and ``length_alpha_grid`` the grid size.

Pair records are plain JSON-serializable dicts the Trainer takes (``data.tokenize_record``):
- ``prompt_input_ids``, ``chosen_input_ids``, ``rejected_input_ids``: the exact sampled ids
  (the record loader prefers them over the text keys, so training sees what was sampled, with no
  retokenization; it appends an EOS to a response that does not end with one, e.g. one cut by a
  stop string, but not to one cut by the token budget);
- ``chosen_truncated``, ``rejected_truncated``: the samples' ``truncated`` (only possible with
  ``drop_truncated=False``; the loader appends no EOS to those);
- ``prompt`` (as given in the group), ``chosen``, ``rejected`` (the samples' decoded text);
- ``chosen_length``, ``rejected_length`` (sampled response tokens), ``chosen_score``,
  ``rejected_score`` (the raw scores, not shaped), ``prompt_index`` (the group's index).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..ops.checks import check_choice
from .pair_selection import AUTO_ALPHA_MAX_POINTS, SelectionTable
from .replay import ReplaySpec
from .samples import Sample

__all__ = [
    "AUTO_ALPHA_MAX_POINTS",
    "STRATEGIES",
    "PairStats",
    "PairsSpec",
    "ScoredGroup",
    "build_pairs",
    "pairs_from_spec",
]

STRATEGIES = ("best_worst", "best_random")


def _check_prompt(prompt: Any, where: str) -> None:
    ok = isinstance(prompt, str) or (
        isinstance(prompt, (list, tuple))
        and len(prompt) > 0
        and (
            all(isinstance(m, Mapping) and "role" in m for m in prompt)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in prompt)
        )
    )
    if not ok:
        raise ValueError(
            f"{where}.prompt must be a str, a list of chat messages or a list of token ids, got {type(prompt).__name__}"
        )


@dataclass
class ScoredGroup:
    """One prompt's scored samples, the unit ``build_pairs`` turns into at most one pair.

    Attributes:
        prompt: str | list of chat messages | list[int]: the prompt as the caller knows it
            (copied to the pair record's readable ``prompt``).
        samples: list[Sample], k >= 0 samples of this prompt (all with the same ``prompt_ids``).
        scores: list[float], k finite scores, ``scores[j]`` of ``samples[j]``.

    Raises:
        ValueError naming the field on a malformed value.
    """

    prompt: Any
    samples: list[Sample]
    scores: list[float]

    def __post_init__(self) -> None:
        self.validate("group")

    def validate(self, where: str) -> None:
        """Check every field; ``where`` prefixes the messages (e.g. ``groups[3]``)."""
        _check_prompt(self.prompt, where)
        if isinstance(self.samples, (str, bytes, Mapping)) or not isinstance(self.samples, Sequence):
            raise ValueError(f"{where}.samples must be a list of Sample, got {type(self.samples).__name__}")
        for j, s in enumerate(self.samples):
            if not isinstance(s, Sample):
                raise ValueError(f"{where}.samples[{j}] must be a Sample, got {type(s).__name__}")
        if isinstance(self.scores, (str, bytes, Mapping)) or not isinstance(self.scores, Sequence):
            raise ValueError(f"{where}.scores must be a list of floats, got {type(self.scores).__name__}")
        if len(self.scores) != len(self.samples):
            raise ValueError(f"{where}.scores has {len(self.scores)} values for {len(self.samples)} samples")
        for j, v in enumerate(self.scores):
            if not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
                raise ValueError(f"{where}.scores[{j}] must be a finite number, got {v!r}")
        if any(s.prompt_ids != self.samples[0].prompt_ids for s in self.samples[1:]):
            raise ValueError(f"{where}.samples have different prompt_ids (one group per prompt)")
        self.samples = list(self.samples)
        self.scores = [float(v) for v in self.scores]


@dataclass
class PairStats:
    """What ``build_pairs`` kept and dropped (JSON-ready with ``to_dict``).

    Attributes:
        groups: prompts seen; samples: samples seen.
        kept: pairs built (one per kept prompt).
        dropped_truncated: samples dropped because truncated (``drop_truncated``).
        dropped_empty: samples dropped because empty (no token besides a lone stop token).
        dropped_too_few: prompts dropped with fewer than 2 valid samples.
        dropped_ties: prompts dropped because no valid sample is more than ``min_score_gap``
            below the best on the shaped score.
        mean_chosen_length, mean_rejected_length: mean response tokens of the kept pairs.
        mean_length_gap: mean(len_chosen - len_rejected) over the kept pairs.
        mean_chosen_score, mean_rejected_score: mean raw (unshaped) scores of the kept pairs.
            The five means are None when nothing is kept.
        length_alpha: the alpha used (float, score per token); length_alpha_auto: chosen by
            "auto"; length_alpha_grid: alphas evaluated (1 for a fixed alpha).
        strategy, min_score_gap, drop_truncated, seed: the arguments.
    """

    groups: int
    samples: int
    kept: int
    dropped_truncated: int
    dropped_empty: int
    dropped_too_few: int
    dropped_ties: int
    mean_chosen_length: float | None
    mean_rejected_length: float | None
    mean_length_gap: float | None
    mean_chosen_score: float | None
    mean_rejected_score: float | None
    length_alpha: float
    length_alpha_auto: bool
    length_alpha_grid: int
    strategy: str
    min_score_gap: float
    drop_truncated: bool
    seed: int

    @property
    def dropped(self) -> dict[str, int]:
        """Drop counts by reason: truncated/empty (samples), too_few/ties (prompts)."""
        return {
            "truncated": self.dropped_truncated,
            "empty": self.dropped_empty,
            "too_few": self.dropped_too_few,
            "ties": self.dropped_ties,
        }

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-serializable dict."""
        return asdict(self)


def _is_empty(s: Sample) -> bool:
    return s.num_tokens == 0 or (s.num_tokens == 1 and s.finish_reason == "stop" and s.text == "")


def _as_group(g: Any, i: int) -> ScoredGroup:
    where = f"groups[{i}]"
    if isinstance(g, ScoredGroup):
        g.validate(where)
        return g
    if isinstance(g, (list, tuple)) and len(g) == 3:
        prompt, samples, scores = g
        obj = ScoredGroup.__new__(ScoredGroup)
        obj.prompt, obj.samples, obj.scores = prompt, samples, scores
        obj.validate(where)
        return obj
    raise ValueError(f"{where} must be a ScoredGroup or a (prompt, samples, scores) tuple, got {type(g).__name__}")


@dataclass(frozen=True)
class PairsSpec:
    """How ``build_pairs`` picks chosen/rejected: the iterate YAML's ``pairs:`` section, checked
    here and nowhere else. ``where`` prefixes every error (``"IterateConfig: pairs."``).

    Attributes:
        strategy: "best_worst" or "best_random".
        length_alpha: float >= 0 (score per response token) or "auto" (DICE).
        drop_truncated: drop samples with ``finish_reason == "length"``.
        min_score_gap: float >= 0; a pair needs a shaped-score gap strictly above it.
    """

    strategy: str = "best_worst"
    length_alpha: float | str = 0.0
    drop_truncated: bool = True
    min_score_gap: float = 0.0
    replay: ReplaySpec | None = None  # the loop's experience replay (not an argument of build_pairs)
    where: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        w = self.where
        if self.replay is not None and not isinstance(self.replay, ReplaySpec):
            if not isinstance(self.replay, Mapping):
                raise ValueError(f"{w}replay must be a mapping {{pairs: PATH, ratio: 0.5}}, got {self.replay!r}")
            unknown = sorted(set(self.replay) - {"pairs", "ratio"})
            if unknown or "pairs" not in self.replay:
                raise ValueError(f"{w}replay needs the key pairs (and optionally ratio); got {sorted(self.replay)}")
            object.__setattr__(self, "replay", ReplaySpec(**self.replay, where=f"{w}replay."))
        check_choice(f"{w}strategy", self.strategy, STRATEGIES)
        if self.length_alpha != "auto":
            v = self.length_alpha
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{w}length_alpha must be a float >= 0 or 'auto', got {v!r}")
            object.__setattr__(self, "length_alpha", float(v))
        if not isinstance(self.drop_truncated, bool):
            raise ValueError(f"{w}drop_truncated must be a bool (true or false), got {self.drop_truncated!r}")
        v = self.min_score_gap
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{w}min_score_gap must be a finite float >= 0, got {v!r}")
        object.__setattr__(self, "min_score_gap", float(v))

    def to_dict(self) -> dict[str, Any]:
        """The section as the YAML has it (``replay`` only when set, as older runs recorded it)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("where", "replay")}
        if self.replay is not None:
            out["replay"] = self.replay.to_dict()
        return out


def build_pairs(
    groups: Sequence[ScoredGroup | tuple],
    *,
    strategy: str = "best_worst",
    length_alpha: float | str = 0.0,
    drop_truncated: bool = True,
    min_score_gap: float = 0.0,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], PairStats]:
    """At most one preference pair per prompt from scored samples (see the module docstring).

    Args:
        groups: sequence of ``ScoredGroup`` or ``(prompt, list[Sample], list[float])`` tuples,
            one per prompt.
        strategy, length_alpha, drop_truncated, min_score_gap: the ``PairsSpec`` fields.
        seed: int; "best_random" draws per prompt from (seed, prompt index): deterministic.

    Returns:
        (pairs, stats): ``pairs`` a list of JSON-serializable record dicts in group order (keys in
        the module docstring), ``stats`` a ``PairStats``.

    Raises:
        ValueError naming the argument (``groups[i].scores[j]`` etc.) on bad input.
    """
    spec = PairsSpec(strategy, length_alpha, drop_truncated, min_score_gap)
    return pairs_from_spec(groups, spec, seed)


def pairs_from_spec(
    groups: Sequence[ScoredGroup | tuple], spec: PairsSpec, seed: int
) -> tuple[list[dict[str, Any]], PairStats]:
    """``build_pairs`` with its options already checked (the loop's pairs phase)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if isinstance(groups, (str, bytes, Mapping)) or not isinstance(groups, Sequence):
        raise ValueError(
            f"groups must be a list of ScoredGroup or (prompt, samples, scores), got {type(groups).__name__}"
        )
    groups = [_as_group(g, i) for i, g in enumerate(groups)]
    cands, dropped = _candidates(groups, spec.drop_truncated)
    table = SelectionTable(cands, groups, seed)
    alpha, n_grid = table.choose_alpha(spec.length_alpha, spec.strategy, spec.min_score_gap)
    pairs: list[dict[str, Any]] = []
    if cands:
        best, worst, kept = table.select(alpha, spec.strategy, spec.min_score_gap)
        for r, (gi, _) in enumerate(cands):
            if kept[r]:
                wi, li = int(table.index[r, best[r]]), int(table.index[r, worst[r]])
                pairs.append(_pair_record(groups[gi], gi, wi, li))
    stats = _pair_stats(groups, pairs, dropped, len(cands), spec, seed, alpha=alpha, n_grid=n_grid)
    return pairs, stats


def _candidates(groups: list[ScoredGroup], drop_truncated: bool) -> tuple[list[tuple[int, list[int]]], dict]:
    """(group index, valid sample indices) of the prompts with >= 2 valid samples, and the drop
    counts (truncated and empty samples, prompts with too few)."""
    dropped = {"truncated": 0, "empty": 0, "too_few": 0}
    cands: list[tuple[int, list[int]]] = []
    for gi, g in enumerate(groups):
        valid = []
        for j, s in enumerate(g.samples):
            if drop_truncated and s.truncated:
                dropped["truncated"] += 1
            elif _is_empty(s):
                dropped["empty"] += 1
            else:
                valid.append(j)
        if len(valid) < 2:
            dropped["too_few"] += 1
        else:
            cands.append((gi, valid))
    return cands, dropped


def _pair_record(g: ScoredGroup, gi: int, wi: int, li: int) -> dict[str, Any]:
    sw, sl = g.samples[wi], g.samples[li]
    prompt = g.prompt if isinstance(g.prompt, str) else [dict(m) if isinstance(m, Mapping) else m for m in g.prompt]
    return {
        "prompt": prompt,
        "chosen": sw.text,
        "rejected": sl.text,
        "prompt_input_ids": list(sw.prompt_ids),
        "chosen_input_ids": list(sw.response_ids),
        "rejected_input_ids": list(sl.response_ids),
        "chosen_length": sw.num_tokens,
        "rejected_length": sl.num_tokens,
        # a truncated sample never produced an EOS: training must not score one
        "chosen_truncated": sw.truncated,
        "rejected_truncated": sl.truncated,
        "chosen_score": g.scores[wi],
        "rejected_score": g.scores[li],
        "prompt_index": gi,
    }


def _pair_stats(groups, pairs, dropped: dict, n_cands: int, spec: PairsSpec, seed: int, *, alpha, n_grid) -> PairStats:
    def mean(key: str) -> float | None:
        return sum(p[key] for p in pairs) / len(pairs) if pairs else None

    gaps = [p["chosen_length"] - p["rejected_length"] for p in pairs]
    return PairStats(
        groups=len(groups),
        samples=sum(len(g.samples) for g in groups),
        kept=len(pairs),
        dropped_truncated=dropped["truncated"],
        dropped_empty=dropped["empty"],
        dropped_too_few=dropped["too_few"],
        dropped_ties=n_cands - len(pairs),
        mean_chosen_length=mean("chosen_length"),
        mean_rejected_length=mean("rejected_length"),
        mean_length_gap=sum(gaps) / len(gaps) if gaps else None,
        mean_chosen_score=mean("chosen_score"),
        mean_rejected_score=mean("rejected_score"),
        length_alpha=alpha,
        length_alpha_auto=spec.length_alpha == "auto",
        length_alpha_grid=n_grid,
        strategy=spec.strategy,
        min_score_gap=spec.min_score_gap,
        drop_truncated=spec.drop_truncated,
        seed=seed,
    )
