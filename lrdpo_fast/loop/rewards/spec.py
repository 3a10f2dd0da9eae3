"""The ``reward:`` section's parameter object and the reward it builds.

    spec = RewardSpec(callable="my_pkg.my_rewards:score")     # or reward_model=PATH, or implicit=True
    reward = build_reward(spec, policy, tokenizer, max_length=..., max_prompt_length=...)

``RewardSpec`` checks itself once, at construction: a bad value raises ``ValueError`` naming the
YAML key as the run's config reports it (``IterateConfig: reward.callable ...``). The same spec
is the ``eval:`` section's ``judge``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...ops.checks import check_bool, check_int, check_str

__all__ = ["RewardSpec", "build_reward"]


def _key(key: str) -> str:
    return f"IterateConfig: {key}"


@dataclass
class RewardSpec:
    """The ``reward`` section: exactly one of ``callable``, ``reward_model``, ``implicit``.

    Attributes:
        callable: ``"package.module:function"`` taking (prompts, responses) -> list of floats.
        reward_model: a local sequence-classification folder (one output).
        implicit: DICE's implicit reward, the policy against ``reference`` (a local folder).
        batch_size: the reward model's batch size (int >= 1).
    """

    callable: str | None = None
    reward_model: str | None = None
    implicit: bool = False
    reference: str | None = None
    batch_size: int = 16

    def __post_init__(self) -> None:
        chosen = [k for k in ("callable", "reward_model") if getattr(self, k) is not None]
        if check_bool(_key("reward.implicit"), self.implicit):
            chosen.append("implicit")
        if len(chosen) != 1:
            raise ValueError(
                f"{_key('reward')} needs exactly one of callable, reward_model, implicit; got {chosen or 'none'}"
            )
        if self.callable is not None:
            check_str(_key("reward.callable"), self.callable)
            if ":" not in self.callable:
                raise ValueError(
                    f"{_key('reward.callable')} must look like 'package.module:function', got {self.callable!r}"
                )
        if self.reward_model is not None:
            check_str(_key("reward.reward_model"), self.reward_model)
        if self.implicit and self.reference is None:
            raise ValueError(
                f"{_key('reward.reference')} is needed with implicit: true (the start policy's own reference folder)"
            )
        check_int(_key("reward.batch_size"), self.batch_size, 1)


def build_reward(
    spec: RewardSpec,
    policy: Any = None,
    tokenizer: Any = None,
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
):
    """The reward object of a ``reward`` section.

    Args:
        spec: the section.
        policy, tokenizer: the live policy module and its tokenizer (the implicit reward only).
        max_length, max_prompt_length: the Trainer's truncation (the ``train`` section's fields of
            the same names), so the implicit reward scores the tokens training will see.
    Returns:
        ``CallableReward(spec.callable)``, ``RewardModel(spec.reward_model, batch_size=...)``, or
        ``ImplicitReward(policy, reference, tokenizer, ...)`` with the reference loaded from
        ``spec.reference`` (fp32, safetensors only; 'example' is the demo's start policy).
    """
    if spec.callable is not None:
        from .base import CallableReward

        return CallableReward(spec.callable)
    if spec.reward_model is not None:
        from .reward_model import RewardModel

        return RewardModel(spec.reward_model, batch_size=spec.batch_size)
    from ...model.loading import load_causal_lm
    from .implicit import ImplicitReward

    path = spec.reference
    if path == "example":  # the embedded demo's start policy (DICE's rounds after a judge round)
        from ...demo.policy import start_policy_path

        path = str(start_policy_path())
    ref = load_causal_lm(path, "reward.reference", dtype="float32")
    return ImplicitReward(policy, ref, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
