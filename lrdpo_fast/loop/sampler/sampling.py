"""One ``generate`` call's vLLM requests (one per sample, each seeded) and its results as
``Sample`` records, merged across ranks in prompt order."""

from __future__ import annotations

import math
from typing import Any

from ..samples import Sample
from .prompts import request_seed
from .specs import GenerationSpec


def sampling_requests(
    indices: list[int], ids: list[list[int]], spec: GenerationSpec, seed: int, max_model_len: int
) -> tuple[list[dict], list[Any], list[tuple[int, int]]]:
    """(requests, SamplingParams, (prompt, sample) keys) for prompts ``indices``: ``spec.n``
    requests each, seeded by ``request_seed(seed, prompt, sample)``, capped by the room that
    ``max_model_len`` leaves after the prompt."""
    from vllm import SamplingParams

    requests, params, keys = [], [], []
    for i in indices:
        room = max_model_len - len(ids[i])
        for j in range(spec.n):
            requests.append({"prompt_token_ids": ids[i]})
            params.append(
                SamplingParams(
                    n=1,
                    temperature=float(spec.temperature),
                    top_p=float(spec.top_p),
                    max_tokens=min(spec.max_new_tokens, room),
                    stop=None if spec.stop is None else list(spec.stop),
                    seed=request_seed(seed, i, j),
                    logprobs=0 if spec.logprobs else None,
                )
            )
            keys.append((i, j))
    return requests, params, keys


def to_sample(prompt: list[int], o, i: int, j: int, logprobs: bool) -> Sample:
    """One vLLM completion as a ``Sample``; RuntimeError on a non-finite log-prob or an
    unexpected finish reason."""
    ids = [int(t) for t in o.token_ids]
    lps = None
    if logprobs:
        lps = [float(step[t].logprob) for step, t in zip(o.logprobs, ids)]
        bad = [k for k, v in enumerate(lps) if not math.isfinite(v)]
        if bad:
            raise RuntimeError(
                f"the engine returned a non-finite log-prob for prompts[{i}], sample {j}, token {bad[0]}"
            )
    if o.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"prompts[{i}] sample {j} ended with finish_reason={o.finish_reason!r}")
    return Sample(
        prompt_ids=list(prompt),
        response_ids=ids,
        text=o.text,
        finish_reason=o.finish_reason,
        truncated=o.finish_reason == "length",
        logprobs=lps,
    )
