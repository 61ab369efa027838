"""Canaries for leakage measurements (docs/algorithms.md §3.3, classification adaptation).

A canary is a unique input with a random label (Carlini et al. 2019, "The Secret
Sharer", adapted to classification as §3.3 proposes): seeded uniform noise over the
data's value range. ``split.canaries.count = m`` makes ``2m`` canaries: the first
``m`` (*members*) are added ``repeats`` times to client ``split.canaries.client``'s
training data; the other ``m`` (*non-members*) are trained on by nobody. All ``2m``
are appended to the end of the public set (members first) so every client's
public-set predictions cover them: that is what the attack in
``simulations/leakage.py`` looks at. Choices that are ours: uniform noise, the
repeat count, and putting both groups into the public set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from fedkd.data.types import ArrayDataset, FederatedData
from fedkd.errors import ConfigError

_CANARIES = 5  # RNG stream tag (splits.py uses 1-4)


def canary_options(split: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(count, client, repeats)`` of ``split.canaries`` (count 0: no canaries)."""
    c = split["canaries"]
    values = [c["count"], c["client"], c["repeats"]]
    for key, value, low in zip(("count", "client", "repeats"), values, (0, 0, 1), strict=True):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"split.canaries.{key} must be an int >= {low} (got {value!r})")
    return values[0], values[1], values[2]


def make_canaries(
    count: int, x: np.ndarray, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``2·count`` noise inputs shaped like ``x[0]`` in ``x``'s value range, random labels."""
    rng = np.random.default_rng([seed, _CANARIES])
    low, high = float(x.min()), float(x.max())
    inputs = rng.uniform(low, high, size=(2 * count, *x.shape[1:])).astype(x.dtype)
    return inputs, rng.integers(0, num_classes, size=2 * count).astype(np.int64)


def insert_canaries(fed: FederatedData, split: Mapping[str, Any], seed: int) -> FederatedData:
    """``fed`` with canaries in one client's training data and at the end of the public set."""
    count, client, repeats = canary_options(split)
    if count == 0:
        return fed
    if client >= len(fed.clients):
        raise ConfigError(
            f"split.canaries.client={client} but there are {len(fed.clients)} clients"
        )
    x, y = make_canaries(count, fed.public_x, fed.num_classes, seed)
    part = fed.clients[client]
    train = ArrayDataset(
        x=np.concatenate([part.train.x, *[x[:count]] * repeats]),
        y=np.concatenate([part.train.y, *[y[:count]] * repeats]),
    )
    clients = list(fed.clients)
    clients[client] = replace(part, train=train)
    n_public = len(fed.public_x)
    public_y = fed.public_y if fed.public_y is not None else np.full(n_public, -1, np.int64)
    return replace(
        fed,
        clients=clients,
        public_x=np.concatenate([fed.public_x, x]),
        public_y=np.concatenate([public_y, y]),
        canary_public=np.arange(n_public, n_public + 2 * count, dtype=np.int64),
    )
