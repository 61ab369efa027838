"""Per-process client resources: the federated data and torch settings.

Ray keeps a client process (actor) alive across rounds and runs many virtual
clients in it, so data is built once per process and per data config, not per
round. Everything here is derived from the run config (and, for a SuperNode
holding its own data, from its local file), so any process can serve any client
and produce the same numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from fedkd.data import FederatedData, build_federated_data
from fedkd.data.local import local_client_data

if TYPE_CHECKING:  # torch loads with the first tensors: building the data needs none
    import torch

DATA_KEYS = ("seed", "num_clients", "dataset", "partition", "split")


@dataclass(frozen=True)
class ClientTensors:
    """One client's data as tensors (views of the cached numpy arrays)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    global_x: torch.Tensor
    global_y: torch.Tensor
    public_x: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    public_canary: torch.Tensor | None = None  # bool [N_public]: inserted canaries (oracle)


def data_key(cfg: dict[str, Any]) -> str:
    """The part of the run config that determines the data, as a cache key."""
    return json.dumps({k: cfg[k] for k in DATA_KEYS}, sort_keys=True)


@lru_cache(maxsize=4)
def federated_data(key: str) -> FederatedData:
    return build_federated_data(json.loads(key))


@lru_cache(maxsize=4096)
def client_tensors(
    key: str, partition_id: int, data_path: str | None = None, label_column: str = "label"
) -> ClientTensors:
    """Client ``partition_id``'s data: its partition, or its own file at ``data_path``.

    With a ``data_path`` the train/test split comes from the file (seeded like a
    partition's, ``split.local_test_fraction``); the global test set and the
    public set always come from the run's dataset, which every node shares.
    """
    import torch

    fed = federated_data(key)
    if not 0 <= partition_id < len(fed.clients):
        raise ValueError(f"partition-id {partition_id} is outside 0..{len(fed.clients) - 1}")
    if data_path is None:
        part = fed.clients[partition_id]
    else:
        cfg = json.loads(key)
        part = local_client_data(
            data_path,
            num_classes=fed.num_classes,
            input_shape=fed.input_shape,
            test_fraction=float(cfg["split"]["local_test_fraction"]),
            seed=int(cfg["seed"]),
            client_id=partition_id,
            label_column=label_column,
        )
    return ClientTensors(
        train_x=torch.from_numpy(part.train.x),
        train_y=torch.from_numpy(part.train.y),
        test_x=torch.from_numpy(part.test.x),
        test_y=torch.from_numpy(part.test.y),
        global_x=torch.from_numpy(fed.global_test.x),
        global_y=torch.from_numpy(fed.global_test.y),
        public_x=torch.from_numpy(fed.public_x),
        num_classes=fed.num_classes,
        input_shape=fed.input_shape,
        public_canary=_canary_mask(fed),
    )


def _canary_mask(fed: FederatedData) -> torch.Tensor | None:
    import torch

    if fed.canary_public is None:
        return None
    mask = torch.zeros(len(fed.public_x), dtype=torch.bool)
    mask[torch.from_numpy(fed.canary_public)] = True
    return mask


def configure_torch(threads: int) -> None:
    """Pin torch's intra-op threads: Ray runs one client per core."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
