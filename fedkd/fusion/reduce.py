"""Reducers over the client axis: ``fn(values [K, ...], weights [K] | None, **params) -> [...]``.

``mean`` (optionally weighted) is what every paper uses; ``median`` (coordinate-wise)
and ``trimmed_mean`` are the robust-fusion options (Yin et al. 2018, arXiv 1803.01498)
any logit/prototype strategy can select; ``gated_mean`` drops whole clients far from the
median (similarity gating). Offering them for knowledge fusion is our
choice. Robust reducers take no weights: asking for both raises ConfigError rather than
silently dropping the weights.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedkd.errors import ConfigError, PayloadError
from fedkd.registry import Registry

Reducer = Callable[..., np.ndarray]
REDUCERS: Registry[Reducer] = Registry("reducer")


def _check(values: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    values = np.asarray(values)
    if values.ndim < 1 or values.shape[0] == 0:
        raise PayloadError(f"nothing to reduce: values have shape {list(values.shape)}")
    if weights is None:
        return values, None
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (values.shape[0],):
        raise PayloadError(f"weights shape {list(weights.shape)} != [{values.shape[0]}]")
    if np.any(weights < 0) or weights.sum() <= 0:
        raise PayloadError("weights must be non-negative with a positive sum")
    return values, weights


def _float_dtype(values: np.ndarray) -> np.dtype:
    return np.result_type(values.dtype, np.float32)


@REDUCERS.register("mean")
def mean(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean over axis 0; ``Σ_k w_k v_k / Σ_k w_k`` when weights are given."""
    values, weights = _check(values, weights)
    if weights is None:
        return values.mean(axis=0, dtype=np.float64).astype(_float_dtype(values))
    out = np.tensordot(weights / weights.sum(), values.astype(np.float64), axes=(0, 0))
    return np.asarray(out, dtype=_float_dtype(values))


@REDUCERS.register("median")
def median(values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Coordinate-wise median over axis 0 (unweighted)."""
    values, weights = _check(values, weights)
    if weights is not None:
        raise ConfigError("reducer 'median' does not take weights")
    return np.median(values, axis=0).astype(_float_dtype(values))


@REDUCERS.register("trimmed_mean")
def trimmed_mean(
    values: np.ndarray, weights: np.ndarray | None = None, trim: float = 0.1
) -> np.ndarray:
    """Per coordinate, drop the ``floor(trim*K)`` smallest and largest values, then average."""
    values, weights = _check(values, weights)
    if weights is not None:
        raise ConfigError("reducer 'trimmed_mean' does not take weights")
    if not 0 <= trim < 0.5:
        raise ConfigError(f"trimmed_mean: trim must be in [0, 0.5), got {trim}")
    k = values.shape[0]
    cut = math.floor(trim * k + 1e-9)  # guard against 0.3 * 10 = 2.9999...
    kept = np.sort(values, axis=0)[cut : k - cut]
    return kept.mean(axis=0, dtype=np.float64).astype(_float_dtype(values))


@REDUCERS.register("gated_mean")
def gated_mean(
    values: np.ndarray, weights: np.ndarray | None = None, tolerance: float = 2.0
) -> np.ndarray:
    """Similarity gating: the (weighted) mean of the clients whose whole contribution lies
    within ``tolerance`` times the median client's L2 distance of the coordinate-wise median.

    Unlike ``median``/``trimmed_mean`` it keeps or drops a client as a whole, so one
    client's values are never mixed with another's; with fewer than 3 clients it is the
    mean. Our option (in the spirit of distance-based filters such as Krum).
    """
    values, weights = _check(values, weights)
    if not tolerance >= 1:
        raise ConfigError(f"gated_mean: tolerance must be >= 1, got {tolerance}")
    k = values.shape[0]
    if k < 3:
        return mean(values, weights)
    flat = values.reshape(k, -1).astype(np.float64)
    dist = np.linalg.norm(flat - np.median(flat, axis=0), axis=1)
    keep = dist <= tolerance * np.median(dist) + 1e-12
    kept_weights = None if weights is None else weights[keep]
    if kept_weights is not None and kept_weights.sum() <= 0:
        kept_weights = None
    return mean(values[keep], kept_weights)


def reduce(
    name: str,
    values: np.ndarray,
    weights: np.ndarray | None = None,
    params: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Apply reducer ``name``; unknown params raise ConfigError naming the reducer."""
    fn = REDUCERS.get(name)
    params = dict(params or {})
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("values", "weights")]
    for key in params:
        if key not in allowed:
            raise ConfigError(
                f"reducer '{name}' has no param '{key}'; known: {allowed or '(none)'}"
            )
    return fn(values, weights, **params)


def per_class_reduce(
    values: np.ndarray,
    counts: np.ndarray,
    *,
    reducer: str = "mean",
    weighted: bool = False,
    params: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce ``values [K, C, ...]`` per class over the clients with ``counts[k, c] > 0``.

    Returns ``(fused [C, ...], present [C] bool)``; rows with no contributor are zeros.
    ``weighted`` weights each client's row by its count.
    """
    values, counts = np.asarray(values), np.asarray(counts)
    if values.ndim < 2 or counts.shape != values.shape[:2]:
        raise PayloadError(
            f"counts shape {list(counts.shape)} does not match values {list(values.shape)}"
        )
    if np.any(counts < 0):
        raise PayloadError("counts must be non-negative")
    fused = np.zeros(values.shape[1:], dtype=_float_dtype(values))
    has = counts > 0
    present = has.any(axis=0)
    for c in np.flatnonzero(present):
        mask = has[:, c]
        w = counts[mask, c] if weighted else None
        fused[c] = reduce(reducer, values[mask, c], w, params)
    return fused, present
