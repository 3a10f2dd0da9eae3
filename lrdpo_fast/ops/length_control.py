"""Length control inside the per-sequence log-prob sums: LD-DPO and SamPO token weights, and WPO.

A token weight multiplies each token's log-prob inside its sequence's sum (forward and backward);
the builders here make them for a packed batch of pairs ``[c0, r0, c1, r1, ...]`` whose response
tokens are the scored positions (labels != ignore_index), in order. With l_p = min(|c|, |r|):
- LD-DPO (``ld_token_weights``): 1 on each response's first l_p tokens, ``ld_alpha`` on the rest;
- SamPO (``sampo_token_weights``): 1 on l_p positions of each response drawn uniformly without
  replacement (a generator seeded per pair), 0 elsewhere.
WPO is not a token weight: ``wpo_log_weights`` is the per-sequence log of the WPO weight, the mean
over response tokens of log p(y_t) - log sum_v p_v^2 (the fused passes reduce sum p^2 on the fly).
"""

from __future__ import annotations

import torch

from .checks import check_number

__all__ = ["check_token_weights", "ld_token_weights", "sampo_token_weights", "wpo_log_weights"]


def check_token_weights(token_weights, n_tokens: int, device: torch.device) -> None:
    """ValueError naming ``token_weights`` unless it is None or a finite, non-negative float32
    tensor [n_tokens] on ``device``."""
    if token_weights is None:
        return
    t = token_weights
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"token_weights must be a float32 tensor [{n_tokens}] or None, got {type(t).__name__}")
    if t.dim() != 1 or t.shape[0] != n_tokens:
        raise ValueError(f"token_weights must have shape [{n_tokens}] (one per token), got {tuple(t.shape)}")
    if t.dtype != torch.float32:
        raise ValueError(f"token_weights must be float32, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"token_weights is on {t.device}, the hidden states on {device}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("token_weights contains non-finite values")
    if bool((t < 0).any()):
        raise ValueError("token_weights must be >= 0 (a negative weight flips a token's log-prob)")


def _response_ranks(labels: torch.Tensor, cu_seqlens: torch.Tensor, ignore_index: int):
    """(scored bool [N], rank int64 [N]: 1-based position of each scored token among its
    sequence's scored tokens, lengths int64 [S], seq_ids int64 [N]) of a packed batch."""
    n = labels.shape[0]
    if cu_seqlens.dim() != 1 or (cu_seqlens.numel() - 1) % 2:
        raise ValueError("cu_seqlens must describe an even number of sequences in pair order [c0, r0, c1, r1, ...]")
    if cu_seqlens.numel() < 1 or int(cu_seqlens[-1]) != n:
        raise ValueError(f"cu_seqlens must end at the number of tokens {n}")
    cu = cu_seqlens.to(labels.device).long()
    seq_ids = torch.repeat_interleave(
        torch.arange(cu.numel() - 1, device=labels.device), cu[1:] - cu[:-1], output_size=n
    )
    scored = labels != ignore_index
    csum = torch.cumsum(scored.long(), 0)
    starts = cu_seqlens[:-1].long().to(labels.device)
    before = torch.where(starts > 0, csum[(starts - 1).clamp(min=0)], torch.zeros_like(starts))
    rank = csum - before.index_select(0, seq_ids)
    lengths = torch.zeros(cu_seqlens.numel() - 1, dtype=torch.int64, device=labels.device)
    lengths.index_add_(0, seq_ids, scored.long())
    return scored, rank, lengths, seq_ids


def _shared_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """int64 [S]: l_p = min(|c|, |r|) of each sequence's pair, repeated for both sides."""
    return torch.minimum(lengths[0::2], lengths[1::2]).repeat_interleave(2)


def ld_token_weights(
    labels: torch.Tensor, cu_seqlens: torch.Tensor, ld_alpha: float, ignore_index: int = -100
) -> torch.Tensor:
    """LD-DPO's token weights of a packed batch of pairs (TRL's shared and tail masks).

    labels int [N] (shifted, ignore_index off the responses), cu_seqlens int [S+1] (S even, pair
    order [c0, r0, ...]); ld_alpha in [0, 1] (1 is DPO). Returns float32 [N] on labels' device:
    1 on each response's first l_p scored tokens, ld_alpha on its later ones, 0 where ignored.
    """
    check_number("ld_alpha", ld_alpha, 0.0, 1.0)
    scored, rank, lengths, seq_ids = _response_ranks(labels, cu_seqlens, ignore_index)
    shared = rank <= _shared_lengths(lengths).index_select(0, seq_ids)
    w = torch.where(shared, 1.0, float(ld_alpha)).to(torch.float32)
    return torch.where(scored, w, torch.zeros_like(w))


def _pair_seeds(seed, n_pairs: int) -> list[int]:
    """One int seed per pair: ``seed`` an int (pair p gets a mix of (seed, p)) or a sequence /
    int tensor of n_pairs seeds (the trainer passes one per pair and epoch)."""
    if isinstance(seed, bool):
        raise ValueError(f"seed must be an int or {n_pairs} ints, got {seed!r}")
    if isinstance(seed, int):
        return [seed * 1_000_003 + p for p in range(n_pairs)]  # data.seeds.stream_seed's formula
    vals = seed.tolist() if isinstance(seed, torch.Tensor) else list(seed)
    if len(vals) != n_pairs or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise ValueError(f"seed must be an int or {n_pairs} ints (one per pair), got {seed!r}")
    return [int(v) for v in vals]


def sampo_token_weights(labels: torch.Tensor, cu_seqlens: torch.Tensor, seed, ignore_index: int = -100) -> torch.Tensor:
    """SamPO's token weights of a packed batch of pairs: 1 on l_p response positions of each
    sequence drawn uniformly without replacement, 0 elsewhere.

    labels int [N], cu_seqlens int [S+1] as in ``ld_token_weights``; seed: an int, or one int per
    pair (a sequence or int tensor [P]); pair p draws from a CPU generator seeded with its seed,
    so the same seed gives the same positions (policy and reference alike). Returns float32 [N].
    """
    scored, rank, lengths, seq_ids = _response_ranks(labels, cu_seqlens, ignore_index)
    n_pairs = lengths.numel() // 2
    seeds = _pair_seeds(seed, n_pairs)
    lens = lengths.tolist()
    picked = []  # per sequence: the 1-based ranks kept
    for p in range(n_pairs):
        g = torch.Generator().manual_seed(seeds[p] % (2**63))
        lp = min(lens[2 * p], lens[2 * p + 1])
        for s in (2 * p, 2 * p + 1):
            keep = torch.zeros(lens[s] + 1, dtype=torch.bool)
            keep[torch.randperm(lens[s], generator=g)[:lp] + 1] = True
            picked.append(keep)
    flat = torch.cat(picked) if picked else torch.zeros(0, dtype=torch.bool)
    # rank r of sequence s sits at offset (sum of earlier lens + s) + r in ``flat``
    offsets = torch.cumsum(torch.tensor([0] + [n + 1 for n in lens[:-1]], dtype=torch.int64), 0)
    at = (offsets.to(labels.device).index_select(0, seq_ids) + rank.clamp(min=0)).cpu()
    keep = flat[at].to(labels.device) & scored
    return keep.to(torch.float32)


def wpo_log_weights(token_logp: torch.Tensor, log_sum_sq: torch.Tensor, seq_ids: torch.Tensor, lengths: torch.Tensor):
    """float32 [S] log WPO weight per sequence (no gradient): the mean over its response tokens
    of token_logp - log_sum_sq (both float [N], 0 off the responses); seq_ids int64 [N],
    lengths int64 [S] scored tokens (a sequence without any gets log-weight 0, as TRL's clamp)."""
    tot = torch.zeros(lengths.numel(), dtype=torch.float32, device=token_logp.device)
    tot.index_add_(0, seq_ids, (token_logp.detach() - log_sum_sq).float())
    return tot / lengths.clamp(min=1).to(torch.float32)


def pair_weights(log_w: torch.Tensor) -> torch.Tensor:
    """float32 [P] WPO pair weights w_chosen * w_rejected from the per-sequence log-weights [S]."""
    return torch.exp(log_w[0::2] + log_w[1::2])
