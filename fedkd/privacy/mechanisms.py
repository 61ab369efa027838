"""Noise mechanisms (docs/algorithms.md §4.7, §5.2); their costs are in :mod:`.accounting`.

PATE's noisy vote aggregators:

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

Clipping (per row or of the whole array, in L2 or L1) and additive Gaussian/Laplace noise
for soft labels, prototypes and weights, and k-ary randomized response for labels.
"""

from __future__ import annotations

import math

import numpy as np

from fedkd.errors import ConfigError, PayloadError

__all__ = [
    "clip_rows",
    "clip_total",
    "confident_gnmax",
    "gaussian_noise",
    "gnmax",
    "laplace_noise",
    "randomized_response",
]


def non_negative(name: str, sigma: float) -> float:
    """``sigma`` as a float; a one-line ConfigError naming ``name`` if it is not finite and >= 0."""
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
    return rng.normal(0.0, non_negative("sigma", sigma), size=shape)


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
    ones also pay GNMax (:meth:`fedkd.privacy.accounting.GnmaxRecorder.confident_gnmax`).
    """
    counts = _check(counts, rng)
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ConfigError(f"confident_gnmax: threshold must be finite, got {threshold}")
    sigma1 = non_negative("sigma1", sigma1)
    sigma2 = non_negative("sigma2", sigma2)
    top = counts.max(axis=1, initial=0.0)
    answered = top + gaussian_noise(top.shape, sigma1, rng) >= threshold
    noisy = counts + gaussian_noise(counts.shape, sigma2, rng)
    labels = np.argmax(noisy, axis=1).astype(np.int64)
    return np.where(answered, labels, -1).astype(np.int64), answered


# ------------------------------------------------ clipping and additive noise (§5.2)
def clip_rows(values: np.ndarray, bound: float, order: int = 2) -> np.ndarray:
    """Scale every row whose L``order`` norm exceeds ``bound`` down to ``bound``."""
    values = np.asarray(values, dtype=np.float64)
    rows = values.reshape(len(values), -1) if values.ndim > 1 else values.reshape(1, -1)
    norms = np.linalg.norm(rows, ord=order, axis=1)
    scale = np.minimum(1.0, bound / np.maximum(norms, np.finfo(np.float64).tiny))
    return (rows * scale[:, None]).reshape(values.shape)


def clip_total(values: np.ndarray, bound: float, order: int = 2) -> np.ndarray:
    """Scale the whole array so its L``order`` norm (Frobenius for 2) is at most ``bound``."""
    values = np.asarray(values, dtype=np.float64)
    norm = float(np.linalg.norm(values.ravel(), ord=order))
    return values * min(1.0, bound / norm) if norm > 0 else values


def laplace_noise(shape: tuple[int, ...], scale: float, rng: np.random.Generator) -> np.ndarray:
    """``Laplace(0, b)`` noise of ``shape`` with scale ``b`` (float64)."""
    return rng.laplace(0.0, non_negative("laplace scale", scale), size=shape)


def randomized_response(
    labels: np.ndarray, num_classes: int, epsilon: float, rng: np.random.Generator
) -> np.ndarray:
    """k-ary randomized response: keep each label with probability ``e^ε / (e^ε + C - 1)``,
    else report one of the other ``C - 1`` classes uniformly (ε-DP per label).
    ``-1`` (abstain) is kept as it is."""
    labels = np.asarray(labels, dtype=np.int64)
    epsilon = float(epsilon)
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ConfigError(f"randomized response needs a finite epsilon > 0, got {epsilon}")
    if num_classes < 2:
        return labels.copy()
    keep = rng.random(labels.shape) < math.exp(epsilon) / (math.exp(epsilon) + num_classes - 1)
    other = (labels + rng.integers(1, num_classes, size=labels.shape)) % num_classes
    return np.where(keep | (labels < 0), labels, other).astype(np.int64)
