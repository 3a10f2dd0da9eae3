"""Preference pairs from files and datasets: JSONL read/write, local ``datasets`` files and folders,
and ``load_pairs``, which takes any supported source. Errors name the file and line."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .records import PairExample, check_token_ids, tokenize_pairs, tokenize_record


def _jsonl_lines(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line; ValueError naming the file and line."""
    if not os.path.isfile(path):
        raise ValueError(f"path {str(path)!r} is not a file")
    try:
        with open(path, "rb") as f:
            raw_lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"path {str(path)!r} cannot be read ({e.strerror or e})") from None
    out = []
    for lineno, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"path {str(path)!r} line {lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at "
                f"column {e.start + 1}); JSONL files must be UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"path {str(path)!r} line {lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"path {str(path)!r} line {lineno}: expected a JSON object, got {type(rec).__name__}")
        out.append((lineno, rec))
    return out


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Raw records of a JSONL file (UTF-8, one JSON object per non-blank line).

    Raises ValueError naming ``path`` (missing or unreadable file) or the line number (bad
    encoding, bad JSON, not an object).
    """
    return [rec for _, rec in _jsonl_lines(path)]


def load_jsonl(path: str | os.PathLike, tokenizer=None, **kwargs) -> list[PairExample]:
    """Read a JSONL file of preference records and tokenize them (kwargs: ``tokenize_record``'s).

    Returns list[PairExample]. A bad record raises ValueError naming the file and its line.
    """
    out = []
    for lineno, rec in _jsonl_lines(path):
        try:
            out.append(tokenize_record(rec, tokenizer, **kwargs))
        except ValueError as e:
            raise ValueError(f"path {str(path)!r} line {lineno}: {e}") from None
    return out


def save_jsonl(examples: Sequence[PairExample], path: str | os.PathLike) -> None:
    """Write tokenized examples (with any stored reference log-probs) as pre-tokenized JSONL."""
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            if not isinstance(ex, PairExample):
                raise ValueError(f"examples must hold PairExample items, got {type(ex).__name__}")
            f.write(json.dumps(ex.to_dict()) + "\n")


_DATASET_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def load_hf_dataset(dataset, tokenizer=None, *, split: str = "train", **kwargs) -> list[PairExample]:
    """Tokenize a Hugging Face ``datasets`` object or a LOCAL data file / saved dataset folder.

    Args:
        dataset: ``datasets.Dataset``, ``datasets.DatasetDict`` (``split`` is taken), or a local
            path: a .json/.jsonl/.parquet/.csv/.arrow file or a folder written by
            ``save_to_disk``. Nothing is fetched from the Hub.
        tokenizer, kwargs: as for ``tokenize_record``.

    Returns list[PairExample].
    """
    import datasets  # heavy optional import

    if isinstance(dataset, (str, os.PathLike)):
        path = os.fspath(dataset)
        if os.path.isdir(path):
            dataset = datasets.load_from_disk(path)
        elif os.path.isfile(path):
            ext = os.path.splitext(path)[1].lower()
            if ext not in _DATASET_BUILDERS:
                raise ValueError(f"dataset file {path!r} has unsupported extension {ext!r}")
            dataset = datasets.load_dataset(_DATASET_BUILDERS[ext], data_files=path, split="train")
        else:
            raise ValueError(f"dataset path {path!r} does not exist (only local files are supported)")
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"split {split!r} not in the DatasetDict (has {list(dataset)})")
        dataset = dataset[split]
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"dataset must be a datasets.Dataset, DatasetDict or a local path, got {type(dataset).__name__}"
        )
    return tokenize_pairs(iter(dataset), tokenizer, **kwargs)


def load_pairs(
    pairs: Any,
    tokenizer,
    *,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    vocab_size: int | None = None,
) -> list[PairExample]:
    """Any supported pair source -> list[PairExample].

    ``pairs``: a JSONL path (str/Path), another local data file or saved-dataset folder, a
    ``datasets.Dataset``, a list of records (dicts with prompt/chosen/rejected as text, chat
    messages or token ids) or a list of ``PairExample``. ``vocab_size``: token ids must lie in
    [0, vocab_size) (default: the tokenizer's size; see ``tokenize_record``).
    """
    kw = dict(max_length=max_length, max_prompt_length=max_prompt_length, vocab_size=vocab_size)
    if isinstance(pairs, (str, os.PathLike)):
        p = Path(pairs)
        if p.is_file() and p.suffix == ".jsonl":
            out = load_jsonl(p, tokenizer, **kw)
        else:
            out = load_hf_dataset(p, tokenizer, **kw)
    elif isinstance(pairs, Sequence) and pairs and all(isinstance(x, PairExample) for x in pairs):
        out = list(pairs)
        for i, ex in enumerate(out):
            try:
                check_token_ids(ex, vocab_size)
            except ValueError as e:
                raise ValueError(f"pairs[{i}]: {e}") from None
    elif isinstance(pairs, Sequence) and not isinstance(pairs, (str, bytes)):
        out = tokenize_pairs(pairs, tokenizer, **kw)
    elif type(pairs).__module__.startswith("datasets"):
        out = load_hf_dataset(pairs, tokenizer, **kw)
    else:
        raise ValueError(
            f"pairs must be a JSONL path, a datasets.Dataset, or a list of records / PairExample, got {type(pairs).__name__}"
        )
    if not out:
        where = f" ({os.fspath(pairs)!r} holds no records)" if isinstance(pairs, (str, os.PathLike)) else ""
        raise ValueError(f"pairs is empty{where}: training needs at least one preference pair")
    return out


def read_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping in a YAML file (an empty file is ``{}``). ValueError naming the file (and the
    line for a syntax error) when it is missing, a folder, unreadable, not UTF-8, not YAML, or
    holds something other than a mapping."""
    import yaml

    p = Path(path)
    if not p.exists():
        raise ValueError(f"{what} path {str(p)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"{what} path {str(p)!r} is not a file")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ValueError(f"{what} {str(p)!r} cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what} {str(p)!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}), "
            "so not valid YAML (a YAML file must be utf-8)"
        ) from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"{what} {str(p)!r}{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{what} {str(p)!r} must hold a mapping of keys, got {type(values).__name__}")
    return values


def resolve_path(value: str | None, base: str | os.PathLike, keep: Sequence[str] = ("example",)) -> str | None:
    """``value`` as an absolute path string, a relative one taken against ``base`` (a config
    file's folder); None and the names in ``keep`` (``example``) are returned as they are."""
    if value is None or value in keep:
        return value
    p = Path(value)
    return str(p if p.is_absolute() else (Path(base) / p).resolve())
