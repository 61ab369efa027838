"""KnFu personalised effective-knowledge fusion (Seyedmohammadi, Atapour, Abouei, Mohammadi
2024, arXiv 2403.11892; docs/algorithms.md §1).

The paper's parts: each client receives its own fusion of only the effective knowledge of
its *semantic neighbours* [ABS]; neighbours are judged from an Estimated Probability
Distribution (EPD) [3P]; and "β in Eq. (8) is set to 10" [3P], the default here. No code is
public and the equations were not retrievable, so the rest is our reconstruction
[PROPOSED]: the EPD as the mean soft label over the transfer set (``epd``); the divergence
between clients (``divergence_matrix``: KL of the EPDs by default, Jensen-Shannon or
per-sample KL as options); the weight form ``w_kj = softmax_j(−β d_kj)`` with ``d_kk = 0``
so each client keeps itself (``fusion_weights``); the optional hard neighbour gating
(``threshold`` / ``top_m``; default none, the soft weights alone); and the fused target
``Q_k = Σ_j w_kj P_j`` (``personalised_fusion``). ``beta=0`` gives uniform ``1/K`` weights,
i.e. vanilla FKD. Fusing the individual un-noised ``P_j`` is not covered by central DP on a
noised sum (§5.2, pitfall 3).
"""

from __future__ import annotations

import numpy as np

from fedkd.errors import ConfigError, PayloadError
from fedkd.knowledge import PROB_TOLERANCE

DIVERGENCES = ("kl", "js", "mean_sample_kl")
GATINGS = ("none", "threshold", "top_m")


