"""Weights for the engine: reading a checkpoint's tensor specs, checking a state dict against
them, naming a module's tensors, writing safetensors, and re-packing tied heads after a reload."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

WRAPPER_PREFIXES = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


@dataclass(frozen=True)
class TensorSpec:
    """Shape and kind of one checkpoint tensor (what ``load_weights`` checks against)."""

    shape: tuple[int, ...]
    floating: bool


def checkpoint_specs(folder: str | os.PathLike) -> dict[str, TensorSpec]:
    """Names, shapes and float-ness of the tensors of a ``save_pretrained`` folder.

    Reads only the safetensors headers (the files named by ``model.safetensors.index.json`` when
    there is one), or, without safetensors, the ``*.bin`` files memory-mapped. Raises ValueError
    when the folder holds no weights.
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        import json

        files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    specs: dict[str, TensorSpec] = {}
    if files:
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), framework="pt") as fh:
                for name in fh.keys():
                    sl = fh.get_slice(name)
                    dtype = str(sl.get_dtype()).upper()
                    specs[name] = TensorSpec(
                        tuple(int(d) for d in sl.get_shape()), dtype.startswith("F") or dtype.startswith("BF")
                    )
        return specs
    for f in sorted(folder.glob("*.bin")):
        for name, t in torch.load(f, map_location="cpu", mmap=True, weights_only=True).items():
            specs[name] = TensorSpec(tuple(t.shape), t.is_floating_point())
    if not specs:
        raise ValueError(f"model: no *.safetensors or *.bin weights in {folder}")
    return specs


def strip_wrappers(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def named_tensors(weights: Any) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a module, a mapping or an iterable of pairs; nothing is copied."""
    if isinstance(weights, torch.nn.Module):
        items = [(strip_wrappers(k), v) for k, v in weights.state_dict().items()]
    elif isinstance(weights, Mapping):
        items = list(weights.items())
    elif isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable):
        raise ValueError(
            f"weights must be a state dict (name -> tensor), a module or (name, tensor) pairs, "
            f"got {type(weights).__name__}"
        )
    else:
        items = []
        for i, pair in enumerate(weights):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"weights[{i}] must be a (name, tensor) pair")
            items.append((pair[0], pair[1]))
    for name, t in items:
        if not isinstance(name, str):
            raise ValueError(f"weights: tensor names must be str, got {type(name).__name__}")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"weights[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
    return items


def write_safetensors(state: Mapping[str, torch.Tensor], path: str) -> None:
    """CPU copies of ``state`` to ``path`` (written beside it, then renamed); tensors that share
    storage (tied weights) are cloned, as safetensors requires."""
    from safetensors.torch import save_file

    seen: set[tuple[int, int]] = set()
    out = {}
    for name, t in state.items():
        t = t.detach().to("cpu")
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[name] = t.clone() if key in seen or not t.is_contiguous() else t
        seen.add(key)
    save_file(out, path + ".tmp", metadata={"format": "pt"})
    os.replace(path + ".tmp", path)


def save_module(model: torch.nn.Module, state: Mapping[str, torch.Tensor], folder: str) -> None:
    """A start-up checkpoint of a transformers module: ``save_pretrained`` in one process; under
    torch.distributed (where save_pretrained writes on rank 0 only) the config, generation config
    and a safetensors file of ``state`` without a tied ``lm_head.weight``, on this rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        model.save_pretrained(folder, state_dict=dict(state))
        return
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    write_safetensors(
        {k: v for k, v in state.items() if not (tied and k == "lm_head.weight")},
        os.path.join(folder, "model.safetensors"),
    )


def nonfinite(t: torch.Tensor) -> bool:
    """True when a float tensor (this rank's shard of a DTensor) holds NaN or +-inf. One fp32 sum
    (NaN and inf propagate; 25x faster than ``isfinite(t).all()`` on the CPU), confirmed
    element-wise only when the sum is not finite (it may have overflowed)."""
    local = t.to_local() if is_dtensor(t) else t
    if not local.is_floating_point() or local.numel() == 0:
        return False
    if bool(torch.isfinite(local.sum(dtype=torch.float32))):
        return False
    return not bool(torch.isfinite(local).all())


def check_weights(
    items: list[tuple[str, torch.Tensor]], specs: Mapping[str, TensorSpec]
) -> list[tuple[str, torch.Tensor]]:
    """The pairs to load, in order, after checking them against the checkpoint ``specs``.

    Every checkpoint tensor must be present once, with its shape (global shape for a DTensor),
    floating point where the checkpoint's is, and finite (this rank's shard for a DTensor). An
    ``lm_head.weight`` absent from the checkpoint (tied embeddings) is dropped; any other name the
    checkpoint lacks is refused. Raises ValueError naming the first offending tensor.
    """
    seen: set[str] = set()
    keep = []
    for name, t in items:
        if name in seen:
            raise ValueError(f"weights: tensor {name!r} appears twice")
        seen.add(name)
        spec = specs.get(name)
        if spec is None:
            if name == "lm_head.weight" and any(
                k.endswith("embed_tokens.weight") and s.shape == tuple(t.shape) for k, s in specs.items()
            ):
                continue  # tied to the embeddings: the checkpoint does not store it
            raise ValueError(f"weights: unexpected tensor {name!r} (not in the engine's checkpoint)")
        if tuple(t.shape) != spec.shape:
            raise ValueError(f"weights[{name!r}] has shape {tuple(t.shape)}; the checkpoint has {spec.shape}")
        if spec.floating and not t.is_floating_point():
            raise ValueError(f"weights[{name!r}] has dtype {t.dtype}; the checkpoint's tensor is floating point")
        if nonfinite(t):
            raise ValueError(f"weights[{name!r}] holds NaN or infinite values")
        keep.append((name, t))
    missing = [k for k in specs if k not in seen]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"weights: missing tensor {missing[0]!r}{more}; a partial state dict is not loaded")
    return keep


def refresh_shared_weight_layers(model: torch.nn.Module) -> list[str]:
    """Re-run the post-load processing of every layer whose ``weight`` Parameter another layer
    also holds (a tied LM head and its embedding); returns their names. Runs inside a vLLM worker
    (``LLM.apply_model``). Only vLLM's unquantized embedding/head method on the CPU derives state
    from the weight there (a packed oneDNN copy): elsewhere this changes nothing."""
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return []
    holders: dict[int, list[tuple[str, torch.nn.Module]]] = {}
    for name, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None and isinstance(getattr(module, "quant_method", None), UnquantizedEmbeddingMethod):
            holders.setdefault(id(weight), []).append((name, module))
    refreshed = []
    for group in holders.values():
        if len(group) > 1:
            for name, module in group:
                module.quant_method.process_weights_after_loading(module)
                refreshed.append(name)
    return refreshed
