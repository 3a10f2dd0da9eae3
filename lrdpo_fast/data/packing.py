"""Padding-free packing: ``PackedBatch``, ``pack_pairs`` and token-budget micro-batches.

Layout: pairs become sequences [c0, r0, c1, r1, ...] (chosen at even, rejected at odd sequence
indices) concatenated into one flat token stream. Labels are ALREADY SHIFTED: ``labels[t]`` is the
token that follows t inside the same sequence, -100 on prompt positions and at the last token of
every sequence, so nothing is scored across a boundary. A response of R tokens (incl. EOS) gives
exactly R scored labels, at positions prompt_len-1 ... seq_len-2 of its sequence.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields

import torch

from .records import IGNORE_INDEX, PairExample


@dataclass
class PackedBatch:
    """A packed micro-batch of S = 2 * num_pairs sequences and N tokens, no padding.

    Attributes:
        input_ids: int64 [N] token ids.
        position_ids: int64 [N], restarting at 0 for every sequence.
        labels: int64 [N], shifted (see module docstring), -100 where nothing is scored.
        cu_seqlens: int32 [S+1], sequence offsets (0, ..., N).
        max_seqlen: int, the longest sequence.
        response_lengths: int64 [S], scored tokens per sequence (response incl. EOS).
        ref_logps: float32 [S] stored reference log-probs (chosen/rejected interleaved) or None.
        num_truncated_tokens: int, tokens dropped by truncation over the batch's pairs.
        num_truncated_pairs: int, pairs with any truncation.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    response_lengths: torch.Tensor
    ref_logps: torch.Tensor | None = None
    num_truncated_tokens: int = 0
    num_truncated_pairs: int = 0

    def __post_init__(self) -> None:
        """Shapes only (no value is read: no device sync): a hand-built batch whose per-token
        fields disagree would otherwise score the wrong tokens silently."""
        n = self.input_ids.numel()
        for name in ("input_ids", "position_ids", "labels"):
            t = getattr(self, name)
            if t.dim() != 1 or t.numel() != n:
                raise ValueError(
                    f"PackedBatch: {name} has shape {tuple(t.shape)}; input_ids, position_ids and labels "
                    f"must all be 1-D of one length (input_ids has {n})"
                )
        s = self.cu_seqlens.numel() - 1
        if self.cu_seqlens.dim() != 1 or s < 1:
            raise ValueError(
                f"PackedBatch: cu_seqlens must be 1-D [S+1] with S >= 1, got {tuple(self.cu_seqlens.shape)}"
            )
        for name in ("response_lengths", "ref_logps"):
            t = getattr(self, name)
            if t is not None and t.numel() != s:
                raise ValueError(f"PackedBatch: {name} has {t.numel()} values for {s} sequences (cu_seqlens)")

    @property
    def num_pairs(self) -> int:
        """Number of preference pairs (S // 2)."""
        return (self.cu_seqlens.numel() - 1) // 2

    @property
    def num_sequences(self) -> int:
        """Number of sequences S."""
        return self.cu_seqlens.numel() - 1

    @property
    def num_tokens(self) -> int:
        """Number of tokens N (all real: a packed batch has no padding)."""
        return self.input_ids.numel()

    @property
    def num_padding_tokens(self) -> int:
        """Always 0: packing wastes no token."""
        return 0

    @property
    def ref_chosen_logps(self) -> torch.Tensor | None:
        """float32 [num_pairs] stored chosen reference log-probs, or None."""
        return None if self.ref_logps is None else self.ref_logps[0::2]

    @property
    def ref_rejected_logps(self) -> torch.Tensor | None:
        """float32 [num_pairs] stored rejected reference log-probs, or None."""
        return None if self.ref_logps is None else self.ref_logps[1::2]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        """A copy with every tensor on ``device`` (ints and dtypes unchanged)."""
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
        return PackedBatch(**kw)

    def metrics(self) -> dict[str, float]:
        """Batch bookkeeping: pairs, tokens, padding (0) and truncation counts, as floats."""
        return {
            "batch/pairs": float(self.num_pairs),
            "batch/tokens": float(self.num_tokens),
            "batch/padding_tokens": 0.0,
            "batch/truncated_tokens": float(self.num_truncated_tokens),
            "batch/truncated_pairs": float(self.num_truncated_pairs),
        }


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence values [S] (interleaved c0, r0, c1, r1, ...) -> (chosen [S/2], rejected [S/2])."""
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.numel() % 2:
        raise ValueError("values must be a 1-D tensor with an even number of entries (chosen/rejected interleaved)")
    return values[0::2], values[1::2]


def _check_examples(examples) -> None:
    if not isinstance(examples, Sequence) or isinstance(examples, (str, bytes)):
        raise ValueError(f"examples must be a sequence of PairExample, got {type(examples).__name__}")
    for i, ex in enumerate(examples):
        if not isinstance(ex, PairExample):
            raise ValueError(f"examples[{i}] must be a PairExample, got {type(ex).__name__}")


def pack_pairs(examples: Sequence[PairExample]) -> PackedBatch:
    """Pack pairs into one flat, padding-free ``PackedBatch`` on the CPU.

    Args:
        examples: non-empty sequence of PairExample (P prompt tokens >= 1, responses >= 1 token).

    Returns:
        PackedBatch: input_ids/position_ids/labels int64 [N], cu_seqlens int32 [2*len+1],
        response_lengths int64 [2*len], ref_logps float32 [2*len] if EVERY example stores
        reference log-probs, else None.

    Raises:
        ValueError naming ``examples``: empty, wrong item types, or reference log-probs stored
        on only some of the pairs.
    """
    _check_examples(examples)
    if len(examples) == 0:
        raise ValueError("examples is empty: a packed batch needs at least one pair")
    n_ref = sum(ex.has_ref for ex in examples)
    if 0 < n_ref < len(examples):
        raise ValueError(f"examples: {n_ref} of {len(examples)} pairs store reference log-probs; all or none must")
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    cu = [0]
    resp_len: list[int] = []
    for ex in examples:
        p = ex.prompt_ids
        for resp in (ex.chosen_ids, ex.rejected_ids):
            seq_len = len(p) + len(resp)
            ids.extend(p)
            ids.extend(resp)
            labels.extend([IGNORE_INDEX] * (len(p) - 1))
            labels.extend(resp)
            labels.append(IGNORE_INDEX)
            pos.extend(range(seq_len))
            cu.append(cu[-1] + seq_len)
            resp_len.append(len(resp))
    ref = None
    if n_ref:
        ref = torch.tensor(
            [v for ex in examples for v in (ex.ref_chosen_logps, ex.ref_rejected_logps)], dtype=torch.float32
        )
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.int64),
        position_ids=torch.tensor(pos, dtype=torch.int64),
        labels=torch.tensor(labels, dtype=torch.int64),
        cu_seqlens=torch.tensor(cu, dtype=torch.int32),
        max_seqlen=max(b - a for a, b in zip(cu[:-1], cu[1:])),
        response_lengths=torch.tensor(resp_len, dtype=torch.int64),
        ref_logps=ref,
        num_truncated_tokens=sum(ex.num_truncated_tokens for ex in examples),
        num_truncated_pairs=sum(ex.num_truncated_tokens > 0 for ex in examples),
    )


def token_budget_batches(
    examples: Sequence[PairExample],
    max_tokens_per_batch: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    max_pairs_per_batch: int | None = None,
) -> list[list[int]]:
    """Group pairs into micro-batches of at most ``max_tokens_per_batch`` packed tokens.

    Best-fit-decreasing bin packing on each pair's packed size (``PairExample.num_tokens``): a
    pair is never split and packed batches carry no padding at all.

    Args:
        examples: sequence of PairExample.
        max_tokens_per_batch: int > 0, token budget of one micro-batch.
        shuffle: False: batches in decreasing size order (deterministic, largest first, so an
            out-of-memory shows up at step 0). True: batch order shuffled with ``seed``.
        seed: int seed of the shuffle.
        max_pairs_per_batch: optional cap on pairs per micro-batch.

    Returns:
        list of lists of example indices (int), each list one micro-batch; every index appears
        exactly once. Pack one with ``pack_pairs([examples[i] for i in batch])``.

    Raises:
        ValueError naming max_tokens_per_batch when one pair alone exceeds it (truncate with
        ``tokenize_pair(max_length=...)`` or raise the budget), or naming a bad argument.
    """
    _check_examples(examples)
    if not isinstance(max_tokens_per_batch, int) or max_tokens_per_batch <= 0:
        raise ValueError(f"max_tokens_per_batch must be a positive int, got {max_tokens_per_batch!r}")
    if max_pairs_per_batch is not None and (not isinstance(max_pairs_per_batch, int) or max_pairs_per_batch <= 0):
        raise ValueError(f"max_pairs_per_batch must be a positive int or None, got {max_pairs_per_batch!r}")
    sizes = [ex.num_tokens for ex in examples]
    for i, n in enumerate(sizes):
        if n > max_tokens_per_batch:
            raise ValueError(
                f"max_tokens_per_batch={max_tokens_per_batch} is smaller than pair {i} ({n} packed tokens); "
                "raise the budget or truncate with tokenize_pair(max_length=...)"
            )
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    bins: list[list[int]] = []
    # Open bins as a sorted list of (remaining capacity, bin id): best fit = the smallest
    # remaining capacity that still holds the pair.
    open_bins: list[tuple[int, int]] = []
    for i in order:
        n = sizes[i]
        k = bisect.bisect_left(open_bins, (n, -1))
        if k < len(open_bins):
            room, b = open_bins.pop(k)
        else:
            room, b = max_tokens_per_batch, len(bins)
            bins.append([])
        bins[b].append(i)
        room -= n
        if room > 0 and (max_pairs_per_batch is None or len(bins[b]) < max_pairs_per_batch):
            bisect.insort(open_bins, (room, b))
    if shuffle:
        random.Random(seed).shuffle(bins)
    return bins


def packed_batches(
    examples: Sequence[PairExample], max_tokens_per_batch: int, **kwargs
) -> Iterator[tuple[list[int], PackedBatch]]:
    """Yield (example indices, PackedBatch) for every ``token_budget_batches`` micro-batch.

    kwargs: ``token_budget_batches``'s (shuffle, seed, max_pairs_per_batch).
    """
    for idx in token_budget_batches(examples, max_tokens_per_batch, **kwargs):
        yield idx, pack_pairs([examples[i] for i in idx])


def packing_stats(examples: Sequence[PairExample], batches: Sequence[Sequence[int]], max_tokens_per_batch: int) -> dict:
    """Summary of a batching: batches, pairs, tokens, padding tokens (0) and budget fill ratio.

    Returns dict of floats: ``num_batches``, ``num_pairs``, ``num_tokens``, ``padding_tokens``,
    ``fill_ratio`` (tokens / (batches * budget), in (0, 1]).
    """
    tokens = sum(examples[i].num_tokens for b in batches for i in b)
    n_b = len(batches)
    return {
        "num_batches": float(n_b),
        "num_pairs": float(sum(len(b) for b in batches)),
        "num_tokens": float(tokens),
        "padding_tokens": 0.0,
        "fill_ratio": tokens / (n_b * max_tokens_per_batch) if n_b else 0.0,
    }
