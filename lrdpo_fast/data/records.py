"""Preference pairs -> tokenized examples, once: ``tokenize_pair`` / ``tokenize_record``.

A record is a mapping with ``prompt``, ``chosen`` and ``rejected`` in one of three forms:
- strings: the prompt is tokenized as is (a BOS is prepended when the tokenizer has one), each
  response is tokenized without special tokens;
- chat messages (lists of ``{"role", "content"}``): the prompt messages are rendered with the
  tokenizer's chat template and ``add_generation_prompt=True``; ``chosen``/``rejected`` are the
  assistant turn(s) after the prompt (a plain string is taken as one assistant message). Without a
  ``prompt`` key, the longest common message prefix of chosen and rejected is the prompt;
- pre-tokenized ids (lists of ints), also under TRL's ``prompt_input_ids`` / ``chosen_input_ids``
  / ``rejected_input_ids`` keys.
Every response gets an EOS appended (unless it already ends with one; a chat turn that holds the
EOS, e.g. ChatML's <|im_end|>, ends right after it as a generation would), except one the record
marks ``chosen_truncated`` / ``rejected_truncated`` = True: a sample cut by the generation budget
never produced an EOS, so training must not score one. Optional ``ref_chosen_logps`` /
``ref_rejected_logps`` numbers ride along (stored reference log-probs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PairExample:
    """One tokenized preference pair.

    Attributes:
        prompt_ids: list[int], the shared prompt (length P >= 1).
        chosen_ids, rejected_ids: list[int], response tokens incl. the final EOS (length >= 1).
            The chosen sequence is ``prompt_ids + chosen_ids`` and its unshifted labels are
            ``[-100] * P + chosen_ids`` (same for rejected).
        num_truncated_tokens: int, tokens dropped by truncation (prompt counted once + chosen +
            rejected).
        ref_chosen_logps, ref_rejected_logps: float or None, stored summed reference log-probs.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    num_truncated_tokens: int = 0
    ref_chosen_logps: float | None = None
    ref_rejected_logps: float | None = None

    @property
    def chosen_length(self) -> int:
        """Number of scored chosen tokens (response incl. EOS)."""
        return len(self.chosen_ids)

    @property
    def rejected_length(self) -> int:
        """Number of scored rejected tokens (response incl. EOS)."""
        return len(self.rejected_ids)

    @property
    def num_tokens(self) -> int:
        """Tokens this pair occupies once packed: 2 * P + |chosen| + |rejected|."""
        return 2 * len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)

    @property
    def has_ref(self) -> bool:
        """True when both reference log-probs are stored."""
        return self.ref_chosen_logps is not None and self.ref_rejected_logps is not None

    def with_ref(self, ref_chosen_logps: float, ref_rejected_logps: float) -> PairExample:
        """A copy with the stored reference log-probs set."""
        return replace(self, ref_chosen_logps=float(ref_chosen_logps), ref_rejected_logps=float(ref_rejected_logps))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict in the pre-tokenized record format (re-loadable with ``tokenize_record``)."""
        d = asdict(self)
        return {
            "prompt_input_ids": d["prompt_ids"],
            "chosen_input_ids": d["chosen_ids"],
            "rejected_input_ids": d["rejected_ids"],
            "num_truncated_tokens": d["num_truncated_tokens"],
            "ref_chosen_logps": d["ref_chosen_logps"],
            "ref_rejected_logps": d["ref_rejected_logps"],
        }


def _is_ids(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)


def _is_messages(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(m, Mapping) and "role" in m for m in x)


def _encode(tokenizer, text: str, name: str) -> list[int]:
    if tokenizer is None:
        raise ValueError(f"{name} is text but tokenizer is None; pass a tokenizer or pre-tokenized ids")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render_chat(tokenizer, prompt_msgs, response_msgs, name: str) -> str:
    """Text of the response turn(s): render(prompt + response) minus render(prompt, gen prompt)."""
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"{name} is a list of chat messages but the tokenizer has no chat_template")
    head = tokenizer.apply_chat_template(list(prompt_msgs), tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(list(prompt_msgs) + list(response_msgs), tokenize=False)
    if not full.startswith(head):
        # Templates that render the generation prompt differently from a finished turn: fall back
        # to the prefix without the generation prompt.
        head_plain = tokenizer.apply_chat_template(list(prompt_msgs), tokenize=False)
        if not full.startswith(head_plain):
            raise ValueError(f"{name}: the chat template does not render the prompt as a prefix of the conversation")
        head = head_plain
    return full[len(head) :]


def _as_messages(x: Any, role: str) -> list:
    return [{"role": role, "content": x}] if isinstance(x, str) else list(x)


def _split_implicit_prompt(chosen, rejected):
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return list(chosen[:n]), list(chosen[n:]), list(rejected[n:])


def _get(record: Mapping, *keys: str):
    for k in keys:
        if k in record and record[k] is not None:
            return record[k]
    return None


def _raw_ids(record: Mapping, tokenizer) -> tuple[list[int], list[int], list[int], bool]:
    """(prompt ids, chosen content ids, rejected content ids, is_chat) before EOS and truncation."""
    if not isinstance(record, Mapping):
        raise ValueError(f"record must be a mapping with prompt/chosen/rejected, got {type(record).__name__}")
    prompt = _get(record, "prompt_input_ids", "prompt")
    chosen = _get(record, "chosen_input_ids", "chosen")
    rejected = _get(record, "rejected_input_ids", "rejected")
    if chosen is None:
        raise ValueError("chosen is missing from the record")
    if rejected is None:
        raise ValueError("rejected is missing from the record")
    if _is_messages(chosen) or _is_messages(rejected) or _is_messages(prompt):
        if prompt is None:
            if not (_is_messages(chosen) and _is_messages(rejected)):
                raise ValueError("prompt is missing and chosen/rejected are not both chat message lists")
            prompt, chosen, rejected = _split_implicit_prompt(chosen, rejected)
        p_msgs = _as_messages(prompt, "user")
        for name, resp in (("chosen", chosen), ("rejected", rejected)):
            msgs = _as_messages(resp, "assistant")
            if not msgs or all(not str(m.get("content") or "").strip() for m in msgs):
                raise ValueError(f"{name} is empty: the response messages have no content")
        c_text = _render_chat(tokenizer, p_msgs, _as_messages(chosen, "assistant"), "chosen")
        r_text = _render_chat(tokenizer, p_msgs, _as_messages(rejected, "assistant"), "rejected")
        p_text = tokenizer.apply_chat_template(p_msgs, tokenize=False, add_generation_prompt=True)
        return (
            _encode(tokenizer, p_text, "prompt"),
            _encode(tokenizer, c_text, "chosen"),
            _encode(tokenizer, r_text, "rejected"),
            True,
        )
    out = []
    for name, x in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
        if x is None:
            raise ValueError(f"{name} is missing from the record")
        if isinstance(x, str):
            out.append(_encode(tokenizer, x, name))
        elif _is_ids(x):
            out.append([int(v) for v in x])
        else:
            raise ValueError(f"{name} must be a string, a list of chat messages or a list of token ids")
    return out[0], out[1], out[2], False


def _check_length(name: str, value: int | None, minimum: int) -> None:
    if value is not None and (not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be an int >= {minimum} or None, got {value!r}")


def tokenizer_vocab_size(tokenizer) -> int | None:
    """Number of ids ``tokenizer`` knows (``len(tokenizer)``: base vocabulary + added tokens), or
    None when there is no tokenizer or it cannot say."""
    if tokenizer is None:
        return None
    try:
        n = len(tokenizer)
    except TypeError:
        n = getattr(tokenizer, "vocab_size", None)
    return n if isinstance(n, int) and n > 0 else None


def check_token_ids(example: PairExample, vocab_size: int | None, what: str = "the vocabulary") -> None:
    """Every id of ``example`` must lie in [0, vocab_size) (only >= 0 when vocab_size is None);
    ValueError naming the field and the first bad id."""
    for name, ids in (
        ("prompt", example.prompt_ids),
        ("chosen", example.chosen_ids),
        ("rejected", example.rejected_ids),
    ):
        if not ids:
            continue
        lo, hi = min(ids), max(ids)
        if lo < 0:
            raise ValueError(f"{name} holds token id {lo}: token ids must be >= 0")
        if vocab_size is not None and hi >= vocab_size:
            raise ValueError(f"{name} holds token id {hi} outside {what} [0, {vocab_size})")


def _truncated_flags(record: Mapping[str, Any]) -> dict[str, bool]:
    """{"chosen": bool, "rejected": bool}: the record's ``<side>_truncated`` flags (default False)."""
    cut = {}
    for name in ("chosen", "rejected"):
        flag = record.get(f"{name}_truncated", False)
        if not isinstance(flag, bool):
            raise ValueError(f"{name}_truncated must be a bool, got {flag!r}")
        cut[name] = flag
    return cut


