"""Fusion of values on shared public samples (FedMD, FedDF-style, DS-FL, KnFu).

``public_mean`` fuses logits or probabilities alike and never converts between them
(pitfall 1): FedMD averages logits (Li & Wang 2019, arXiv 1910.03581), DS-FL averages
probabilities. ``era`` is DS-FL's entropy reduction aggregation (Itahara et al.,
arXiv 2008.06180): ``softmax(P̄ / T)`` with ``T < 1``. The paper applies it to averaged
probabilities; the function does not check its input range so a strategy can offer the
``era_on="logits"`` variant explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkd.errors import ConfigError, PayloadError
from fedkd.fusion.reduce import reduce


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (subtracts the row max)."""
    z = np.asarray(x) - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def public_mean(
    values: np.ndarray,
    reducer: str = "mean",
    weights: np.ndarray | None = None,
    reducer_params: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Fuse ``values [K, N, C]`` over clients into ``[N, C]`` in the same value space."""
    values = np.asarray(values)
    if values.ndim != 3:
        raise PayloadError(f"public values must have shape [K, N, C], got {list(values.shape)}")
    return reduce(reducer, values, weights, reducer_params)


def era(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Entropy reduction aggregation: row-wise ``softmax(probs / T)``, ``0 < T < 1``."""
    if not 0 < temperature < 1:
        raise ConfigError(f"ERA temperature must be in (0, 1) (it sharpens), got {temperature}")
    probs = np.asarray(probs)
    if probs.ndim != 2:
        raise PayloadError(f"ERA input must have shape [N, C], got {list(probs.shape)}")
    return softmax(probs / temperature, axis=1).astype(np.result_type(probs.dtype, np.float32))


def sharpen_entropy(p: np.ndarray) -> np.ndarray:
    """Per-row entropy ``−Σ_c p_c ln p_c`` (``0 ln 0 = 0``) of ``p [N, C]``; take ``.mean()``
    for the mean-entropy diagnostic of how sharp a fused target is."""
    p = np.asarray(p, dtype=np.float64)
    logp = np.log(np.where(p > 0, p, 1.0))
    return -(p * logp).sum(axis=-1)
