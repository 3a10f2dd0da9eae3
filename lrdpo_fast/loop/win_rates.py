"""Win rates against a fixed baseline: win rate, length-controlled win rate (numpy only).

    res = lc_win_rate(policy_scores, baseline_scores, policy_lengths, baseline_lengths)  # dict
    res = compare_with_baseline(policy_records, baseline_records)  # the same, from {"score", "length"} records

A judge (any reward: ``judge(prompts, responses) -> list[float]``) scores the policy's response
and the baseline's response to the same prompt. From those two scores per prompt:

- ``win_rate`` (= ``hard_win_rate``): mean over prompts of the outcome 1 (policy scored higher),
  0.5 (equal scores) or 0 (lower). Scale-free, so it means the same for a Bradley-Terry reward
  model, a rule, or DICE's implicit reward (whose scale is arbitrary).
- ``bt_win_rate``: mean of the Bradley-Terry probability sigmoid(r_policy - r_baseline); only
  meaningful when the judge's scores are calibrated logits (a BT reward model).
- ``lc_win_rate``: the hard outcome with the response-length difference regressed out (the model
  below); ``lc_bt_win_rate`` the same for the BT probabilities.

The length-controlled model (in the spirit of AlpacaEval 2's length-controlled win rate)::

    d_i = len_policy_i - len_baseline_i              response lengths (tokens), NOT centered
    s   = sqrt(mean_i d_i^2 - (mean_i d_i)^2)        population std of d (ddof = 0)
    u_i = d_i / s                                    u_i = 0 for every i when s == 0
    P(policy wins on i) = sigmoid(a + c_t * tanh(u_i) + c_l * u_i)
    (a, c_t, c_l) = argmin  mean_i [softplus(z_i) - y_i z_i]        z_i = a + c_t tanh(u_i) + c_l u_i
                            + INTERCEPT_L2/2 * a^2 + LENGTH_L2/2 * (c_t^2 + c_l^2)
    lc = mean_i sigmoid(a + 0) = sigmoid(a)          the preference at equal length (u = 0)

Targets y_i: the hard outcome (1 / 0.5 / 0) for ``lc_win_rate``, so that with no length effect it
agrees with ``win_rate`` (an intercept-only fit gives sigmoid(a) = mean(y) up to the 1e-6 L2);
sigmoid(r_p - r_b) (soft labels) for ``lc_bt_win_rate``, which pairs with ``bt_win_rate``. The
soft-label fit is the one AlpacaEval uses; the hard one is the headline here because the judges
of this loop (rules, the implicit reward) have no calibrated scale.

Why two length terms. AlpacaEval's tanh alone saturates: when the policy is longer than the
baseline on nearly every prompt (the verbosity drift this loop exists to catch), tanh(u) is almost
constant, the length term becomes indistinguishable from the intercept, and the "length-controlled"
rate stays near the raw one (a judge with a per-token bias only, policy 80 +- 35 tokens longer:
tanh alone 0.78, raw 0.83, truth 0.50). The linear term u is the project's own judge model
(docs/algorithms.md: r_J = q + b |y|, whose Bradley-Terry log-odds are linear in d) and extrapolates to
u = 0; tanh keeps a saturating (capped) length bonus from bending it. Together they stay within
about 0.02 of the truth on linear and capped length judges whenever the two lengths overlap.
Nothing can recover the rate at equal length when no prompt has lengths near equal: check
``share_longer`` (the fraction of prompts where the policy is longer).

d is divided by its spread but not centered: centering would move the policy's average length
advantage into the intercept, i.e. into the "quality" part, which is what the estimate removes.
The L2 terms are fixed, in units of the mean loss: LENGTH_L2 = 1e-3 keeps the length slopes
finite when a length-only judge makes the outcomes separable by u (the slope could otherwise grow
without bound and drag the intercept anywhere inside the gap around u = 0); INTERCEPT_L2 = 1e-6
keeps a finite when the policy wins (or loses) every prompt. The fit is Newton's method with a
backtracking line search on this strictly convex loss, in float64, to a gradient below 1e-10.
Caveat: when the outcome is a pure function of length and no pair has equal length, the data do
not say what happens at d = 0; the estimate then leans on the L2 terms (a few points off 50%).

The evaluation (``loop/evaluation.py``: the public ``evaluate`` and the loop's per-row evaluation)
reaches these numbers through ``compare_with_baseline`` alone.

Only numpy (no torch, no vllm).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "INTERCEPT_L2",
    "LENGTH_L2",
    "check_vector",
    "compare_with_baseline",
    "fit_logistic",
    "lc_win_rate",
    "outcome",
    "sigmoid",
]

LENGTH_L2 = 1e-3
INTERCEPT_L2 = 1e-6
_MAX_NEWTON_STEPS = 100
_GRAD_TOL = 1e-10


def check_vector(name: str, value: Any, *, nonnegative: bool = False) -> np.ndarray:
    """``value`` as a float64 [n] array; ValueError naming ``name`` unless a non-empty 1-D
    sequence of finite real numbers (>= 0 when ``nonnegative``)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ValueError(f"{name} must be a list of numbers (one per prompt), got {type(value).__name__}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a list of real numbers: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one number per prompt), got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] is not finite ({arr[bad[0]]})")
    if nonnegative:
        neg = np.flatnonzero(arr < 0)
        if neg.size:
            raise ValueError(f"{name}[{neg[0]}] is negative ({arr[neg[0]]}); lengths are token counts >= 0")
    return arr


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    """The logistic function, float64, without overflow."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))


def _logistic_loss(w: np.ndarray, X: np.ndarray, y: np.ndarray, l2: np.ndarray) -> float:
    z = X @ w
    return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(l2 * w * w))


def fit_logistic(features: Any, targets: Any, l2: Any) -> np.ndarray:
    """Penalized logistic regression with soft targets, by Newton's method.

    Minimizes ``mean_i [softplus(X_i w) - y_i X_i w] + sum_j l2_j w_j^2 / 2`` (float64).

    Args:
        features: X, float [n, k] (include a column of ones for an intercept).
        targets: y, float [n], each in [0, 1] (0/1 labels, 0.5 for a tie, or probabilities).
        l2: float [k], each > 0 (makes the loss strictly convex, so the minimizer is unique even
            for separable data).
    Returns:
        w, float64 [k].
    Raises:
        ValueError naming the argument on bad shapes or values; RuntimeError if Newton does not
        reach a gradient below 1e-10 in 100 steps (not seen on well-posed inputs).
    """
    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    lam = np.asarray(l2, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [n, k] array, got shape {tuple(X.shape)}")
    if y.shape != (X.shape[0],):
        raise ValueError(f"targets must have shape [{X.shape[0]}], got {tuple(y.shape)}")
    if lam.shape != (X.shape[1],) or not np.all(lam > 0) or not np.all(np.isfinite(lam)):
        raise ValueError(f"l2 must be {X.shape[1]} finite numbers > 0, got {l2!r}")
    if not np.all(np.isfinite(X)):
        raise ValueError("features holds a non-finite value")
    if not np.all((y >= 0) & (y <= 1)):
        raise ValueError("targets must lie in [0, 1]")
    n = X.shape[0]
    w = np.zeros(X.shape[1])
    loss = _logistic_loss(w, X, y, lam)
    for _ in range(_MAX_NEWTON_STEPS):
        p = sigmoid(X @ w)
        grad = X.T @ (p - y) / n + lam * w
        if np.max(np.abs(grad)) < _GRAD_TOL:
            return w
        hess = (X.T * (p * (1.0 - p))) @ X / n + np.diag(lam)
        step = np.linalg.solve(hess, grad)
        slope = float(grad @ step)  # > 0: hess is positive definite
        t = 1.0
        while True:
            cand = w - t * step
            cand_loss = _logistic_loss(cand, X, y, lam)
            if cand_loss <= loss - 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        if not np.all(np.isfinite(cand)):
            raise RuntimeError("logistic fit diverged (non-finite coefficients)")
        w, loss = cand, cand_loss
    p = sigmoid(X @ w)
    grad = X.T @ (p - y) / n + lam * w
    if np.max(np.abs(grad)) < 1e-8:  # converged to float64 noise level
        return w
    raise RuntimeError(
        f"logistic fit did not converge in {_MAX_NEWTON_STEPS} Newton steps (gradient {np.max(np.abs(grad)):.3g})"
    )


def lc_win_rate(
    policy_scores: Sequence[float],
    baseline_scores: Sequence[float],
    policy_lengths: Sequence[float],
    baseline_lengths: Sequence[float],
) -> dict[str, Any]:
    """Win rate, Bradley-Terry win rate and their length-controlled versions, one pair per prompt.

    Args:
        policy_scores, baseline_scores: judge scores, float [P] each (any real scale).
        policy_lengths, baseline_lengths: response lengths, [P] each, >= 0 (tokens; a mean over
            samples or characters also works: only their differences over their spread matter).
    Returns:
        dict with
        - ``win_rate`` (float in [0, 1]): hard win rate, ties counted half (= ``hard_win_rate``);
        - ``lc_win_rate`` (float in [0, 1]): sigmoid(a) of the model in the module docstring,
          fitted to the hard outcomes;
        - ``bt_win_rate``: mean sigmoid(r_policy - r_baseline); ``lc_bt_win_rate``: the model
          fitted to those probabilities;
        - ``intercept`` (a), ``length_coef_tanh`` (c_t), ``length_coef_linear`` (c_l) of the hard
          fit and ``length_effect`` = c_t tanh(1) + c_l, the change in log-odds of a win for a
          policy one ``length_scale`` longer (> 0: the judge prefers longer); the same with a
          ``bt_`` prefix for the soft fit; ``length_scale`` (s, in the lengths' unit);
        - ``n`` (int P), ``wins``, ``ties``, ``losses`` (ints), ``share_longer``,
          ``share_shorter`` (fractions of prompts with d > 0, d < 0), ``policy_mean_length``,
          ``baseline_mean_length``, ``mean_length_diff`` (floats), ``length_identifiable`` (bool:
          s > 0; when False the length terms are 0 and the lc rates equal the raw ones).
    Raises:
        ValueError naming the argument: not a 1-D list of finite numbers, empty, a negative
        length, or lists of different lengths.
    """
    ps = check_vector("policy_scores", policy_scores)
    bs = check_vector("baseline_scores", baseline_scores)
    pl = check_vector("policy_lengths", policy_lengths, nonnegative=True)
    bl = check_vector("baseline_lengths", baseline_lengths, nonnegative=True)
    for name, arr in (("baseline_scores", bs), ("policy_lengths", pl), ("baseline_lengths", bl)):
        if arr.size != ps.size:
            raise ValueError(f"{name} has {arr.size} entries but policy_scores has {ps.size}: one per prompt in each")
    diff = ps - bs
    hard = np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5))
    soft = sigmoid(diff)
    d = pl - bl
    s = float(np.std(d))
    identifiable = s > 0.0
    u = d / s if identifiable else np.zeros_like(d)
    X = np.stack([np.ones_like(u), np.tanh(u), u], axis=1)
    l2 = np.array([INTERCEPT_L2, LENGTH_L2, LENGTH_L2])
    a, ct, cl = fit_logistic(X, hard, l2)
    ba, bct, bcl = fit_logistic(X, soft, l2)
    one_std = math.tanh(1.0)
    return {
        "win_rate": float(hard.mean()),
        "lc_win_rate": float(sigmoid(a)),
        "hard_win_rate": float(hard.mean()),
        "bt_win_rate": float(soft.mean()),
        "lc_bt_win_rate": float(sigmoid(ba)),
        "intercept": float(a),
        "length_coef_tanh": float(ct),
        "length_coef_linear": float(cl),
        "length_effect": float(ct * one_std + cl),
        "bt_intercept": float(ba),
        "bt_length_coef_tanh": float(bct),
        "bt_length_coef_linear": float(bcl),
        "bt_length_effect": float(bct * one_std + bcl),
        "length_scale": s,
        "length_identifiable": identifiable,
        "n": int(ps.size),
        "wins": int(np.sum(diff > 0)),
        "ties": int(np.sum(diff == 0)),
        "losses": int(np.sum(diff < 0)),
        "share_longer": float(np.mean(d > 0)),
        "share_shorter": float(np.mean(d < 0)),
        "policy_mean_length": float(pl.mean()),
        "baseline_mean_length": float(bl.mean()),
        "mean_length_diff": float(d.mean()),
    }


def outcome(policy_score: float, baseline_score: float) -> float:
    """One comparison's hard outcome: 1.0 (the policy scored higher), 0.5 (equal) or 0.0."""
    return 1.0 if policy_score > baseline_score else 0.0 if policy_score < baseline_score else 0.5


def compare_with_baseline(policy: Sequence[Mapping[str, Any]], baseline: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``lc_win_rate`` of per-sample records against the baseline's.

    Args:
        policy, baseline: lists [K] of records with ``"score"`` (the judge's, float) and
            ``"length"`` (response tokens, >= 0); record k of ``policy`` is compared with record k
            of ``baseline`` (the same prompt, and for the loop the same sample slot).
    Returns:
        ``lc_win_rate``'s dict.
    Raises:
        ValueError as ``lc_win_rate`` (different counts, a non-finite score, ...).
    """
    return lc_win_rate(
        [p["score"] for p in policy],
        [b["score"] for b in baseline],
        [p["length"] for p in policy],
        [b["length"] for b in baseline],
    )
