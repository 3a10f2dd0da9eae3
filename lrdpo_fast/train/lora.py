"""LoRA adapters through PEFT (``TrainConfig.lora``; the ``lora`` extra).

``TrainConfig(lora={...})`` (or a ``peft.LoraConfig``) injects LoRA layers into the policy's
linear layers in place (``peft.get_peft_model``): every base weight is frozen, only the adapter
weights train and hold optimizer state. The LM head is never a target: the fused kernels read
its weight as a plain [V, d] matrix (they never build the logits a head adapter would act on),
so it stays frozen and goes to the kernels as without LoRA. The reference log-probs of a run
are the same module with its adapters switched off (``adapters_off``), not a second copy of the
weights. Checkpoints and ``Trainer.save_model`` write the adapter in PEFT's format
(``adapter_config.json`` + ``adapter_model.safetensors``; load it on the base model with
``peft.PeftModel.from_pretrained``). Under torchrun the adapter is injected before FSDP2 shards
the layers (frozen base shards hold no optimizer state) and saved from the gathered weights.
The iterative loop merges each iteration's adapter into the weights (``merge_adapter``): the
sampler serves, and the run directory holds, plain models; a fresh adapter starts the next
iteration.

Keys (PEFT's names): ``r`` (rank, default 16), ``lora_alpha`` (default 32), ``lora_dropout``
(default 0.0: DPO's log-prob differences are deterministic unless asked otherwise),
``target_modules`` (default "all-linear": every linear layer but the output head, which fits
Llama, Qwen, Mistral, Gemma, Phi-3 alike; or a list of module names such as
["q_proj", "v_proj"]), ``bias`` ("none", "all", "lora_only"), ``use_rslora`` (bool).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from torch import nn

EXTRA_HINT = "pip install 'lrdpo-fast[lora]'"
LORA_DEFAULTS: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "target_modules": "all-linear",
    "bias": "none",
    "use_rslora": False,
}
HEAD_NAMES = ("lm_head", "embed_out", "output")  # output heads of the transformers families


def _require_peft():
    try:
        import peft
    except ImportError:
        raise ImportError(f"TrainConfig.lora needs the peft package: {EXTRA_HINT}") from None
    return peft


def check_lora(name: str, value: Any) -> dict[str, Any] | None:
    """``value`` (None, a mapping of the keys above, or a ``peft.LoraConfig``) as a plain dict with
    every key filled in; ValueError naming ``name`` and the key for anything else."""
    if value is None:
        return None
    if type(value).__name__ == "LoraConfig":  # a peft.LoraConfig: its values of our keys
        value = {k: getattr(value, k) for k in LORA_DEFAULTS}
        if isinstance(value["target_modules"], (set, frozenset)):
            value["target_modules"] = sorted(value["target_modules"])
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping of LoRA settings or a peft.LoraConfig, got {type(value).__name__}")
    unknown = sorted(set(value) - set(LORA_DEFAULTS))
    if unknown:
        raise ValueError(f"{name} has unknown key(s) {unknown}; valid keys are {sorted(LORA_DEFAULTS)}")
    out = {**LORA_DEFAULTS, **value}
    r, alpha, dropout = out["r"], out["lora_alpha"], out["lora_dropout"]
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ValueError(f"{name}.r (the rank) must be an int >= 1, got {r!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(f"{name}.lora_alpha must be a number > 0, got {alpha!r}")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ValueError(f"{name}.lora_dropout must be in [0, 1), got {dropout!r}")
    if out["bias"] not in ("none", "all", "lora_only"):
        raise ValueError(f"{name}.bias must be one of ('none', 'all', 'lora_only'), got {out['bias']!r}")
    if not isinstance(out["use_rslora"], bool):
        raise ValueError(f"{name}.use_rslora must be true or false, got {out['use_rslora']!r}")
    out["target_modules"] = _check_targets(name, out["target_modules"])
    return out


def _check_targets(name: str, targets: Any) -> str | list[str]:
    if isinstance(targets, str):
        targets_list = [targets]
    elif isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) and t for t in targets):
        targets_list = list(targets)
    else:
        raise ValueError(
            f"{name}.target_modules must be 'all-linear' or a non-empty list of module names, got {targets!r}"
        )
    head = [t for t in targets_list if t.split(".")[-1] in HEAD_NAMES]
    if head:
        raise ValueError(
            f"{name}.target_modules names the LM head {head}: the head stays frozen and goes to the fused "
            "kernels as a plain weight (they never build the logits an adapter on it would change); "
            "target the decoder's linear layers ('all-linear' does)"
        )
    return targets if isinstance(targets, str) else targets_list


def apply_lora(model: nn.Module, lora: dict[str, Any] | None):
    """Inject LoRA layers into ``model`` (a transformers causal LM) in place and freeze every
    other weight; returns the ``peft.PeftModel`` wrapper (for saving the adapter), or None when
    ``lora`` is None or the model already carries adapters (an earlier Trainer's)."""
    if lora is None or has_adapters(model):
        return None
    peft = _require_peft()
    config = peft.LoraConfig(task_type="CAUSAL_LM", **lora)
    wrapper = peft.get_peft_model(model, config)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and any(p.requires_grad for p in head.parameters()):
        raise ValueError("lora: the LM head would train; it must stay frozen for the fused kernels")
    return wrapper


def has_adapters(model: nn.Module) -> bool:
    """True when PEFT tuner layers are injected anywhere in ``model``."""
    if "peft" not in sys.modules:
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


@contextlib.contextmanager
def adapters_off(model: nn.Module | None):
    """Run ``model`` as its base inside the block: every LoRA layer's adapters off (no copy of the
    weights), back on after it; nothing happens to a model without adapters."""
    layers = []
    if model is not None and "peft" in sys.modules:
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.disable_adapters]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield model
    finally:
        for m in layers:
            m.enable_adapters(True)


ADAPTER_FILE = "adapter_model.safetensors"


def save_adapter(wrapper, path: str | Path, state_dict: dict | None = None) -> None:
    """PEFT's ``save_pretrained`` of the adapter only (adapter_config.json + safetensors).
    ``state_dict``: the model's full weights under its own names (FSDP2: gathered on rank 0, the
    wrapper's own parameters being shards); None reads them from the wrapper."""
    if state_dict is not None:  # PEFT's names are the wrapper's: base_model.model.<the model's name>
        state_dict = {f"base_model.model.{k}": v for k, v in state_dict.items()}
    wrapper.save_pretrained(str(path), safe_serialization=True, state_dict=state_dict)


def merge_adapter(wrapper) -> nn.Module:
    """Fold the adapter into the weights, ``W <- W + (lora_alpha / r) * B @ A`` (``sqrt(r)`` for
    rsLoRA) in the weights' dtype, and put the plain layers back (PEFT's ``merge_and_unload``).
    Returns the model the adapter was injected into (the same object), with its original
    parameter names: a standard transformers model, as saved and synced without LoRA."""
    return wrapper.merge_and_unload()


def load_adapter(wrapper, path: str | Path) -> None:
    """Copy the adapter weights saved in ``path`` into ``wrapper``'s adapter (the same config);
    ValueError naming the folder when it holds none or they do not fit."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    f = Path(path) / ADAPTER_FILE
    if not f.is_file():
        raise ValueError(f"checkpoint {str(path)!r} holds no LoRA adapter ({ADAPTER_FILE}); was it trained with lora?")
    result = set_peft_model_state_dict(wrapper, load_file(str(f)))
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"checkpoint {str(path)!r}: adapter weights do not fit this model: {unexpected[:5]}")
