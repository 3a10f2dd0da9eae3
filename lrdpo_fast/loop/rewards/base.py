"""The base of every reward: the call contract, its input and score checks, and rules.

    scores = reward(prompts, responses)      # list[float], len(responses)

Inputs: ``prompts`` and ``responses`` are lists of the same length (prompt i is answered by
response i); a prompt is a str or a list of chat messages ``[{"role", "content"}, ...]``, a
response a str. ``ImplicitReward`` also takes token-id lists for both (``Sample.prompt_ids`` and
``Sample.response_ids``, so it scores exactly what was sampled); ``Reward.accepts_token_ids`` says
which reward does.

Every reward's output goes through the same check, ``check_scores``: a reward that raises,
returns the wrong count, a non-number (``bool`` counts as 0/1), NaN or inf is a ``ValueError``
naming the reward and the first bad index, raised by the call itself, so before a caller writes
anything.

``CallableReward(fn_or_spec)``: a rule, any Python callable or a ``"package.module:function"``
spec (``load_callable``), called as ``fn(prompts, responses) -> list of floats``.

Imports torch (scores may be tensors); nothing heavier.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["CallableReward", "Reward", "check_inputs", "check_scores", "load_callable"]


# ---- shared validation -------------------------------------------------------------------------
def _is_ids(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in x)


def _is_messages(x: Any) -> bool:
    return (
        isinstance(x, (list, tuple))
        and len(x) > 0
        and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in x)
    )


def check_inputs(prompts: Any, responses: Any, *, token_ids: bool = False, name: str = "reward") -> tuple[list, list]:
    """Validate a reward call's inputs; returns them as lists.

    Args:
        prompts: sequence of str | chat messages (| list[int] when ``token_ids``).
        responses: sequence of str (| list[int] when ``token_ids``), same length as ``prompts``.
        token_ids: whether token-id lists are accepted; name: the reward, for messages.

    Raises:
        ValueError naming the reward and the argument (``prompts[i]`` / ``responses[i]``).
    """
    for arg, xs in (("prompts", prompts), ("responses", responses)):
        if isinstance(xs, (str, bytes, Mapping)) or not isinstance(xs, Sequence):
            raise ValueError(f"reward {name}: {arg} must be a list, got {type(xs).__name__}")
    if len(prompts) != len(responses):
        raise ValueError(
            f"reward {name}: prompts and responses must have the same length, got {len(prompts)} and {len(responses)}"
        )
    kinds = "a str, a list of chat messages" + (" or a list of token ids" if token_ids else "")
    for i, p in enumerate(prompts):
        if not (isinstance(p, str) or _is_messages(p) or (token_ids and _is_ids(p) and len(p) > 0)):
            raise ValueError(f"reward {name}: prompts[{i}] must be {kinds}, got {type(p).__name__}")
    kinds = "a str" + (" or a list of token ids" if token_ids else "")
    for i, r in enumerate(responses):
        if not (isinstance(r, str) or (token_ids and _is_ids(r))):
            raise ValueError(f"reward {name}: responses[{i}] must be {kinds}, got {type(r).__name__}")
    return list(prompts), list(responses)


def check_scores(scores: Any, n: int, name: str) -> list[float]:
    """A reward's output as ``list[float]`` of length ``n``, or a ValueError.

    Args:
        scores: what the reward returned: a list/tuple of real numbers (``bool`` is 0/1, numpy
            scalars are fine), or a 1-D numpy array / torch tensor.
        n: expected count (number of responses); name: the reward, named in every error.

    Raises:
        ValueError naming the reward and the first bad index: not a sequence, wrong count, a
        non-number, NaN or inf.
    """
    if isinstance(scores, torch.Tensor):
        if scores.dim() != 1:
            raise ValueError(f"reward {name} returned a tensor of shape {tuple(scores.shape)}, expected [{n}]")
        scores = scores.detach().cpu().tolist()
    elif type(scores).__module__ == "numpy" and hasattr(scores, "tolist"):
        if getattr(scores, "ndim", 1) != 1:
            raise ValueError(f"reward {name} returned an array of shape {scores.shape}, expected ({n},)")
        scores = scores.tolist()
    if isinstance(scores, (str, bytes, Mapping)) or not isinstance(scores, Sequence):
        raise ValueError(f"reward {name} returned {type(scores).__name__}, expected a list of {n} floats")
    if len(scores) != n:
        raise ValueError(f"reward {name} returned {len(scores)} scores for {n} responses")
    out = []
    for i, v in enumerate(scores):
        if not isinstance(v, numbers.Real):
            raise ValueError(f"reward {name} returned a non-number at index {i}: {v!r}")
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"reward {name} returned {v} at index {i} (scores must be finite)")
        out.append(v)
    return out


class Reward:
    """Base of every reward: ``reward(prompts, responses) -> list[float]``.

    ``__call__`` validates the inputs (``check_inputs``), calls ``_score`` (subclasses), turns any
    exception it raises into a ``ValueError`` naming the reward, and validates the output
    (``check_scores``). An empty call returns ``[]`` without scoring.

    Attributes:
        name: str, how errors name this reward.
        accepts_token_ids: bool, whether prompts/responses may be token-id lists.
    """

    name: str = "reward"
    accepts_token_ids: bool = False
    uses_truncation: bool = False  # whether _score takes ``truncated`` (the implicit reward)

    def __call__(
        self, prompts: Sequence, responses: Sequence, *, truncated: Sequence[bool] | None = None
    ) -> list[float]:
        """Scores, float [R], of R (prompt, response) pairs. ``truncated``: optional bool [R], True
        for a response cut by the generation budget (rewards that score tokens, like the implicit
        reward, then score no EOS after it; the others ignore it)."""
        prompts, responses = check_inputs(prompts, responses, token_ids=self.accepts_token_ids, name=self.name)
        if truncated is not None:
            truncated = list(truncated)
            if len(truncated) != len(responses) or not all(isinstance(t, bool) for t in truncated):
                raise ValueError(
                    f"reward {self.name}: truncated must be a list of {len(responses)} bools, one per response"
                )
        if not responses:
            return []
        try:
            if self.uses_truncation:
                scores = self._score(prompts, responses, truncated=truncated)
            else:
                scores = self._score(prompts, responses)
        except Exception as e:  # noqa: BLE001 - any failure of a reward is reported as its own
            if isinstance(e, ValueError) and str(e).startswith(f"reward {self.name}"):
                raise
            raise ValueError(f"reward {self.name} raised {type(e).__name__}: {e}") from e
        return check_scores(scores, len(responses), self.name)

    def _score(self, prompts: list, responses: list) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


# ---- rules ---------------------------------------------------------------------------------------
def load_callable(spec: str) -> Callable:
    """The callable named by ``"package.module:function"`` (the attribute may be dotted,
    ``"pkg.mod:Class.method"``). Raises ValueError naming the spec when the module cannot be
    imported, the attribute is missing, or it is not callable."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"reward spec {spec!r} must look like 'package.module:function'")
    module_name, attr = spec.split(":")
    if not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".") + attr.split(".")):
        raise ValueError(f"reward spec {spec!r} must look like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - ImportError and whatever the module raises on import
        raise ValueError(f"reward spec {spec!r}: cannot import module {module_name!r} ({type(e).__name__}: {e})") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"reward spec {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward spec {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


class CallableReward(Reward):
    """A rule as a reward: ``fn(prompts, responses) -> list of floats``.

    Args:
        fn_or_spec: a callable, or a ``"package.module:function"`` string imported now (a
            ValueError names the spec when it cannot be imported or is not callable).

    Prompts reach ``fn`` as given (str or chat messages), responses as str.
    """

    def __init__(self, fn_or_spec: Callable | str):
        if isinstance(fn_or_spec, str):
            self.fn = load_callable(fn_or_spec)
            self.name = fn_or_spec
        elif callable(fn_or_spec):
            self.fn = fn_or_spec
            module = getattr(fn_or_spec, "__module__", None)
            qual = getattr(fn_or_spec, "__qualname__", None) or type(fn_or_spec).__qualname__
            self.name = f"{module}:{qual}" if module else qual
        else:
            raise ValueError(
                f"fn_or_spec must be a callable or a 'package.module:function' string, got {type(fn_or_spec).__name__}"
            )

    def _score(self, prompts, responses):
        return self.fn(prompts, responses)