def _truncate(
    prompt: list[int], chosen: list[int], rejected: list[int], max_length: int | None, max_prompt_length: int | None
) -> tuple[list[int], list[int], list[int], int]:
    """(prompt, chosen, rejected, tokens dropped) under the caps of ``tokenize_record``: the
    prompt keeps its END, each response its START."""
    dropped = 0
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        dropped += len(prompt) - max_prompt_length
        prompt = prompt[-max_prompt_length:]
    if max_length is not None:
        if len(prompt) > max_length - 1:
            dropped += len(prompt) - (max_length - 1)
            prompt = prompt[-(max_length - 1) :]
        room = max_length - len(prompt)
        dropped += max(0, len(chosen) - room) + max(0, len(rejected) - room)
        chosen, rejected = chosen[:room], rejected[:room]
    return prompt, chosen, rejected, dropped


def _record_ref_logps(record: Mapping[str, Any]) -> tuple[Any, Any]:
    """The record's (ref_chosen_logps, ref_rejected_logps), each a finite number or None."""
    ref_c = record.get("ref_chosen_logps")
    ref_r = record.get("ref_rejected_logps")
    for name, v in (("ref_chosen_logps", ref_c), ("ref_rejected_logps", ref_r)):
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number or None, got {v!r}")
    return ref_c, ref_r


