"""Loading local ``save_pretrained`` folders safely and with clear errors.

- the folder must exist, be a directory and hold a ``config.json`` (models) -> else ValueError
  naming the config key (``model``, ``ref_model``, ``tokenizer``, ...) and the path;
- weights come from safetensors only (``use_safetensors=True``: no pickle is ever unpickled);
- nothing is fetched from the Hub (``local_files_only=True``);
- ``trust_remote_code`` is off unless the caller passes True (a config option, never a default).
Any failure of transformers while reading the folder becomes a ValueError naming it, and so does
an architecture the packed training path cannot run (``families.check_packed``).
"""

from __future__ import annotations

import os
from pathlib import Path


def _check_dir(path, what: str, *, need_config: bool) -> str:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{what} must be a path to a local folder, got {path!r}")
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{what} folder {str(p)!r} does not exist")
    if not p.is_dir():
        raise ValueError(f"{what} {str(p)!r} is not a folder (a save_pretrained folder is expected)")
    if need_config and not (p / "config.json").is_file():
        raise ValueError(f"{what} folder {str(p)!r} has no config.json: not a save_pretrained model folder")
    return str(p)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_causal_lm(path, what: str = "model", *, trust_remote_code: bool = False, **kwargs):
    """``AutoModelForCausalLM.from_pretrained`` of a local folder (safetensors only)."""
    if not isinstance(trust_remote_code, bool):
        raise ValueError(f"trust_remote_code must be true or false, got {trust_remote_code!r}")
    folder = _check_dir(path, what, need_config=True)
    if not any(Path(folder).glob("*.safetensors")):
        raise ValueError(f"{what} folder {folder!r} holds no .safetensors weights (only safetensors are loaded)")
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, use_safetensors=True, local_files_only=True, trust_remote_code=trust_remote_code, **kwargs
        )
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{what} folder {folder!r} cannot be loaded ({type(e).__name__}: {_first_line(e)})") from None
    from .families import check_packed

    try:
        check_packed(model)  # an architecture the packed path would train wrongly is refused here
    except ValueError as e:
        raise ValueError(f"{what} folder {folder!r}: {e}") from None
    return model


def load_tokenizer(path, what: str = "tokenizer", *, trust_remote_code: bool = False):
    """``AutoTokenizer.from_pretrained`` of a local folder."""
    if not isinstance(trust_remote_code, bool):
        raise ValueError(f"trust_remote_code must be true or false, got {trust_remote_code!r}")
    folder = _check_dir(path, what, need_config=False)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{what} folder {folder!r} holds no loadable tokenizer ({type(e).__name__}: {_first_line(e)})"
        ) from None
