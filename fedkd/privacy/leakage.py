"""Leakage metrics on canaries: membership-inference AUC and exposure (docs/algorithms.md §3.3).

- :func:`membership_auc`: the ROC AUC of a score that should be higher on members than
  on non-members (Mann-Whitney U / (n_m·n_n), ties count one half). 0.5 = no signal;
  below 0.5 is also signal (the attacker would flip the sign).
- :func:`exposure`: Carlini et al. 2019 ("The Secret Sharer"),
  ``exposure = log₂|R| − log₂ rank``, adapted to classification as §3.3 proposes: ``m``
  canaries with random labels form a *code* (their label string); the candidates are all
  ``C^m`` label strings, ranked by their log-likelihood under the released
  distributions. Exact enumeration up to ``exact_limit`` candidates; beyond that the
  extrapolation of §3.3 with a normal fit (the candidate score is a sum of ``m``
  independent per-canary terms, so its mean and variance are known exactly; the
  normal shape is ours, the paper fits a skew-normal). Ties get the mean rank.
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
    """Exposure (bits) of ``code [m]`` among all ``C^m`` codes, scored by ``log_probs [m, C]``."""
    lp = np.asarray(log_probs, dtype=np.float64)
    code = np.asarray(code, dtype=np.int64)
    m, c = lp.shape
    true = float(lp[np.arange(m), code].sum())
    if c**m <= exact_limit:
        scores = lp[0]
        for row in lp[1:]:
            scores = (scores[:, None] + row[None, :]).ravel()
        tol = 1e-9 * max(1.0, abs(true))
        greater = int((scores > true + tol).sum())
        equal = int((np.abs(scores - true) <= tol).sum())
        rank = greater + (equal + 1) / 2.0
        return m * math.log2(c) - math.log2(rank)
    mean = lp.mean(axis=1).sum()
    std = math.sqrt(lp.var(axis=1).sum())
    if std == 0:
        return 1.0  # every candidate ties: mean rank (|R| + 1) / 2, about one bit
    tail = float(norm.sf((true - mean) / std))
    return -math.log2(max(tail, 2.0 ** (-m * math.log2(c))))


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