def tokenize_record(
    record: Mapping[str, Any],
    tokenizer=None,
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    add_bos: bool | None = None,
    eos_token_id: int | None = None,
    vocab_size: int | None = None,
) -> PairExample:
    """Tokenize one preference record (a mapping) into a ``PairExample`` (forms: module docstring).

    Args:
        record: mapping with prompt/chosen/rejected (strings, chat messages or token-id lists),
            optionally ref_chosen_logps / ref_rejected_logps (float) and chosen_truncated /
            rejected_truncated (bool, default False: True means no EOS is appended).
        tokenizer: a transformers tokenizer; may be None for pre-tokenized records.
        max_length: cap on each sequence (prompt + response incl. EOS). The prompt keeps its END
            (at most max_length - 1 tokens so one response token always fits), each response its
            START (a truncated response loses its EOS). None: no cap.
        max_prompt_length: cap on the prompt alone, keeping its END. None: no cap.
        add_bos: prepend the tokenizer's BOS to the prompt if missing. None: yes for text
            prompts when the tokenizer has a BOS, no for chat templates and pre-tokenized ids.
        eos_token_id: EOS appended to each response; defaults to ``tokenizer.eos_token_id``.
            With neither, no EOS is appended.
        vocab_size: ids must lie in [0, vocab_size); default ``len(tokenizer)`` when there is a
            tokenizer (pre-tokenized ids are checked against it too), else only ids >= 0.

    Returns:
        PairExample with int token lists and ``num_truncated_tokens``.

    Raises:
        ValueError naming the argument: a missing field, an empty prompt, an empty chosen or
        rejected response (no tokens before EOS), a bad length cap, a token id outside the
        vocabulary.
    """
    _check_length("max_length", max_length, 2)
    _check_length("max_prompt_length", max_prompt_length, 1)
    _check_length("vocab_size", vocab_size, 1)
    prompt, chosen, rejected, is_chat = _raw_ids(record, tokenizer)
    eos = eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    bos = getattr(tokenizer, "bos_token_id", None)
    text_prompt = isinstance(_get(record, "prompt_input_ids", "prompt"), str)
    if add_bos is None:
        add_bos = text_prompt and not is_chat and bos is not None
    if add_bos and bos is not None and (not prompt or prompt[0] != bos):
        prompt = [bos] + prompt
    if is_chat and eos is not None:
        # A chat turn that already holds the EOS (e.g. ChatML's <|im_end|>) ends there, as a
        # generation would: drop the template's trailing text after it.
        chosen, rejected = (ids[: len(ids) - ids[::-1].index(eos)] if eos in ids else ids for ids in (chosen, rejected))
    for name, ids in (("chosen", chosen), ("rejected", rejected)):
        content = ids[:-1] if (eos is not None and ids and ids[-1] == eos) else ids
        if len(content) == 0:
            raise ValueError(f"{name} is empty: the response has no tokens (besides EOS)")
    cut = _truncated_flags(record)
    if eos is not None:
        chosen = chosen if chosen[-1] == eos or cut["chosen"] else chosen + [eos]
        rejected = rejected if rejected[-1] == eos or cut["rejected"] else rejected + [eos]
    if len(prompt) == 0:
        raise ValueError("prompt is empty: at least one prompt token (e.g. BOS) is needed to score the response")

    prompt, chosen, rejected, dropped = _truncate(prompt, chosen, rejected, max_length, max_prompt_length)
    ref_c, ref_r = _record_ref_logps(record)
    example = PairExample(
        prompt_ids=prompt,
        chosen_ids=chosen,
        rejected_ids=rejected,
        num_truncated_tokens=int(dropped) + int(record.get("num_truncated_tokens", 0) or 0),
        ref_chosen_logps=None if ref_c is None else float(ref_c),
        ref_rejected_logps=None if ref_r is None else float(ref_r),
    )
    if vocab_size is not None:
        check_token_ids(example, vocab_size)
    else:
        check_token_ids(example, tokenizer_vocab_size(tokenizer), "the tokenizer's vocabulary")
    return example


