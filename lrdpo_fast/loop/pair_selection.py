"""The numeric side of ``build_pairs``: the valid samples of the candidate prompts as padded
arrays, the selection at one length alpha, and DICE's automatic alpha (``pairs`` module docstring)."""

from __future__ import annotations

import math
import random

import numpy as np

AUTO_ALPHA_MAX_POINTS = 512


class SelectionTable:
    """The valid samples of the candidate prompts as padded [G, K] arrays (K = most valid)."""

    def __init__(self, cands: list[tuple[int, list[int]]], groups: list, seed: int):
        G = len(cands)
        K = max((len(v) for _, v in cands), default=0)
        self.index = np.zeros((G, K), dtype=np.int64)  # original sample index
        self.score = np.zeros((G, K), dtype=np.float64)
        self.length = np.zeros((G, K), dtype=np.float64)
        self.valid = np.zeros((G, K), dtype=bool)
        self.key = np.full((G, K), np.inf)  # random priority (best_random)
        for r, (gi, valid) in enumerate(cands):
            n = len(valid)
            g = groups[gi]
            self.index[r, :n] = valid
            self.score[r, :n] = [g.scores[j] for j in valid]
            self.length[r, :n] = [g.samples[j].num_tokens for j in valid]
            self.valid[r, :n] = True
            perm = list(range(n))
            random.Random(f"build_pairs:{seed}:{gi}").shuffle(perm)
            self.key[r, :n] = perm

    def select(self, alpha: float, strategy: str, gap: float):
        """(chosen col [G], rejected col [G], kept mask [G]) at one alpha."""
        G = self.score.shape[0]
        rows = np.arange(G)
        shaped = self.score - alpha * self.length
        best = np.argmax(np.where(self.valid, shaped, -np.inf), axis=1)
        below = self.valid & (shaped[rows, best][:, None] - shaped > gap)
        if strategy == "best_worst":
            worst = np.argmin(np.where(self.valid, shaped, np.inf), axis=1)
            kept = below[rows, worst]
        else:
            worst = np.argmin(np.where(below, self.key, np.inf), axis=1)
            kept = below.any(axis=1)
        return best, worst, kept

    def length_gap(self, alpha: float, strategy: str, gap: float) -> float:
        """|mean(len_chosen - len_rejected)| at one alpha (inf when nothing is kept)."""
        best, worst, kept = self.select(alpha, strategy, gap)
        if not kept.any():
            return math.inf
        rows = np.arange(len(kept))[kept]
        return abs(float(np.mean(self.length[rows, best[kept]] - self.length[rows, worst[kept]])))

    def alpha_grid(self, gap: float) -> np.ndarray:
        """0, midpoints of consecutive positive breakpoints, 2x the largest (module docstring)."""
        if self.score.size == 0:
            return np.zeros(1)
        ds = self.score[:, :, None] - self.score[:, None, :]  # s_i - s_j
        dl = self.length[:, :, None] - self.length[:, None, :]  # len_i - len_j
        both = self.valid[:, :, None] & self.valid[:, None, :] & (dl > 0)
        ds, dl = ds[both], dl[both]
        shifts = (0.0,) if gap == 0 else (0.0, gap, -gap)
        points = np.concatenate([(ds - c) / dl for c in shifts]) if ds.size else np.zeros(0)
        points = np.unique(points[points > 0])
        if points.size > AUTO_ALPHA_MAX_POINTS:
            points = np.unique(np.quantile(points, np.linspace(0.0, 1.0, AUTO_ALPHA_MAX_POINTS)))
        if points.size == 0:
            return np.zeros(1)
        mids = (points[:-1] + points[1:]) / 2
        return np.concatenate([[0.0], mids, [2 * points[-1]]])

    def choose_alpha(self, length_alpha: float | str, strategy: str, gap: float) -> tuple[float, int]:
        """(alpha, grid size): a fixed alpha as it is, or "auto": the first (smallest) alpha of
        the grid that minimizes the absolute mean length gap of the kept pairs."""
        if length_alpha != "auto":
            return float(length_alpha), 1
        if self.score.shape[0] == 0:
            return 0.0, 1
        grid = self.alpha_grid(gap)
        objective = [self.length_gap(float(a), strategy, gap) for a in grid]
        return float(grid[int(np.argmin(objective))]), int(grid.size)
