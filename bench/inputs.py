"""The seeded kernel problem every contender gets: packed pairs of varied length, hidden states,
an LM head, shifted labels with the prompt masked, and precomputed reference log-probs.

Realistic scales: hidden ~ N(0, 1) * HIDDEN_SCALE and weight ~ N(0, 1/d) (std 1/sqrt(d)), so the
logits are N(0, HIDDEN_SCALE^2): O(1..10) with a max near 8 over a 32k vocabulary. The reference
log-probs are the exact sequence log-probs of ``hidden + REF_NOISE * noise`` under the same head,
so the DPO margins beta * Delta are O(1) (neither saturated nor vanishing), as early in training.
The same (N, d, V, dtype, seed) gives bit-identical inputs in every worker process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

HIDDEN_SCALE = 2.0
REF_NOISE = 0.3
PROMPT_FRACTION = 0.3
IGNORE_INDEX = -100
BETA = 0.1
ALPHA = 0.0  # Liger's DPO has no length term; alpha only shifts the margin, the work is the same

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Problem:
    hidden: torch.Tensor  # [N, d] dtype, leaf (no grad; contenders clone it as their leaf)
    ref_hidden: torch.Tensor  # [N, d] the reference model's hidden states (for Liger's check only)
    weight: torch.Tensor  # [V, d] dtype
    labels: torch.Tensor  # int64 [N], IGNORE_INDEX on prompt tokens and each sequence's last
    cu_seqlens: torch.Tensor  # int32 [S + 1], sequences in pair order c0, r0, c1, r1, ...
    seq_ids: torch.Tensor  # int64 [N]
    lengths: torch.Tensor  # int64 [S] scored tokens per sequence
    ref_logps: torch.Tensor  # float32 [S]
    seq_lens: list[int]  # tokens per sequence (prompt + response)

    @property
    def n_tokens(self) -> int:
        return self.hidden.shape[0]

    @property
    def n_seqs(self) -> int:
        return len(self.seq_lens)

    @property
    def n_pairs(self) -> int:
        return self.n_seqs // 2

    @property
    def scored_tokens(self) -> int:
        return int(self.lengths.sum())


def mean_sequence_length(n_tokens: int) -> int:
    """Typical sequence length for a batch of ``n_tokens``: ~16 sequences, 8 to 1024 tokens each."""
    return int(min(1024, max(8, n_tokens // 16)))


def sequence_lengths(n_tokens: int, gen: torch.Generator) -> list[int]:
    """An even number of long-tailed (log-normal) sequence lengths, each >= 4, summing to n_tokens."""
    mean = mean_sequence_length(n_tokens)
    n_pairs = max(1, round(n_tokens / (2 * mean)))
    n_seqs = 2 * n_pairs
    raw = torch.exp(torch.randn(n_seqs, generator=gen, dtype=torch.float64) * 0.6)
    lens = [max(4, int(x)) for x in (raw / raw.sum() * n_tokens).tolist()]
    if sum(lens) > n_tokens and n_tokens >= 4 * n_seqs:
        while sum(lens) > n_tokens:  # clamping to 4 overshot: take from the longest
            i = max(range(n_seqs), key=lens.__getitem__)
            lens[i] -= sum(lens) - n_tokens if lens[i] - (sum(lens) - n_tokens) >= 4 else lens[i] - 4
    lens[max(range(n_seqs), key=lens.__getitem__)] += n_tokens - sum(lens)
    if min(lens) < 1 or sum(lens) != n_tokens:
        raise ValueError(f"cannot split {n_tokens} tokens into {n_seqs} sequences")
    return lens


def shifted_labels(seq_lens: list[int], vocab: int, gen: torch.Generator) -> torch.Tensor:
    """int64 [N]: random token ids, IGNORE_INDEX on the leading PROMPT_FRACTION of each sequence
    (at least one prompt token) and on its last position (no next token)."""
    labels = torch.randint(0, vocab, (sum(seq_lens),), generator=gen)
    start = 0
    for n in seq_lens:
        prompt = max(1, int(math.ceil(PROMPT_FRACTION * n)))
        labels[start : start + min(prompt, n)] = IGNORE_INDEX
        labels[start + n - 1] = IGNORE_INDEX
        start += n
    return labels


@torch.no_grad()
def exact_sequence_logps(hidden, weight, labels, seq_ids, n_seqs, chunk: int = 1024) -> torch.Tensor:
    """float32 [S] summed log p(label), chunked plain PyTorch (independent of every contender)."""
    out = torch.zeros(n_seqs, dtype=torch.float32, device=hidden.device)
    w = weight.float()
    for s in range(0, hidden.shape[0], chunk):
        lab = labels[s : s + chunk]
        logits = hidden[s : s + chunk].float() @ w.t()
        lp = torch.log_softmax(logits, dim=-1).gather(1, lab.clamp(min=0)[:, None]).squeeze(1)
        lp = torch.where(lab != IGNORE_INDEX, lp, torch.zeros_like(lp))
        out.index_add_(0, seq_ids[s : s + chunk], lp)
        del logits
    return out


def make_problem(n_tokens: int, d: int, vocab: int, dtype: str = "fp32", device: str = "cpu", seed: int = 0) -> Problem:
    """Build the seeded problem on ``device`` (generated on the CPU, then moved: identical everywhere)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    seq_lens = sequence_lengths(n_tokens, gen)
    labels = shifted_labels(seq_lens, vocab, gen)
    dt = DTYPES[dtype]
    hidden = (torch.randn(n_tokens, d, generator=gen) * HIDDEN_SCALE).to(device=device, dtype=dt)
    noise = (torch.randn(n_tokens, d, generator=gen) * (HIDDEN_SCALE * REF_NOISE)).to(device=device, dtype=dt)
    ref_hidden = hidden + noise
    del noise
    weight = (torch.randn(vocab, d, generator=gen) / math.sqrt(d)).to(device=device, dtype=dt)
    labels = labels.to(device)
    cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seq_lens), 0)
    cu = cu.to(device)
    counts = torch.tensor(seq_lens, device=device)
    seq_ids = torch.repeat_interleave(torch.arange(len(seq_lens), device=device), counts)
    lengths = torch.zeros(len(seq_lens), dtype=torch.int64, device=device).index_add_(
        0, seq_ids, (labels != IGNORE_INDEX).long()
    )
    ref_logps = exact_sequence_logps(ref_hidden, weight, labels, seq_ids, len(seq_lens))
    return Problem(hidden, ref_hidden, weight, labels, cu, seq_ids, lengths, ref_logps, seq_lens)


