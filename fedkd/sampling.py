"""Which clients a round asks: the server's seeded sampling, as a pure function.

The strategy (``server/streams.py``) and the sequential reference of
``fedkd-bench`` (``simulations/reference.py``) both call :func:`sample_clients`, so they
sample the same clients for the same seed and round.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def sample_clients(
    ids: Iterable[int], fraction: float, min_clients: int, rng: np.random.Generator
) -> list[int]:
    """``max(min_clients, round(fraction * len(ids)))`` of ``ids`` (all when that is all of
    them; then ``rng`` is not drawn from), sorted."""
    ids = sorted(ids)
    size = min(max(min_clients, int(round(fraction * len(ids)))), len(ids))
    if size == len(ids):
        return ids
    return sorted(rng.choice(ids, size=size, replace=False).tolist())
