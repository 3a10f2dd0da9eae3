"""Prompts as the engine gets them (token ids, exactly as the trainer tokenizes the same prompt),
and the per-sample request seed."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any


def request_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """The vLLM request seed of sample ``sample_index`` of prompt ``prompt_index``.

    A 63-bit int from BLAKE2b of the three numbers: stable across processes, Python versions and
    machines (unlike ``hash``), and different for every (seed, prompt, sample) triple.
    """
    digest = hashlib.blake2b(
        f"lrdpo-sampler/{int(seed)}/{int(prompt_index)}/{int(sample_index)}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _text_ids(tok, prompt: str, i: int) -> list[int]:
    if not prompt:
        raise ValueError(f"prompts[{i}] is an empty string")
    ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
    bos = getattr(tok, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


def _chat_ids(tok, prompt: Sequence[Mapping], i: int) -> list[int]:
    if any("role" not in m or "content" not in m for m in prompt):
        raise ValueError(f"prompts[{i}]: every chat message needs 'role' and 'content'")
    if getattr(tok, "chat_template", None) is None:
        raise ValueError(f"prompts[{i}] is a list of chat messages but the tokenizer has no chat_template")
    text = tok.apply_chat_template([dict(m) for m in prompt], tokenize=False, add_generation_prompt=True)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _token_ids(tok, prompt: Sequence[int], i: int) -> list[int]:
    vocab = len(tok)
    if any(not 0 <= v < vocab for v in prompt):
        raise ValueError(f"prompts[{i}] holds token ids outside [0, {vocab})")
    return [int(v) for v in prompt]


def prompt_ids(tokenizer, prompt: Any, i: int) -> list[int]:
    """Token ids of ``prompts[i]``: a str (BOS + text, no other special tokens), a list of chat
    messages (chat template + generation prompt) or a list of token ids (as they are).

    Raises ValueError naming ``prompts[i]``: empty, ids outside the vocabulary, a chat prompt
    without a chat template, a single message instead of a list, any other type."""
    if isinstance(prompt, str):
        return _text_ids(tokenizer, prompt, i)
    if isinstance(prompt, Mapping):
        raise ValueError(
            f"prompts[{i}] is a single chat message; a chat prompt is a list of messages "
            "(prompts is a list of such lists)"
        )
    if isinstance(prompt, Sequence) and len(prompt) == 0:
        raise ValueError(f"prompts[{i}] is empty")
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        return _chat_ids(tokenizer, prompt, i)
    if isinstance(prompt, Sequence) and all(isinstance(v, int) and not isinstance(v, bool) for v in prompt):
        return _token_ids(tokenizer, prompt, i)
    raise ValueError(
        f"prompts[{i}] must be a str, a list of chat messages or a list of token ids, got {type(prompt).__name__}"
    )
