"""Noisy vote aggregators from PATE (ALGORITHMS.md §4.7); costs are in :mod:`.accounting`.

- :func:`gnmax`: GNMax (Papernot et al. 2018, arXiv 1802.08908):
  ``ŷ = argmax_j (n_j + N(0, σ²))``.
- :func:`confident_gnmax`: Confident-GNMax (same paper): answer only where
  ``max_j n_j + N(0, σ₁²) >= T``, then release GNMax with ``σ₂``.

Inputs are vote histograms ``counts [N, C]`` (:func:`fedkd.fusion.vote.vote_counts`); in
fedkd each client is one teacher (client-level privacy), which is how FedKA's "alignment
voting" becomes GNMax (§2.5). ``σ = 0`` is allowed and is the plain, non-private plurality.

Choices that are ours: noise comes from a caller-supplied ``numpy.random.Generator`` (no
global state); ties in the noisy counts go to the lowest class id (only reachable with
``σ = 0``); Confident-GNMax draws the ``σ₂`` noise for *every* row, answered or not, so the
generator's state afterwards does not depend on which queries were answered; samples
nobody voted on are not special-cased (with ``σ > 0`` their label is noise, as in PATE).
"""

from __future__ import annotations

import math

import numpy as np

from fedkd.errors import ConfigError, PayloadError

__all__ = ["confident_gnmax", "gaussian_noise", "gnmax"]


def _sigma(name: str, sigma: float) -> float:
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ConfigError(f"{name} must be finite and >= 0, got {sigma}")
    return sigma


def _check(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] == 0:
        raise PayloadError(f"counts must have shape [N, C] with C >= 1, got {list(counts.shape)}")
    if counts.size and (not np.all(np.isfinite(counts)) or counts.min() < 0):
        raise PayloadError("counts must be finite and non-negative")
    return counts.astype(np.float64)


def gaussian_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``N(0, σ²)`` noise of ``shape`` (float64): the only source of randomness here."""
    return rng.normal(0.0, _sigma("sigma", sigma), size=shape)


def gnmax(counts: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """GNMax labels ``[N]`` (int64): ``argmax_j (counts[:, j] + N(0, σ²))``, ties to lowest id."""
    counts = _check(counts, rng)
    noisy = counts + gaussian_noise(counts.shape, sigma, rng)
    return np.argmax(noisy, axis=1).astype(np.int64)


def confident_gnmax(
    counts: np.ndarray,
    threshold: float,
    sigma1: float,
    sigma2: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Confident-GNMax: ``(labels [N] with -1 where unanswered, answered [N] bool)``.

    A query is answered iff ``max_j n_j + N(0, σ₁²) >= threshold``; ``threshold`` is a
    vote count (PATE's ``T``, e.g. 200 of 250 teachers), not a fraction. Answered queries
    get the GNMax label with ``σ₂``. Every query pays the threshold check; only answered
    ones also pay GNMax (:meth:`fedkd.privacy.accounting.RdpLedger.confident_gnmax`).
    """
    counts = _check(counts, rng)
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ConfigError(f"confident_gnmax: threshold must be finite, got {threshold}")
    sigma1 = _sigma("sigma1", sigma1)
    sigma2 = _sigma("sigma2", sigma2)
    top = counts.max(axis=1, initial=0.0)
    answered = top + gaussian_noise(top.shape, sigma1, rng) >= threshold
    noisy = counts + gaussian_noise(counts.shape, sigma2, rng)
    labels = np.argmax(noisy, axis=1).astype(np.int64)
    return np.where(answered, labels, -1).astype(np.int64), answered
