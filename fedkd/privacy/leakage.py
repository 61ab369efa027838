"""Leakage metrics on canaries: membership-inference AUC and exposure (docs/algorithms.md §3.3).

- :func:`membership_auc`: the ROC AUC of a score that should be higher on members than
  on non-members (Mann-Whitney U / (n_m·n_n), ties count one half). 0.5 = no signal;
  below 0.5 is also signal (the attacker would flip the sign).
- :func:`exposure`: Carlini et al. 2019 ("The Secret Sharer"),
  ``exposure = log₂|R| − log₂ rank``, adapted to classification as §3.3 proposes: ``m``
  canaries with random labels form a *code* (their label string); the candidates are all
  ``C^m`` label strings, ranked by their log-likelihood under the released
  distributions. The rank is counted exactly by meet in the middle (each half of the
  code enumerated, one half sorted) up to ``exact_limit`` strings per half; beyond that
  the extrapolation of §3.3, with a saddle-point tail of the candidate score (a sum of
  ``m`` independent per-canary terms; ours: the paper fits a skew-normal, and a normal
  fit underestimates a memorised code's exposure badly). Ties get the mean rank.
- :func:`canary_log_probs`: the attacker's per-canary log-probabilities from what the
  client released over the rounds (the log of the mean over rounds of the released
  probabilities, or of ``softmax`` of released logits; our choice of aggregation).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.stats import norm

__all__ = ["canary_log_probs", "exposure", "membership_auc", "mean_exposure"]

FLOOR = 1e-6  # released probabilities below this count as this (log of 0)


def membership_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member) + ½ P(tie)."""
    m = np.asarray(member_scores, dtype=np.float64).ravel()
    n = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    m, n = m[np.isfinite(m)], n[np.isfinite(n)]
    if m.size == 0 or n.size == 0:
        return float("nan")
    greater = (m[:, None] > n[None, :]).sum()
    ties = (m[:, None] == n[None, :]).sum()
    return float((greater + 0.5 * ties) / (m.size * n.size))


def exposure(log_probs: np.ndarray, code: np.ndarray, exact_limit: int = 10**6) -> float:
    """Exposure (bits) of ``code [m]`` among all ``C^m`` codes, scored by ``log_probs [m, C]``.

    The rank is exact while each half of the code has at most ``exact_limit`` label strings
    (meet in the middle: ``C^m`` up to ``exact_limit²`` candidates, 10^12 by default);
    beyond that it is the saddle-point (Lugannani-Rice) tail of the candidate score, which
    unlike a normal fit stays accurate far in the tail where a memorised code sits.
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    code = np.asarray(code, dtype=np.int64)
    m, c = lp.shape
    true = float(lp[np.arange(m), code].sum())
    total_bits = m * math.log2(c)
    half = m // 2
    if c ** max(half, m - half) <= exact_limit:
        left, right = _all_sums(lp[:half]), np.sort(_all_sums(lp[half:]))
        tol = 1e-9 * max(1.0, abs(true))
        above = len(right) - np.searchsorted(right, true + tol - left, side="right")
        at_most_tie = len(right) - np.searchsorted(right, true - tol - left, side="left")
        greater = int(above.sum())
        equal = int(at_most_tie.sum()) - greater
        rank = greater + (equal + 1) / 2.0
        return total_bits - math.log2(rank)
    tail = _saddlepoint_tail(lp, true)
    return -math.log2(min(1.0, max(tail, 2.0 ** (-total_bits))))


def _all_sums(lp: np.ndarray) -> np.ndarray:
    """Score of every label string over the rows of ``lp`` (one string: 0.0)."""
    sums = np.zeros(1)
    for row in lp:
        sums = (sums[:, None] + row[None, :]).ravel()
    return sums


def _saddlepoint_tail(lp: np.ndarray, t: float) -> float:
    """P(S >= t) for S = sum of one uniformly drawn entry per row (Lugannani-Rice)."""
    shifted = lp - lp.max(axis=1, keepdims=True)
    t = t - lp.max(axis=1).sum()

    def cumulants(theta: float) -> tuple[float, float, float]:
        w = np.exp(theta * shifted)
        z = w.mean(axis=1)
        mean = (w * shifted).mean(axis=1) / z
        var = (w * shifted**2).mean(axis=1) / z - mean**2
        return float(np.log(z).sum()), float(mean.sum()), float(np.maximum(var, 0).sum())

    _, mean0, var0 = cumulants(0.0)
    if var0 == 0:
        return 1.0
    if t <= mean0:
        return float(norm.sf((t - mean0) / math.sqrt(var0)))
    if t >= 0:  # the best string, or beyond: only ties with the maximum remain
        return float(np.prod((shifted >= -1e-12).mean(axis=1)))
    lo, hi = 0.0, 1.0
    while cumulants(hi)[1] < t and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(100):  # K'(theta) = t by bisection (K' increases in theta)
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cumulants(mid)[1] < t else (lo, mid)
    theta = (lo + hi) / 2
    k, _, k2 = cumulants(theta)
    w = math.sqrt(max(2.0 * (theta * t - k), 0.0))
    u = theta * math.sqrt(k2)
    if w < 1e-8 or u < 1e-8:
        return float(norm.sf((t - mean0) / math.sqrt(var0)))
    return float(max(norm.sf(w) + norm.pdf(w) * (1.0 / u - 1.0 / w), 0.0))


def mean_exposure(log_probs: np.ndarray, labels: np.ndarray, code_length: int) -> float:
    """Mean exposure over consecutive codes of ``code_length`` canaries (a remainder is dropped)."""
    codes = len(labels) // code_length
    if codes == 0:
        return float("nan")
    return float(
        np.mean(
            [
                exposure(
                    log_probs[i * code_length : (i + 1) * code_length],
                    labels[i * code_length : (i + 1) * code_length],
                )
                for i in range(codes)
            ]
        )
    )


def canary_log_probs(values: np.ndarray, space: str) -> np.ndarray:
    """``[R, N, C]`` released values over rounds (NaN rows: not released) -> ``[N, C]``.

    The attacker averages the released distributions over the rounds (``softmax`` of
    logits first) and takes the log, floored at ``FLOOR`` (noised, renormalised soft
    labels have exact zeros). A canary no round covered gets the uniform distribution.
    """
    values = np.asarray(values, dtype=np.float64)
    if space == "logits":
        z = values - np.nanmax(values, axis=2, keepdims=True)
        values = np.exp(z) / np.exp(z).sum(axis=2, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a canary no round covered
        mean = np.nanmean(values, axis=0)
    mean = np.where(np.isfinite(mean), mean, 1.0 / values.shape[2])
    return np.log(np.clip(mean, FLOOR, 1.0))
