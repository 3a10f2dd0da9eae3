"""The scalar argument checks every layer shares (config sections, the sampler, the pairs).

Each returns the value (as the type it checks, ``float`` for numbers) or raises ``ValueError``
``"{name} must be ..., got {value!r}"``: ``name`` is what the user wrote, with its owner when it
helps (``"IterateConfig: sampler.n"``, ``"TrainConfig: beta"``, ``"seed"``). A ``bool`` is never
accepted as a number (it is an ``int`` in Python).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` when it is an int in ``[minimum, maximum]`` (no upper bound when None)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int <= {maximum}, got {value!r}")
    return value


def check_number(
    name: str, value: Any, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False
) -> float:
    """``float(value)`` when it is a finite int/float in ``[low, high]`` (``(low, high]`` with
    ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        raise ValueError(f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` when it is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_str(name: str, value: Any) -> str:
    """``value`` when it is a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` when it is one of ``choices``."""
    choices = tuple(choices)
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
