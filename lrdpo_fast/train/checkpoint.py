"""Training checkpoints: weights + tokenizer (``save_pretrained``, safetensors) and trainer state.

A checkpoint folder ``output_dir/checkpoint-<step>/`` holds
- ``config.json`` + ``model.safetensors`` (loadable with ``AutoModelForCausalLM.from_pretrained``),
  the tokenizer files, ``train_config.yaml``;
- ``trainer_state.pt``: optimizer and LR-scheduler state, step / epoch / position in the epoch,
  RNG states, and the reference log-probs the run trains against (so a resumed run uses the
  original reference even though it starts from later weights).
Resuming on the CPU continues bit-for-bit.

Safety: the trainer state holds only tensors and plain Python values (the RNG states as tensors
and lists, never pickled objects), so it is read with ``torch.load(weights_only=True)``: a
checkpoint folder from elsewhere cannot run code when resumed. Weights are safetensors only.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

STATE_FILE = "trainer_state.pt"
CHECKPOINT_PREFIX = "checkpoint-"


def rng_state() -> dict:
    """Python, numpy (if installed), torch CPU and CUDA generator states, as tensors, lists and
    numbers only (loadable with ``torch.load(weights_only=True)``)."""
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    except ImportError:
        pass
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model(model, path: str | os.PathLike, *, tokenizer=None, state_dict: dict | None = None) -> str:
    """``save_pretrained`` (safetensors) of ``model`` and ``tokenizer`` into ``path``.

    ``state_dict``: full tensors to write instead of ``model.state_dict()`` (sharded models).
    The model's attention implementation is written as "sdpa" when it was switched to
    lrdpo-fast's varlen attention, so the folder loads anywhere.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    prev = getattr(config, "_attn_implementation", None)
    swap = prev == "lrdpo_varlen"
    if swap:
        config._attn_implementation = "sdpa"
    try:
        model.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
    finally:
        if swap:
            config._attn_implementation = prev
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return str(path)


def load_model_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``save_pretrained`` folder (single or sharded safetensors), on the CPU.
    ValueError naming the file when one is missing, cut or not safetensors."""
    path = Path(path)
    single = path / "model.safetensors"
    if single.is_file():
        return _read_safetensors(single)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        import json

        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"weights index {str(index)!r} is damaged ({type(e).__name__}: {e})") from None
        out: dict[str, torch.Tensor] = {}
        for s in shards:
            out.update(_read_safetensors(path / s))
        return out
    raise ValueError(f"checkpoint path {str(path)!r} holds no model.safetensors")


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not file.is_file():
        raise ValueError(f"weights file {str(file)!r} is missing")
    try:
        return load_file(str(file))
    except Exception as e:  # SafetensorError (cut, not safetensors), OSError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"weights file {str(file)!r} cannot be read ({first}); it is damaged or incomplete") from None


def apply_model_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` into ``model`` in place; tied duplicates may be missing, nothing else."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if isinstance(getattr(model, "_tied_weights_keys", None), dict):
        tied = set(model._tied_weights_keys)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def save_trainer_state(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (optimizer, scheduler, counters, RNG, reference log-probs) with torch.save."""
    Path(path).mkdir(parents=True, exist_ok=True)
    torch.save(state, Path(path) / STATE_FILE)


def load_trainer_state(path: str | os.PathLike) -> dict:
    """Read what ``save_trainer_state`` wrote (``weights_only=True``: tensors and plain values,
    no code runs); ValueError naming ``path`` when absent, unreadable or holding other objects."""
    f = Path(path) / STATE_FILE
    if not f.is_file():
        raise ValueError(f"checkpoint path {str(path)!r} has no {STATE_FILE}: not a trainer checkpoint")
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle (refused by the weights-only unpickler)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"checkpoint file {str(f)!r} cannot be read as a trainer state (weights-only load: {first})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint file {str(f)!r} does not hold a trainer state mapping")
    return state


def latest_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """Path of the highest-step ``checkpoint-<step>`` folder in ``output_dir``, or None."""
    d = Path(output_dir)
    if not d.is_dir():
        return None
    best = None
    for p in d.iterdir():
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / STATE_FILE).is_file():
            try:
                step = int(p.name[len(CHECKPOINT_PREFIX) :])
            except ValueError:
                continue
            if best is None or step > best[0]:
                best = (step, p)
    return None if best is None else str(best[1])
