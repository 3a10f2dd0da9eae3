"""What a sampler hands to the rest of the loop: ``Sample`` and its JSONL form.

A ``Sample`` is one sampled response to one prompt (token ids, decoded text, why it ended, and
optionally the policy's log-prob of every generated token). ``to_record``/``from_record`` turn it
into a JSON-able dict and back, and ``write_samples``/``read_samples`` store the per-prompt lists
``VLLMSampler.generate`` returns as ``samples.jsonl``: one line per sample, prompt-major, with its
``prompt_index`` and ``sample_index`` (the loop's sample phase adds each prompt and where it was
drawn from). Writing what was read gives the same bytes (floats are written with Python's
shortest round-trip repr, keys in a fixed order).

This module does not import vllm.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.atomic import atomic_write_jsonl

FINISH_REASONS = ("stop", "length")
RECORD_KEYS = ("prompt_ids", "response_ids", "text", "finish_reason", "truncated", "logprobs")


def _ids(value: Any, name: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name} must be a list of int token ids, got {type(value).__name__}")
    if any(v < 0 for v in value):
        raise ValueError(f"{name} holds a negative token id")
    return [int(v) for v in value]


@dataclass
class Sample:
    """One sampled response.

    Attributes:
        prompt_ids: list[int], the prompt's token ids as the engine saw them (the chat template
            rendered with its generation prompt, or BOS + the text's tokens).
        response_ids: list[int], the generated token ids, [T] with T >= 0. When the response
            ended on EOS (or another stop token id) that token is the last one; a response cut by
            a stop string keeps the tokens that produced it.
        text: str, the decoded response (special tokens skipped, a matched stop string removed).
        finish_reason: "stop" (EOS, a stop token or a stop string) or "length" (cut off).
        truncated: bool, True when the response was cut by ``max_new_tokens`` (or by the
            engine's ``max_model_len``) before it stopped: exactly ``finish_reason == "length"``.
        logprobs: list[float] of length T, the policy's log-prob (natural log, temperature 1,
            before top-p) of each generated token, or None when not requested.

    Raises:
        ValueError naming the field on a malformed value (wrong type, unknown finish reason,
        ``truncated`` disagreeing with it, logprobs of the wrong length or not finite).
    """

    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    finish_reason: str
    truncated: bool
    logprobs: list[float] | None = None

    def __post_init__(self) -> None:
        self.prompt_ids = _ids(self.prompt_ids, "prompt_ids")
        self.response_ids = _ids(self.response_ids, "response_ids")
        if not isinstance(self.text, str):
            raise ValueError(f"text must be a str, got {type(self.text).__name__}")
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}, got {self.finish_reason!r}")
        if not isinstance(self.truncated, bool):
            raise ValueError(f"truncated must be a bool, got {type(self.truncated).__name__}")
        if self.truncated != (self.finish_reason == "length"):
            raise ValueError(f"truncated={self.truncated} disagrees with finish_reason={self.finish_reason!r}")
        if self.logprobs is not None:
            if not isinstance(self.logprobs, (list, tuple)):
                raise ValueError(f"logprobs must be a list of floats or None, got {type(self.logprobs).__name__}")
            if len(self.logprobs) != len(self.response_ids):
                raise ValueError(
                    f"logprobs has {len(self.logprobs)} values for {len(self.response_ids)} response tokens"
                )
            values = []
            for i, v in enumerate(self.logprobs):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"logprobs[{i}] must be a finite float, got {v!r}")
                values.append(float(v))
            self.logprobs = values

    @property
    def num_tokens(self) -> int:
        """Number of generated tokens, ``len(response_ids)``."""
        return len(self.response_ids)

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict with the six fields (in ``RECORD_KEYS`` order)."""
        return {
            "prompt_ids": list(self.prompt_ids),
            "response_ids": list(self.response_ids),
            "text": self.text,
            "finish_reason": self.finish_reason,
            "truncated": self.truncated,
            "logprobs": None if self.logprobs is None else list(self.logprobs),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Sample:
        """The ``Sample`` of a ``to_record`` dict; other keys (e.g. prompt_index, a reward) are
        ignored. Raises ValueError naming a missing or malformed field."""
        if not isinstance(record, Mapping):
            raise ValueError(f"record must be a mapping, got {type(record).__name__}")
        missing = [k for k in RECORD_KEYS if k not in record]
        if missing:
            raise ValueError(f"record is missing {missing}")
        return cls(**{k: record[k] for k in RECORD_KEYS})


def write_samples(
    path: str | os.PathLike,
    samples: Sequence[Sequence[Sample]],
    *,
    prompts: Sequence[Any] | None = None,
    pool_indices: Sequence[int] | None = None,
) -> Path:
    """Write per-prompt sample lists (what ``VLLMSampler.generate`` returns) to a JSONL file (the
    loop's ``samples.jsonl``).

    One line per sample, prompt-major: ``{"prompt_index", "sample_index", ["pool_index",]
    ["prompt",] <to_record fields>}`` (``pool_indices[i]``: where prompt ``i`` was drawn from;
    ``prompts[i]``: the prompt as given). Written atomically (temp file, fsync, rename), so a
    reader never sees half of it. Returns the path.
    """
    for name, extra in (("prompts", prompts), ("pool_indices", pool_indices)):
        if extra is not None and len(extra) != len(samples):
            raise ValueError(f"{name} has {len(extra)} entries for {len(samples)} prompts")
    rows = []
    for i, group in enumerate(samples):
        if isinstance(group, Sample) or not isinstance(group, Sequence):
            raise ValueError(f"samples[{i}] must be a list of Sample (one list per prompt)")
        head: dict[str, Any] = {}
        if pool_indices is not None:
            head["pool_index"] = pool_indices[i]
        if prompts is not None:
            head["prompt"] = prompts[i]
        for j, s in enumerate(group):
            if not isinstance(s, Sample):
                raise ValueError(f"samples[{i}][{j}] must be a Sample, got {type(s).__name__}")
            rows.append({"prompt_index": i, "sample_index": j, **head, **s.to_record()})
    return atomic_write_jsonl(path, rows)


def read_prompted_samples(path: str | os.PathLike) -> tuple[list[Any], list[list[Sample]]]:
    """Read a ``write_samples`` file back: (the prompts, None each when they were not written;
    per prompt, in order, its list of ``Sample``).

    Raises ValueError naming the file and line when a record is malformed or its prompt_index /
    sample_index are out of order (prompts 0..P-1, samples 0..n-1 within each)."""
    prompts: list[Any] = []
    out: list[list[Sample]] = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            i, j = rec.get("prompt_index"), rec.get("sample_index")
            if i == len(out):
                out.append([])
                prompts.append(rec.get("prompt"))
            if i != len(out) - 1 or j != len(out[-1]):
                raise ValueError(f"prompt_index/sample_index {i}/{j} out of order")
            out[-1].append(Sample.from_record(rec))
        except (ValueError, AttributeError) as e:
            raise ValueError(f"{path}:{lineno}: {e}") from e
    return prompts, out


def read_samples(path: str | os.PathLike) -> list[list[Sample]]:
    """Read a ``write_samples`` file back: list (per prompt, in order) of list of ``Sample``
    (``read_prompted_samples`` without the prompts)."""
    return read_prompted_samples(path)[1]
