"""Record-level privacy by sub-teachers (PATE-style soft labels; docs/algorithms.md §5.2 C).

A client splits its private training data into ``n_t`` disjoint shards, keeps one model
per shard (trained only on that shard, every round), and releases on the public
samples the noised mean of the shard models' probabilities:

    p̄(x) = (1/n_t) Σ_t softmax(f_t(x)) + N(0, σ² I)

One training record changes one shard model, which moves ``p̄(x)`` by at most ``√2/n_t``
in L2 for each query ``x``, so each query is a Gaussian mechanism with noise multiplier
``z = σ n_t / √2``; a round of ``N`` queries composes ``N`` of them (the accountant does
the composition). The unit is **one training record of one client** (example-level DP).

The shard of a record depends only on its position in the client's training set and a
seed (:func:`shard_of`), never on its content, so changing one record cannot move other
records between shards (§5.2 C). Ours: probabilities are clamped at 0 and renormalised
after the noise (post-processing); shard models start from the client's seeded
initialisation offset per shard.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from fedkd.errors import ConfigError
from fedkd.privacy.accounting import dp_lib
from fedkd.privacy.mechanisms import gaussian_noise

if TYPE_CHECKING:
    import dp_accounting


def shard_of(num_records: int, shards: int, seed: int) -> np.ndarray:
    """Shard id ``[num_records]`` of every record: a seeded permutation dealt round-robin,
    so shards differ in size by at most one and the assignment ignores the data."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ConfigError(f"privacy.shards must be an int >= 1 (got {shards!r})")
    if num_records < shards:
        raise ConfigError(
            f"a client has {num_records} training records, fewer than privacy.shards={shards}"
        )
    order = np.random.default_rng([seed, 104_729]).permutation(num_records)
    out = np.empty(num_records, dtype=np.int64)
    out[order] = np.arange(num_records) % shards
    return out


def sigma_for(noise_multiplier: float, shards: int) -> float:
    """Noise std on the mean probabilities: ``σ = z √2 / n_t``."""
    return float(noise_multiplier) * math.sqrt(2.0) / shards


def release(probs: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Noised mean over the sub-teachers ``probs [n_t, N, C]``, back on the simplex."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"expected [teachers, N, C] probabilities, got {list(probs.shape)}")
    noisy = np.clip(probs.mean(axis=0) + gaussian_noise(probs.shape[1:], sigma, rng), 0.0, None)
    sums = noisy.sum(axis=1, keepdims=True)
    return np.where(sums > 0, noisy / np.where(sums > 0, sums, 1.0), 1.0 / probs.shape[2])


def round_event(noise_multiplier: float, queries: int) -> dp_accounting.DpEvent:
    """One round's cost: ``queries`` Gaussian answers with multiplier ``z``."""
    if noise_multiplier <= 0:
        return dp_lib().NonPrivateDpEvent()
    return dp_lib().SelfComposedDpEvent(dp_lib().GaussianDpEvent(noise_multiplier), queries)
