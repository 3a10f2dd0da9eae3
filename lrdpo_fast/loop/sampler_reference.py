"""``train.reference: sampler``: the pairs' reference log-probs from the sampling engine itself.

In iteration i the sampler serves policy_i, which is also the reference policy_{i+1} trains
against, so the engine's log-prob of every sampled token (``generate(..., logprobs=True)``,
stored in samples.jsonl) already sums to the reference of that response: no reference pass.

It holds only where the two are the same numbers:
- the engine's log-probs are of the model's own distribution: vLLM's ``raw_logprobs`` (its
  default: before temperature and top-p/top-k), or processed ones at temperature 1 and top-p 1
  (``check_distribution``); the engine runs in float32 (``IterateConfig`` refuses another dtype);
- the trained tokens are exactly the sampled ones: a pair whose tokenized example differs (a
  truncation by ``train.max_length``/``max_prompt_length``, an EOS the loader appends after a
  stop string) is recomputed by the usual pass, and counted (``reference_recomputed_pairs``);
- plain sums (no LD-DPO weights, no live reference, not SimPO: ``TrainConfig`` refuses those).

Every pairs phase measures the mismatch: the first ``SPOT_CHECK_PAIRS`` pairs are also recomputed
and the largest difference of a sequence's sum is recorded (``reference_mismatch_max``, in the
summary rows); past ``MISMATCH_TOLERANCE`` the phase stops with ``ReferenceMismatchError``
(nothing trains on a wrong reference).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .pairs import ScoredGroup

RAW_MODES = ("raw_logprobs",)
SPOT_CHECK_PAIRS = 4
# nats per summed sequence; float32 on the CPU measures ~1e-5 per 64-token response (see the
# README's loop section), a wrong policy or a shifted token 0.1-10
MISMATCH_TOLERANCE = 1e-2
FLOAT32 = (torch.float32, "float32", "float")


class ReferenceMismatchError(RuntimeError):
    """The engine's log-prob sums differ from the recomputed reference by more than the tolerance."""


def check_distribution(logprobs_mode: str, temperature: float, top_p: float) -> None:
    """Refuse engine log-probs that are not policy_i's own distribution (ValueError saying why)."""
    if logprobs_mode in RAW_MODES:
        return
    if logprobs_mode != "processed_logprobs":
        raise ValueError(
            f"train.reference='sampler' needs the engine's log-probs; its logprobs_mode is {logprobs_mode!r}"
        )
    if temperature != 1 or top_p != 1:
        raise ValueError(
            f"train.reference='sampler': the engine returns processed log-probs (logprobs_mode={logprobs_mode!r}), "
            f"which sampler.temperature={temperature} / top_p={top_p} changed from policy_i's distribution; "
            "use temperature 1 and top_p 1, vLLM's raw_logprobs, or train.reference='recompute'"
        )


def check_engine_dtype(dtype: Any) -> None:
    """Refuse an engine that does not run in float32 (its sums would not match the fp32 pass)."""
    if dtype not in FLOAT32:
        raise ValueError(
            f"train.reference='sampler' needs sampler.dtype: float32 (the engine runs {dtype}); its log-probs "
            "must match the float32 reference pass"
        )


def _find(group: ScoredGroup, response_ids: list[int]):
    for s in group.samples:
        if s.response_ids == response_ids and s.logprobs is not None:
            return s
    return None


def sampler_sums(groups: Sequence[ScoredGroup], pairs: Sequence[dict], examples: Sequence[Any]) -> list:
    """Per pair: (chosen, rejected) sums of the engine's log-probs, or None where the trained
    tokens are not exactly the sampled ones (that pair needs the recomputed pass)."""
    out: list = []
    for rec, ex in zip(pairs, examples):
        k = rec.get("prompt_index")
        if rec.get("origin") == "replay" or not isinstance(k, int) or not 0 <= k < len(groups):
            out.append(None)  # an offline (replayed) pair: not sampled in this iteration
            continue
        group = groups[k]
        sums = []
        for side, ids in (("chosen", ex.chosen_ids), ("rejected", ex.rejected_ids)):
            s = _find(group, rec[f"{side}_input_ids"])
            if s is None or s.prompt_ids != ex.prompt_ids or s.response_ids != ids:
                break
            sums.append(math.fsum(s.logprobs))
        out.append(tuple(sums) if len(sums) == 2 else None)
    return out


def attach_sampler_reference(
    examples: list, sums: list, recompute: Callable[[list], list], spot_check: int = SPOT_CHECK_PAIRS
) -> tuple[list, dict]:
    """The examples with their reference sums: the engine's where ``sums`` has them, ``recompute``
    (the usual pass over a list of examples) for the rest and for the first ``spot_check`` pairs,
    which measure the mismatch. Returns (examples, info for the pairs marker)."""
    have = [k for k, s in enumerate(sums) if s is not None]
    redo = [k for k, s in enumerate(sums) if s is None]
    check = have[:spot_check]
    recomputed = recompute([examples[k] for k in redo + check]) if redo or check else []
    by_index = dict(zip(redo + check, recomputed))
    worst = 0.0
    out = []
    for k, ex in enumerate(examples):
        if sums[k] is None:
            out.append(by_index[k])
            continue
        if k in by_index:
            ref = by_index[k]
            for got, want in zip(sums[k], (ref.ref_chosen_logps, ref.ref_rejected_logps)):
                worst = max(worst, abs(got - float(want)))
        out.append(dataclasses.replace(ex, ref_chosen_logps=sums[k][0], ref_rejected_logps=sums[k][1]))
    if worst > MISMATCH_TOLERANCE:
        raise ReferenceMismatchError(
            f"train.reference='sampler': the engine's log-prob sums differ from the recomputed reference by "
            f"{worst:.3g} nats (tolerance {MISMATCH_TOLERANCE}); the engine does not serve policy_i in float32 "
            "(use train.reference='recompute')"
        )
    info = {
        "reference": "sampler",
        "reference_recomputed_pairs": len(redo),
        "reference_checked_pairs": len(check),
        "reference_mismatch_max": worst if check else None,
    }
    return out, info
