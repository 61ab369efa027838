"""Plain-numpy containers passed between the data layer and everything else.

They hold arrays only (no torch, no Flower), so any layer can use them and a
client can be handed exactly its own slice without importing anything heavy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ArrayDataset:
    """Labelled examples: ``x`` float32 ``[N, *input_shape]``, ``y`` int64 ``[N]``."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class SourceData:
    """What a dataset loader returns, before any federated splitting.

    ``x``/``y`` is the pool that public, private and (if there is no official test
    split) global-test data are carved from; ``test`` is the official test split.
    """

    x: np.ndarray  # float32 [N, *input_shape], roughly in [0, 1]
    y: np.ndarray  # int64 [N], values 0..num_classes-1
    num_classes: int
    input_shape: tuple[int, ...]
    test: ArrayDataset | None = None


@dataclass(frozen=True)
class ClientData:
    """One client's private data: local train split and its label-skewed local test."""

    train: ArrayDataset
    test: ArrayDataset


@dataclass(frozen=True)
class FederatedData:
    """Everything a simulation needs: per-client data, the public set, the global test."""

    clients: list[ClientData]  # index = partition id
    public_x: np.ndarray  # unlabelled public/transfer inputs (labels are dropped)
    global_test: ArrayDataset  # shared, class-balanced
    num_classes: int
    input_shape: tuple[int, ...]
    server_val: ArrayDataset | None = (
        None  # labelled, balanced; only if split.server_val_per_class > 0
    )


DatasetLoader = Callable[[Mapping[str, Any], int], SourceData]
"""``loader(dataset_cfg, run_seed) -> SourceData``."""

Partitioner = Callable[[np.ndarray, int, int, Mapping[str, Any]], list[np.ndarray]]
"""``fn(labels, num_partitions, seed, partition_cfg) -> int64 index arrays into labels``."""