def dpo_from_sequence_logps(seq_logps: torch.Tensor, p: Problem) -> torch.Tensor:
    """The pair loss every peer contender finishes with: mean over pairs of -log sigmoid(z),
    z = beta * Delta + alpha * (L_w - L_l), sequences in pair order."""
    pi_w, pi_l = seq_logps[0::2], seq_logps[1::2]
    ref_w, ref_l = p.ref_logps[0::2], p.ref_logps[1::2]
    len_w, len_l = p.lengths[0::2].float(), p.lengths[1::2].float()
    z = BETA * ((pi_w - ref_w) - (pi_l - ref_l)) + ALPHA * (len_w - len_l)
    return -torch.nn.functional.logsigmoid(z).mean()


def padded_pairs(p: Problem, values: torch.Tensor, fill) -> torch.Tensor:
    """[N, ...] packed values -> [2P, T_max, ...] in Liger's layout: all chosen rows, then all rejected."""
    t_max = max(p.seq_lens)
    out = values.new_full((p.n_seqs, t_max, *values.shape[1:]), fill)
    cu = p.cu_seqlens.tolist()
    order = list(range(0, p.n_seqs, 2)) + list(range(1, p.n_seqs, 2))
    for row, s in enumerate(order):
        out[row, : cu[s + 1] - cu[s]] = values[cu[s] : cu[s + 1]]
    return out


def unpad_pairs(p: Problem, padded: torch.Tensor) -> torch.Tensor:
    """Inverse of ``padded_pairs`` for [2P, T_max, ...] -> packed [N, ...]."""
    cu = p.cu_seqlens.tolist()
    order = list(range(0, p.n_seqs, 2)) + list(range(1, p.n_seqs, 2))
    parts = [None] * p.n_seqs
    for row, s in enumerate(order):
        parts[s] = padded[row, : cu[s + 1] - cu[s]]
    return torch.cat(parts, 0)
