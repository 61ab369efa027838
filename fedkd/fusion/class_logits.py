"""FD per-label logit fusion (Jeong et al. 2018, arXiv 1811.11479).

The server averages row ℓ of the clients' per-label mean logits over the clients that saw
label ℓ. The reference reimplementation (zhuangdizhu/FedGen ``serverFedDistill.py``) uses
a plain unweighted mean, our default. The leave-one-out teacher
``F̂_k[ℓ] = (Σ_j F̄_j[ℓ] − F̄_k[ℓ]) / (K_ℓ − 1)`` follows our recollection of the paper's
Alg. 1 (unverified, docs/algorithms.md §4.1). Count weighting and robust reducers are our options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkd.errors import PayloadError
from fedkd.fusion.reduce import per_class_reduce


def _check(logits: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, counts = np.asarray(logits), np.asarray(counts)
    if logits.ndim != 3 or logits.shape[1] != logits.shape[2]:
        raise PayloadError(f"class logits must have shape [K, C, C], got {list(logits.shape)}")
    if counts.shape != logits.shape[:2]:
        raise PayloadError(f"counts shape {list(counts.shape)} != [K, C] {list(logits.shape[:2])}")
    return logits, counts


def class_mean(
    logits: np.ndarray,
    counts: np.ndarray,
    reducer: str = "mean",
    weighted: bool = False,
    reducer_params: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher ``[C, C]`` (row ℓ fused over clients with ``counts[k, ℓ] > 0``) and ``present [C]``."""
    logits, counts = _check(logits, counts)
    return per_class_reduce(
        logits, counts, reducer=reducer, weighted=weighted, params=reducer_params
    )


def leave_one_out(
    logits: np.ndarray,
    counts: np.ndarray,
    reducer: str = "mean",
    weighted: bool = False,
    reducer_params: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-client teachers ``[K, C, C]`` fusing only the *other* clients, and ``present [K, C]``.

    ``present[k, ℓ]`` is false where no other client has label ℓ (always so when K = 1).
    """
    logits, counts = _check(logits, counts)
    k_clients = logits.shape[0]
    teachers = np.zeros(logits.shape, dtype=np.result_type(logits.dtype, np.float32))
    present = np.zeros(counts.shape, dtype=bool)
    for k in range(k_clients):
        others = np.arange(k_clients) != k
        if not others.any():
            continue
        teachers[k], present[k] = per_class_reduce(
            logits[others],
            counts[others],
            reducer=reducer,
            weighted=weighted,
            params=reducer_params,
        )
    return teachers, present