def tokenize_pair(
    tokenizer,
    prompt,
    chosen,
    rejected,
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    add_bos: bool | None = None,
    eos_token_id: int | None = None,
) -> PairExample:
    """Tokenize one pair: prompt ids + response ids + EOS, labels later -100 on the prompt.

    Args:
        tokenizer: a transformers tokenizer (None only for pre-tokenized ids).
        prompt: str, chat messages [{"role", "content"}...], or list[int].
        chosen, rejected: str, assistant message(s), or list[int]; must not be empty.
        max_length, max_prompt_length, add_bos, eos_token_id: as in ``tokenize_record``.

    Returns:
        PairExample (int token lists, ``num_truncated_tokens``). ValueError names a bad argument.
    """
    return tokenize_record(
        {"prompt": prompt, "chosen": chosen, "rejected": rejected},
        tokenizer,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        add_bos=add_bos,
        eos_token_id=eos_token_id,
    )


def tokenize_pairs(records: Iterable[Mapping[str, Any]], tokenizer=None, **kwargs) -> list[PairExample]:
    """``tokenize_record`` over an iterable of records; errors name the failing record's index.

    Returns list[PairExample]; kwargs are ``tokenize_record``'s (max_length, max_prompt_length, ...).
    """
    out = []
    for i, rec in enumerate(records):
        try:
            out.append(tokenize_record(rec, tokenizer, **kwargs))
        except ValueError as e:
            raise ValueError(f"record {i}: {e}") from e
    return out
