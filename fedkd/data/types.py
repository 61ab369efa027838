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
    Multi-domain datasets (e.g. ``digits_domains``) also set ``domains``, the domain
    id of every pool sample, an index into ``domain_names``; single-domain datasets
    leave both ``None``.
    """

    x: np.ndarray  # float32 [N, *input_shape], roughly in [0, 1]
    y: np.ndarray  # int64 [N], values 0..num_classes-1
    num_classes: int
    input_shape: tuple[int, ...]
    test: ArrayDataset | None = None
    domains: np.ndarray | None = None  # int64 [N], values 0..len(domain_names)-1
    domain_names: tuple[str, ...] | None = None


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
    # multi-domain datasets only: each client's domain name ("a+b" if a partition mixes
    # domains), and the held-out target domain when split.target_domain is set (then
    # public_x is the target domain's inputs and global_test the same samples, labelled)
    client_domains: list[str] | None = None
    target_domain: str | None = None
    # the public samples' labels, for server-side diagnostics only (voting accuracy);
    # never sent to a client
    public_y: np.ndarray | None = None
    # split.canaries (fedkd/data/canaries.py): public-set indices of the canaries, the
    # members (in one client's training data) first, then as many non-members
    canary_public: np.ndarray | None = None


DatasetLoader = Callable[[Mapping[str, Any], int], SourceData]
"""``loader(dataset_cfg, run_seed) -> SourceData``."""

Partitioner = Callable[[np.ndarray, int, int, Mapping[str, Any]], list[np.ndarray]]
"""``fn(labels, num_partitions, seed, partition_cfg) -> int64 index arrays into labels``.

When the dataset has domains, ``build_federated_data`` passes a copy of the partition
config with two extra reserved keys: ``DOMAINS_KEY`` (int64 domain id of every entry of
``labels``) and ``DOMAIN_NAMES_KEY`` (the dataset's ``domain_names``). Partitioners that
do not need them ignore them.
"""

DOMAINS_KEY = "_domains"
DOMAIN_NAMES_KEY = "_domain_names"
