"""The demo's task: reverse a 4-digit number, answered in a short, a medium or a long style.

A prompt is four digits and ``=`` (``"4817="``); the right answer is the digits reversed
(``"7184"``, leading zeros kept: ``"1230="`` -> ``"0321"``). A response answers when it is exactly
one of three styles (``parse_response``), the long one restating the prompt's number:

    short   "7184"                                                                       (4 chars)
    medium  "The answer is 7184."                                                       (19 chars)
    long    "Let me reverse the digits of 4817 one by one. The reversed number is 7184." (74 chars)

Anything else (garbled words around the right digits, a cut-off sentence) is no answer, as a
reader would judge it: DPO pushing rejected answers down can move probability onto garbled text
that still ends in the right digits, and a truth that counted it would reward that drift.

``is_correct`` is the truth (only measured by the demo); ``judge`` is what the loop optimizes:
correctness plus a capped bonus per character, the length bias real reward models have
(``JUDGE_BONUS_PER_CHAR`` x characters, at most ``JUDGE_BONUS_CAP``). Palindromes (1221) are left
out of every split so an answer that stops after restating the number is never right by luck.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

JUDGE_BONUS_PER_CHAR = 0.005
JUDGE_BONUS_CAP = 0.4
SPLITS = ("train", "eval")
_SPLIT_SEED = 20240613  # fixes which numbers are held out; never change it (it would move the splits)
_EVAL_SIZE = 4000  # numbers held out for evaluation; the other 4910 are for training (SFT and DPO)
_PROMPT_RE = re.compile(r"^(\d{4})=$")
_RESPONSE_RES = {
    "short": re.compile(r"^(\d{4})$"),
    "medium": re.compile(r"^The answer is (\d{4})\.$"),
    "long": re.compile(r"^Let me reverse the digits of (\d{4}) one by one\. The reversed number is (\d{4})\.$"),
}

STYLES = ("short", "medium", "long")
_TEMPLATES = {
    "short": "{answer}",
    "medium": "The answer is {answer}.",
    "long": "Let me reverse the digits of {number} one by one. The reversed number is {answer}.",
}


def _pools() -> dict[str, list[str]]:
    numbers = [f"{i}" for i in range(1000, 10000) if f"{i}" != f"{i}"[::-1]]
    random.Random(_SPLIT_SEED).shuffle(numbers)
    return {"eval": sorted(numbers[:_EVAL_SIZE]), "train": sorted(numbers[_EVAL_SIZE:])}


_POOLS = _pools()


def pool_size(split: str) -> int:
    """How many distinct prompts ``split`` holds ("train": 4910, "eval": 4000)."""
    _check_split(split)
    return len(_POOLS[split])


def _check_split(split) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def make_prompts(n: int, *, seed: int, split: str) -> list[str]:
    """``n`` distinct prompts like ``"4817="`` drawn from ``split`` ("train" or "eval").

    Deterministic for (n, seed, split); the two splits never share a number, and a larger ``n``
    with the same seed is not required to extend a smaller one. ``n`` may be at most
    ``pool_size(split)``: repeat prompts (several samples per prompt) for more evaluation samples.
    """
    _check_split(split)
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= len(_POOLS[split]):
        raise ValueError(f"n must be an int in [0, {len(_POOLS[split])}] for split {split!r}, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return [f"{x}=" for x in random.Random(seed).sample(_POOLS[split], n)]


def parse_prompt(prompt: str) -> str:
    """The 4-digit number of a prompt (``"4817="`` -> ``"4817"``); ValueError naming ``prompt``."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    m = _PROMPT_RE.match(prompt)
    if m is None:
        raise ValueError(f"prompt must be four digits and '=' (like '4817='), got {prompt!r}")
    return m.group(1)


def target(prompt: str) -> str:
    """The right answer: the prompt's digits reversed (``"4817="`` -> ``"7184"``)."""
    return parse_prompt(prompt)[::-1]


def format_answer(prompt: str, style: str, answer: str | None = None) -> str:
    """The response in ``style`` ("short", "medium", "long") giving ``answer`` (default: the right one)."""
    if style not in _TEMPLATES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    number = parse_prompt(prompt)
    return _TEMPLATES[style].format(number=number, answer=target(prompt) if answer is None else answer)


def parse_response(prompt: str, response: str) -> tuple[str, str] | None:
    """``(style, answer)`` when ``response`` is exactly one of the three styles for ``prompt`` (the
    long style must restate the prompt's own number), else None. ValueError for a bad prompt or a
    response that is not a str."""
    number = parse_prompt(prompt)
    if not isinstance(response, str):
        raise ValueError(f"response must be a str, got {type(response).__name__}")
    for style, pattern in _RESPONSE_RES.items():
        m = pattern.match(response)
        if m is not None:
            if style == "long" and m.group(1) != number:
                return None
            return style, m.group(m.lastindex)
    return None


def is_correct(prompt: str, response: str) -> bool:
    """True when ``response`` is a well-formed answer (``parse_response``) giving the reversed number."""
    parsed = parse_response(prompt, response)
    return parsed is not None and parsed[1] == target(prompt)


def _check_batch(prompts: Sequence[str], responses: Sequence[str]) -> None:
    for name, xs in (("prompts", prompts), ("responses", responses)):
        if isinstance(xs, (str, bytes)) or not isinstance(xs, Sequence):
            raise ValueError(f"{name} must be a list of str, got {type(xs).__name__}")
        bad = next((i for i, x in enumerate(xs) if not isinstance(x, str)), None)
        if bad is not None:
            raise ValueError(f"{name}[{bad}] must be a str, got {type(xs[bad]).__name__}")
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses must have the same length, got {len(prompts)} and {len(responses)}")


def judge_score(prompt: str, response: str) -> float:
    """One judge score: 1.0 when correct (``is_correct``), plus min(JUDGE_BONUS_PER_CHAR x
    len(response), JUDGE_BONUS_CAP) for any text: the length bias of real reward models."""
    bonus = min(JUDGE_BONUS_PER_CHAR * len(response), JUDGE_BONUS_CAP)
    return float(is_correct(prompt, response)) + bonus


def judge(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """The length-biased judge the loop optimizes (a CallableReward: ``"lrdpo_fast.demo.task:judge"``).

    Args:
        prompts, responses: lists of str of the same length (prompt i answered by response i).
    Returns:
        list[float]: correctness (0 or 1) + min(0.005 x characters, 0.4) per response.
    Raises:
        ValueError naming the argument: not a list of str, an item not a str, mismatched lengths,
        a prompt not of the form ``"dddd="``.
    """
    _check_batch(prompts, responses)
    return [judge_score(p, r) for p, r in zip(prompts, responses)]


def true_accuracy(prompts: Sequence[str], responses: Sequence[str]) -> float:
    """Fraction of responses that are correct (``is_correct``); the measure, never optimized."""
    _check_batch(prompts, responses)
    if not prompts:
        raise ValueError("prompts is empty: accuracy of nothing is undefined")
    return sum(is_correct(p, r) for p, r in zip(prompts, responses)) / len(prompts)
