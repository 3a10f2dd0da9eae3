"""The LM head as the fused kernels see it: weight, bias, and what the model does to its logits.

A transformers ``*ForCausalLM`` computes ``logits = lm_head(h)`` and some architectures then
transform them before the softmax. The fused kernels never build the logits, so the transform
must be handed to them, or every log-prob of such a model would be silently wrong:

- a constant scale s (``logits * s``): Granite / MiniCPM3 divide by ``config.logits_scaling``,
  HyperCLOVA X multiplies by it, Cohere multiplies by ``config.logit_scale``; given to the kernels
  as ``temperature = 1 / s`` (exact: (h W^T) s = (h W^T) / (1 / s));
- a soft cap c (``c * tanh(logits / c)``): Gemma 2, 3 and 4 and others with
  ``config.final_logit_softcapping`` (Gemma 2: 30.0; Gemma 3: usually none).

A config that carries one of those attributes with a non-neutral value on an architecture this
module does not know is refused (``ValueError``) rather than guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# model_type -> (config attribute, how the logits use it)
_SCALES: dict[str, tuple[str, str]] = {
    **{
        t: ("logits_scaling", "divide")
        for t in (
            "granite",
            "granitemoe",
            "granitemoeshared",
            "granitemoehybrid",
            "granite_swa",
            "granitemoe_swa",
            "minicpm3",  # divides the hidden states, the same thing for a bias-free head
        )
    },
    "hyperclovax": ("logits_scaling", "multiply"),
    **{t: ("logit_scale", "multiply") for t in ("cohere", "cohere2", "cohere2_moe")},
}
# attributes that change the logits on some architecture (a neutral value changes nothing)
_SUSPECT = {"logits_scaling": 1.0, "logit_scale": 1.0, "output_multiplier": 1.0, "lm_head_multiplier": 1.0}


@dataclass(frozen=True)
class LMHead:
    """The head of a causal LM for the fused kernels.

    Attributes:
        weight: [V, d] output embedding (the input embedding itself when tied).
        bias: [V] or None.
        temperature: the kernels divide the logits by it (a model's logit scale s gives 1 / s).
        softcap: None, or c > 0: logits become c * tanh(logits / c) after the division.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    temperature: float = 1.0
    softcap: float | None = None

    def kernel_args(self, temperature: float = 1.0) -> dict:
        """The fused ops' ``temperature`` / ``softcap`` keyword arguments that give the model's
        final logits divided by a sampling ``temperature`` T: with scale s = 1 / self.temperature
        and cap c, (c tanh(s z / c)) / T = c' tanh((z / t') / c') for t' = T / s and c' = c / T."""
        out: dict = {}
        if self.temperature * temperature != 1.0:  # the default: plain models pass nothing
            out["temperature"] = self.temperature * temperature
        if self.softcap is not None:
            out["softcap"] = self.softcap / temperature
        return out


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    if callable(get):
        try:
            return get()
        except Exception:  # some remote-code configs
            return config
    return config


def _positive(name: str, model_type: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"config.{name} of {model_type!r} must be a finite number > 0, got {value!r}")
    return float(value)


def logit_transform(config) -> tuple[float, float | None]:
    """(temperature, softcap) of a transformers config: what its ``*ForCausalLM`` does to the
    head's output before the softmax, as the fused kernels' arguments (module docstring).

    Raises ValueError naming the attribute: a non-neutral ``logits_scaling`` / ``logit_scale`` /
    ``output_multiplier`` / ``lm_head_multiplier`` on an architecture not known here, or a
    non-positive scale / cap."""
    text = _text_config(config)
    model_type = str(getattr(text, "model_type", "") or getattr(config, "model_type", ""))
    temperature, softcap = 1.0, None
    known = _SCALES.get(model_type)
    if known is not None:
        attr, how = known
        s = _positive(attr, model_type, getattr(text, attr, 1.0))
        temperature = s if how == "divide" else 1.0 / s
    for attr, neutral in _SUSPECT.items():
        value = getattr(text, attr, None)
        if value is None or value == neutral or (known is not None and attr == known[0]):
            continue
        raise ValueError(
            f"config.{attr} = {value!r} on model type {model_type!r}: this architecture transforms its "
            "logits in a way lrdpo-fast does not know, so the fused log-probs would be wrong (supported: "
            f"{sorted(_SCALES)} and final_logit_softcapping)"
        )
    cap = getattr(text, "final_logit_softcapping", None)
    if cap is not None:
        softcap = _positive("final_logit_softcapping", model_type, cap)
    return temperature, softcap


def lm_head(model: torch.nn.Module) -> LMHead:
    """The ``LMHead`` of a transformers causal LM: ``model.get_output_embeddings()``'s weight
    [V, d] and bias [V] or None, and the config's logit scale and soft cap
    (``logit_transform``). With tied embeddings the weight IS the input embedding matrix, so
    gradients reach both uses. ValueError: no output embeddings, or an unknown logit transform."""
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ValueError(f"model ({type(model).__name__}) has no output embeddings (LM head)")
    config = getattr(model, "config", None)
    temperature, softcap = (1.0, None) if config is None else logit_transform(config)
    return LMHead(head.weight, getattr(head, "bias", None), temperature, softcap)
