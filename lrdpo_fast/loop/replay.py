"""Experience replay (DICE): mix generated pairs with offline pairs whose prompts are new.

``mix_replay(generated, offline, ratio=0.5)`` returns the generated pairs plus offline pairs that
make up ``ratio`` of the mixed set: ``ratio / (1 - ratio) * len(generated)`` of them, rounded half
up (all the eligible ones, with a warning, when fewer are eligible), drawn without replacement
among the offline pairs whose prompt does not occur in the generated set, then the whole set
shuffled; the same inputs and seed give the same list.

Prompt identity: a record's prompt is its ``prompt`` (a str, or chat messages; a single user
message counts as its content string, so ``"Hi"`` and ``[{"role": "user", "content": "Hi"}]``
are the same prompt; strings compared after ``strip()``), and separately its
``prompt_input_ids``. An offline pair is excluded when either matches a generated pair's.
Records without a prompt (chat ``chosen``/``rejected`` sharing their first messages) use that
shared prefix, as ``data.tokenize_record`` does.
"""

from __future__ import annotations

import json
import math
import numbers
import random
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ReplaySpec", "mix_replay", "prompt_keys", "replay_pool"]


def _text_key(prompt: Any) -> str | None:
    if isinstance(prompt, str):
        return "s:" + prompt.strip()
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, Mapping) for m in prompt):
        if len(prompt) == 1 and prompt[0].get("role") == "user" and isinstance(prompt[0].get("content"), str):
            return "s:" + prompt[0]["content"].strip()
        return "m:" + json.dumps([dict(m) for m in prompt], sort_keys=True, ensure_ascii=True)
    return None


def _ids_key(ids: Any) -> tuple | None:
    if isinstance(ids, (list, tuple)) and ids and all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
        return tuple(ids)
    return None


def prompt_keys(record: Mapping[str, Any], where: str = "record") -> tuple[str | None, tuple | None]:
    """(text key, ids key) identifying a pair record's prompt (module docstring); at least one is
    set. Raises ValueError naming ``where`` when the record has no recognizable prompt."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where} must be a mapping (a pair record), got {type(record).__name__}")
    prompt = record.get("prompt")
    if prompt is None:
        c, r = record.get("chosen"), record.get("rejected")
        if (
            isinstance(c, (list, tuple))
            and isinstance(r, (list, tuple))
            and all(isinstance(m, Mapping) for m in [*c, *r])
        ):
            n = 0
            while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
                n += 1
            prompt = list(c[:n]) or None
    text, ids = _text_key(prompt), _ids_key(record.get("prompt_input_ids"))
    if text is None and ids is None:
        ids = _ids_key(prompt)
    if text is None and ids is None:
        raise ValueError(f"{where} has no prompt (a str, chat messages or prompt_input_ids)")
    return text, ids


def mix_replay(
    generated_pairs: Sequence[Mapping[str, Any]],
    offline_pairs: Sequence[Mapping[str, Any]],
    *,
    ratio: float = 0.5,
    seed: int = 0,
) -> list[Mapping[str, Any]]:
    """Generated pairs plus offline pairs filling ``ratio`` of the result, never a generated prompt.

    Args:
        generated_pairs: list of pair records (``build_pairs`` output), all kept.
        offline_pairs: list of pair records (e.g. ``data.read_jsonl`` of a preference set).
        ratio: float in [0, 1), the offline share of the mixed set (DICE: 0.5).
        seed: int; the draw and the final shuffle depend only on it and the inputs.

    Returns:
        list of the same record objects (not copied), shuffled, of length
        ``len(generated) + min(round(ratio / (1 - ratio) * len(generated)), eligible offline)``.

    Raises:
        ValueError naming the argument: not lists of mappings, a record without a prompt, a ratio
        outside [0, 1), a non-int seed.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not (0.0 <= ratio < 1.0):
        raise ValueError(f"ratio must be a float in [0, 1), got {ratio!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    for arg, xs in (("generated_pairs", generated_pairs), ("offline_pairs", offline_pairs)):
        if isinstance(xs, (str, bytes, Mapping)) or not isinstance(xs, Sequence):
            raise ValueError(f"{arg} must be a list of pair records, got {type(xs).__name__}")
    gen_keys = [prompt_keys(r, f"generated_pairs[{i}]") for i, r in enumerate(generated_pairs)]
    seen_text = {t for t, _ in gen_keys if t is not None}
    seen_ids = {k for _, k in gen_keys if k is not None}
    eligible = []
    for i, r in enumerate(offline_pairs):
        t, k = prompt_keys(r, f"offline_pairs[{i}]")
        if (t is None or t not in seen_text) and (k is None or k not in seen_ids):
            eligible.append(i)
    want = math.floor(ratio / (1.0 - ratio) * len(generated_pairs) + 0.5) if ratio > 0 else 0
    if want > len(eligible):
        warnings.warn(
            f"mix_replay: {want} offline pairs wanted for ratio={ratio} but only {len(eligible)} have a prompt "
            f"outside the generated set; using them all (offline share {len(eligible)}/"
            f"{len(eligible) + len(generated_pairs)})",
            stacklevel=2,
        )
        want = len(eligible)
    rng = random.Random(f"mix_replay:{seed}")
    picked = sorted(rng.sample(eligible, want))
    mixed = list(generated_pairs) + [offline_pairs[i] for i in picked]
    rng.shuffle(mixed)
    return mixed


@dataclass(frozen=True)
class ReplaySpec:
    """The ``pairs.replay`` section (DICE's experience replay in the loop): offline pairs that
    make up ``ratio`` of every iteration's training set, never on a prompt of that iteration's
    generated pairs, drawn per iteration (seeded).

    Attributes:
        pairs: a JSONL file of ``{"prompt", "chosen", "rejected"}`` records (text, chat messages
            or token ids), or 'example' (the shipped example pairs).
        ratio: the offline share of the mixed set, in [0, 1) (DICE: 0.5).
    """

    pairs: str
    ratio: float = 0.5
    where: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.pairs, str) or not self.pairs:
            raise ValueError(f"{self.where}pairs must be a path string or 'example', got {self.pairs!r}")
        r = self.ratio
        if isinstance(r, bool) or not isinstance(r, numbers.Real) or not (0.0 <= r < 1.0):
            raise ValueError(f"{self.where}ratio must be a float in [0, 1), got {r!r}")
        object.__setattr__(self, "ratio", float(r))

    def to_dict(self) -> dict[str, Any]:
        """The section as the YAML has it."""
        return {"pairs": self.pairs, "ratio": self.ratio}


def replay_pool(spec: ReplaySpec) -> list[dict[str, Any]]:
    """The offline pairs of ``spec`` (``'example'``: the shipped example pairs); ValueError naming
    the file and line of a bad record, or an empty file."""
    from ..data.files import read_jsonl

    if spec.pairs == "example":
        from ..examples import PAIRS_PATH

        path = PAIRS_PATH
    else:
        path = spec.pairs
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"{spec.where}pairs {str(path)!r} holds no pair")
    for k, rec in enumerate(records, 1):
        prompt_keys(rec, f"{spec.where}pairs {str(path)!r} record {k}")
    return records