def _check_probs(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim != 3 or 0 in probs.shape:
        raise PayloadError(f"KnFu soft labels must have shape [K, N, C], got {list(probs.shape)}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise PayloadError(f"KnFu soft labels must be floating point, got {probs.dtype}")
    if not np.all(np.isfinite(probs)):
        raise PayloadError("KnFu soft labels contain NaN or Inf")
    if np.any(probs < 0):
        raise PayloadError(f"KnFu soft labels must be non-negative, got min {probs.min()}")
    sums = probs.sum(axis=-1, dtype=np.float64)
    if np.any(np.abs(sums - 1.0) > PROB_TOLERANCE):
        raise PayloadError(
            f"KnFu soft label rows must sum to 1 (±{PROB_TOLERANCE}), "
            f"got sums in [{sums.min():.6g}, {sums.max():.6g}]"
        )
    return probs


def _check_square(name: str, m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise PayloadError(f"KnFu {name} must have shape [K, K], got {list(m.shape)}")
    if not np.all(np.isfinite(m)):
        raise PayloadError(f"KnFu {name} contains NaN or Inf")
    if np.any(m < 0):
        raise PayloadError(f"KnFu {name} must be non-negative, got min {m.min()}")
    return m


def epd(probs: np.ndarray) -> np.ndarray:
    """Estimated probability distributions ``π_k = (1/N) Σ_x P_k(x)``: ``[K, N, C] -> [K, C]``."""
    probs = _check_probs(probs)
    return probs.mean(axis=1, dtype=np.float64).astype(np.result_type(probs.dtype, np.float32))


def _kl_matrix(p: np.ndarray, q: np.ndarray, eps: float) -> np.ndarray:
    """``[K, K]``: ``Σ_c p[k, c] (ln p[k, c] − ln q[j, c])`` with both logs clipped at ``eps``."""
    neg_entropy = (p * np.log(np.maximum(p, eps))).sum(axis=-1)
    cross = p @ np.log(np.maximum(q, eps)).T
    return neg_entropy[:, None] - cross


def divergence_matrix(probs: np.ndarray, metric: str = "kl", eps: float = 1e-8) -> np.ndarray:
    """``d [K, K]`` with ``d[k, j]`` the divergence of client ``k`` from client ``j``.

    ``"kl"``: ``KL(π_k ‖ π_j)`` of the EPDs; ``"js"``: Jensen-Shannon divergence of the EPDs
    (symmetric, natural log, at most ``ln 2``); ``"mean_sample_kl"``:
    ``(1/N) Σ_x KL(P_k(x) ‖ P_j(x))``. Probabilities are clipped at ``eps`` inside the logs,
    which can make a value a rounding error below 0: values are clamped at 0 and the diagonal
    is set to exactly 0.
    """
    if metric not in DIVERGENCES:
        raise ConfigError(f"KnFu divergence: unknown metric '{metric}'; known: {list(DIVERGENCES)}")
    if not 0 < eps < 1:
        raise ConfigError(f"KnFu divergence: eps must be in (0, 1), got {eps}")
    probs = _check_probs(probs).astype(np.float64)
    if metric == "mean_sample_kl":
        k_clients, n_samples = probs.shape[:2]
        flat = probs.reshape(k_clients, -1)  # [K, N*C]: Σ_x Σ_c is one dot product
        d = _kl_matrix(flat, flat, eps) / n_samples
    else:
        pi = probs.mean(axis=1)
        if metric == "kl":
            d = _kl_matrix(pi, pi, eps)
        else:
            m = 0.5 * (pi[:, None, :] + pi[None, :, :])  # [K, K, C], exactly symmetric
            logm = np.log(np.maximum(m, eps))
            a = (pi * np.log(np.maximum(pi, eps)))[:, None, :] - pi[:, None, :] * logm
            half = a.sum(axis=-1)  # half[k, j] = KL(π_k ‖ m_kj)
            d = 0.5 * (half + half.T)
    d = np.maximum(d, 0.0)
    np.fill_diagonal(d, 0.0)
    return d


def fusion_weights(
    divergence: np.ndarray,
    beta: float = 10.0,
    gating: str = "none",
    threshold: float | None = None,
    top_m: int | None = None,
) -> np.ndarray:
    """Row-stochastic ``w [K, K]``, ``w[k, j] = softmax_j(−β d[k, j])`` over the kept ``j``.

    ``gating``: ``"none"`` keeps every client; ``"threshold"`` keeps ``j`` with
    ``d[k, j] <= threshold``; ``"top_m"`` keeps the ``m`` clients with the smallest
    ``d[k, j]``, self counted (ties go to the lower index; ``m > K`` keeps all). Self is
    always kept, dropped weights are 0 and the rest renormalised. A ``threshold`` or
    ``top_m`` given for another gating raises ConfigError rather than being ignored.
    """
    if not (np.isfinite(beta) and beta >= 0):
        raise ConfigError(f"KnFu fusion: beta must be finite and >= 0, got {beta}")
    if gating not in GATINGS:
        raise ConfigError(f"KnFu fusion: unknown gating '{gating}'; known: {list(GATINGS)}")
    if threshold is not None and gating != "threshold":
        raise ConfigError(f"KnFu fusion: threshold given but gating is '{gating}'")
    if top_m is not None and gating != "top_m":
        raise ConfigError(f"KnFu fusion: top_m given but gating is '{gating}'")
    if gating == "threshold" and (threshold is None or not threshold >= 0):
        raise ConfigError(f"KnFu fusion: gating 'threshold' needs threshold >= 0, got {threshold}")
    if gating == "top_m" and (
        isinstance(top_m, bool) or not isinstance(top_m, (int, np.integer)) or top_m < 1
    ):
        raise ConfigError(f"KnFu fusion: gating 'top_m' needs an integer top_m >= 1, got {top_m}")
    d = _check_square("divergence", divergence)
    k_clients = d.shape[0]
    keep = np.ones_like(d, dtype=bool)
    if gating == "threshold":
        keep = d <= threshold
    elif gating == "top_m":
        others = d.copy()
        np.fill_diagonal(others, -np.inf)  # self takes the first of the m slots
        order = np.argsort(others, axis=1, kind="stable")[:, : min(top_m, k_clients)]
        keep = np.zeros_like(d, dtype=bool)
        np.put_along_axis(keep, order, True, axis=1)
    np.fill_diagonal(keep, True)
    logits = np.where(keep, -beta * d, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)  # stable; a kept entry is at 0
    w = np.exp(logits)  # exp(-inf) = 0 for dropped clients
    return w / w.sum(axis=1, keepdims=True)


def personalised_fusion(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Personalised targets ``Q [K, N, C]``, ``Q_k = Σ_j w[k, j] P_j``; rows stay distributions."""
    probs = _check_probs(probs)
    w = _check_square("weights", weights)
    if w.shape[0] != probs.shape[0]:
        raise PayloadError(
            f"KnFu weights shape {list(w.shape)} != [K, K] with K = {probs.shape[0]}"
        )
    sums = w.sum(axis=1)
    if np.any(np.abs(sums - 1.0) > PROB_TOLERANCE):
        raise PayloadError(
            f"KnFu weight rows must sum to 1 (±{PROB_TOLERANCE}), "
            f"got sums in [{sums.min():.6g}, {sums.max():.6g}]"
        )
    q = np.einsum("kj,jnc->knc", w, probs.astype(np.float64))
    return q.astype(np.result_type(probs.dtype, np.float32))
