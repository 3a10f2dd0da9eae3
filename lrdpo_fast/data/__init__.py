"""Layer 2, data: preference records -> tokenized ``PairExample`` (records.py), files and datasets
(files.py), and padding-free packing into ``cu_seqlens`` batches (packing.py).

Imports torch; transformers and datasets only inside the functions that need them.
"""

from .files import load_hf_dataset, load_jsonl, load_pairs, read_jsonl, save_jsonl
from .packing import PackedBatch, pack_pairs, packed_batches, packing_stats, split_pairs, token_budget_batches
from .records import IGNORE_INDEX, PairExample, tokenize_pair, tokenize_pairs, tokenize_record

__all__ = [
    "IGNORE_INDEX",
    "PackedBatch",
    "PairExample",
    "load_hf_dataset",
    "load_jsonl",
    "load_pairs",
    "pack_pairs",
    "packed_batches",
    "packing_stats",
    "read_jsonl",
    "save_jsonl",
    "split_pairs",
    "token_budget_batches",
    "tokenize_pair",
    "tokenize_pairs",
    "tokenize_record",
]
