"""Rewards: one float per (prompt, response), three kinds behind one call.

    scores = reward(prompts, responses)      # list[float], len(responses)

- ``RewardModel(path)`` (``reward_model.py``): a local ``AutoModelForSequenceClassification``
  folder with one output (a Bradley-Terry reward model), its own tokenizer rendering
  (prompt, response);
- ``CallableReward(fn_or_spec)`` (``base.py``): a rule, any Python callable or a
  ``"package.module:function"`` spec, called as ``fn(prompts, responses) -> list of floats``;
- ``ImplicitReward(policy, ref_model, tokenizer)`` (``implicit.py``): DICE's implicit reward
  ``log pi(y|x) - log ref(y|x)`` summed over the response tokens (no beta), packed and fused.

``base.py`` holds the contract every reward shares (``Reward``: input check, ``check_scores`` on
the output); ``spec.py`` the ``reward:`` section (``RewardSpec``) and ``build_reward``.

Imports torch; transformers only inside ``RewardModel``.
"""

from .base import CallableReward, Reward, check_inputs, check_scores, load_callable
from .implicit import ImplicitReward
from .reward_model import RewardModel
from .spec import RewardSpec, build_reward

__all__ = [
    "CallableReward",
    "ImplicitReward",
    "Reward",
    "RewardModel",
    "RewardSpec",
    "build_reward",
    "check_inputs",
    "check_scores",
    "load_callable",
]
