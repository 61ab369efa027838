"""``build_federated_data``: source -> global test, public set, per-client train/test.

Order matters and is fixed: the balanced global test set is taken first (from the
official test split when there is one), then the unlabelled public set, then the
rest is partitioned over clients. Each step has its own RNG stream derived from the
run seed, so every process that calls this gets identical arrays.

Leave-one-domain-out (``split.target_domain: <name>``, for datasets with domains such
as ``digits_domains``; FedKA, docs/algorithms.md §2): the target domain's samples are both
the unlabelled public set (``public_x``, inputs only) and the global test set (the same
samples with their labels, for evaluation only: transductive, as FedKA evaluates on its
adaptation split). Every source-domain sample goes to the private pool, so
``split.global_test_per_class``, ``split.public_fraction`` and an official test split are
ignored in this mode; ``split.server_val_per_class > 0`` still takes a balanced labelled
server validation set, out of the source-domain pool. ``split.target_domain: null``
(the default) keeps the behaviour above; a domain dataset is then pooled across domains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkd.data.canaries import insert_canaries
from fedkd.data.partition_cache import cached_partition
from fedkd.data.registry import DATASETS, PARTITIONERS
from fedkd.data.types import (
    DOMAIN_NAMES_KEY,
    DOMAINS_KEY,
    ArrayDataset,
    ClientData,
    FederatedData,
    SourceData,
)
from fedkd.errors import ConfigError, DataError

# RNG stream tags: one independent stream per step, all derived from the run seed.
_GLOBAL_TEST, _PUBLIC, _LOCAL_SPLIT, _SERVER_VAL = 1, 2, 3, 4


def _section(cfg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    section = cfg.get(key)
    if not isinstance(section, Mapping) or not isinstance(section.get("name"), str):
        raise ConfigError(f"{key} must be a mapping with a 'name' (got {section!r})")
    return section


def _fraction(split: Mapping[str, Any], key: str) -> float:
    value = split[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"split.{key} must be in [0, 1) (got {value!r})")
    return float(value)


def _int(cfg: Mapping[str, Any], key: str, minimum: int) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an int >= {minimum} (got {value!r})")
    return value


def _balanced_sample(
    y: np.ndarray,
    num_classes: int,
    per_class: int,
    rng: np.random.Generator,
    where: str,
    key: str = "global_test_per_class",
) -> np.ndarray:
    """``per_class`` random indices of every class, in random order; DataError if short."""
    picked = []
    counts = np.bincount(y, minlength=num_classes)[:num_classes]
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        if len(idx) < per_class:
            fits = int(counts.min())
            raise DataError(
                f"class {c} has {len(idx)} samples in the {where}; split.{key} asks for "
                f"{per_class}: set split.{key}={fits} or lower (the smallest class has {fits})"
            )
        picked.append(rng.choice(idx, per_class, replace=False))
    return rng.permutation(np.concatenate(picked)).astype(np.int64)


def _check_partitions(parts: list[np.ndarray], n: int, k: int, name: str) -> list[np.ndarray]:
    """Partitioners are pluggable: make sure one returned disjoint, valid index arrays."""
    if len(parts) != k:
        raise DataError(f"partitioner '{name}' returned {len(parts)} partitions for {k} clients")
    parts = [np.asarray(p, dtype=np.int64) for p in parts]
    flat = np.concatenate(parts) if parts else np.empty(0, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= n):
        raise DataError(f"partitioner '{name}' returned indices outside [0, {n})")
    if np.bincount(flat, minlength=n).max(initial=0) > 1:
        raise DataError(f"partitioner '{name}' returned overlapping partitions")
    return parts


def _local_split(idx: np.ndarray, k: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split partition ``k`` into (train, test) indices; at least one of each."""
    n = len(idx)
    if n < 2:
        raise DataError(
            f"partition {k} has {n} samples; need at least 2 (lower num_clients or raise partition.alpha)"
        )
    n_test = min(max(int(round(n * frac)), 1), n - 1)
    perm = np.random.default_rng([seed, _LOCAL_SPLIT, k]).permutation(idx)
    return perm[n_test:], perm[:n_test]


def _target_domain(split: Mapping[str, Any], source: SourceData, dataset: str) -> int | None:
    """The id of ``split.target_domain`` in ``source.domain_names``; None when unset."""
    name = split.get("target_domain")
    if name is None:
        return None
    if not isinstance(name, str):
        raise ConfigError(f"split.target_domain must be a domain name or null (got {name!r})")
    if source.domains is None or source.domain_names is None:
        raise ConfigError(
            f"split.target_domain={name!r} needs a dataset with domains (e.g. dataset=digits_domains); "
            f"dataset '{dataset}' has none"
        )
    names = list(source.domain_names)
    if name not in names:
        raise ConfigError(
            f"split.target_domain={name!r} is not a domain of dataset '{dataset}'; "
            f"domains: {', '.join(names)}"
        )
    if len(names) < 2:
        raise ConfigError(
            f"split.target_domain={name!r} leaves no source domain; dataset '{dataset}' "
            f"must have at least two domains"
        )
    return names.index(name)


def _client_domains(
    parts: list[np.ndarray], domains: np.ndarray, names: tuple[str, ...]
) -> list[str]:
    """Each partition's domain name; ``a+b`` (ids ascending) if it mixes domains."""
    return ["+".join(names[d] for d in np.unique(domains[p])) for p in parts]


def build_federated_data(cfg: Mapping[str, Any]) -> FederatedData:
    """Build every client's data, the public inputs and the global test set from ``cfg``.

    ``cfg`` is the whole run config as a plain dict (keys ``seed``, ``num_clients``,
    ``dataset``, ``partition``, ``split``). Deterministic given the config. With
    ``split.target_domain`` set, the target domain is held out (see the module docstring).
    """
    seed = _int(cfg, "seed", 0)
    num_clients = _int(cfg, "num_clients", 1)
    dataset_cfg, partition_cfg = _section(cfg, "dataset"), _section(cfg, "partition")
    split = cfg["split"]
    per_class = _int(split, "global_test_per_class", 0)
    server_val_per_class = _int(split, "server_val_per_class", 0)
    public_fraction = _fraction(split, "public_fraction")
    local_test_fraction = _fraction(split, "local_test_fraction")
    loader = DATASETS.get(dataset_cfg["name"])
    partitioner = PARTITIONERS.get(partition_cfg["name"])

    source: SourceData = loader(dataset_cfg, seed)
    x, y, num_classes = source.x, source.y, source.num_classes
    target = _target_domain(split, source, dataset_cfg["name"])

    # 1. global test set. Leave-one-domain-out: the whole target domain (transductive);
    # else balanced, from the official test split if there is one, else out of the pool
    rng = np.random.default_rng([seed, _GLOBAL_TEST])
    if target is not None:
        is_target = source.domains == target
        target_idx = np.flatnonzero(is_target)
        global_test = ArrayDataset(x=x[target_idx], y=y[target_idx])
        pool = np.flatnonzero(~is_target)
    elif source.test is not None:
        t = _balanced_sample(source.test.y, num_classes, per_class, rng, "test split")
        global_test = ArrayDataset(x=source.test.x[t], y=source.test.y[t])
        pool = np.arange(len(y), dtype=np.int64)
    else:
        t = _balanced_sample(y, num_classes, per_class, rng, "pool")
        global_test = ArrayDataset(x=x[t], y=y[t])
        keep = np.ones(len(y), dtype=bool)
        keep[t] = False
        pool = np.flatnonzero(keep)

    # 1b. optional labelled server validation set (FedDF's early stopping), out of the pool
    server_val = None
    if server_val_per_class > 0:
        rng = np.random.default_rng([seed, _SERVER_VAL])
        v = pool[
            _balanced_sample(
                y[pool], num_classes, server_val_per_class, rng, "pool", "server_val_per_class"
            )
        ]
        server_val = ArrayDataset(x=x[v], y=y[v])
        pool = np.setdiff1d(pool, v)

    # 2. public/transfer inputs (labels dropped), 3. the rest is private.
    # Leave-one-domain-out: the public set is the target domain, all of the pool is private
    if target is not None:
        public, private = target_idx, pool
    else:
        shuffled = np.random.default_rng([seed, _PUBLIC]).permutation(pool)
        n_public = int(round(public_fraction * len(pool)))
        public = np.sort(shuffled[:n_public])
        private = np.sort(shuffled[n_public:])
    if len(private) < num_clients:
        raise DataError(
            f"fewer samples ({len(private)}) than clients ({num_clients}) left for the clients "
            f"after the global test and public sets; lower num_clients or use more data"
        )

    if dataset_cfg["name"] == "partitioned":  # 4-5. every client's split from its files
        from fedkd.data.partitioned import read_clients

        fed = FederatedData(
            clients=read_clients(dataset_cfg, num_clients, num_classes, source.input_shape),
            public_x=x[public],
            public_y=y[public],
            global_test=global_test,
            num_classes=num_classes,
            input_shape=tuple(source.input_shape),
            server_val=server_val,
        )
        return insert_canaries(fed, split, seed)

    # 4. partition the private pool, 5. split each partition into local train/test
    # (a dataset with domains hands the partitioner its domain ids via reserved keys)
    part_cfg = partition_cfg
    if source.domains is not None and source.domain_names is not None:
        part_cfg = {
            **partition_cfg,
            DOMAINS_KEY: np.asarray(source.domains, dtype=np.int64)[private],
            DOMAIN_NAMES_KEY: tuple(source.domain_names),
        }
    labels = y[private]
    parts = cached_partition(
        partition_cfg["name"],
        lambda: partitioner(labels, num_clients, seed, part_cfg),
        labels,
        num_clients,
        seed,
        part_cfg,
    )
    parts = _check_partitions(parts, len(private), num_clients, partition_cfg["name"])
    clients = []
    for k, part in enumerate(parts):
        train, test = _local_split(private[part], k, local_test_fraction, seed)
        clients.append(
            ClientData(
                train=ArrayDataset(x=x[train], y=y[train]),
                test=ArrayDataset(x=x[test], y=y[test]),
            )
        )
    fed = FederatedData(
        clients=clients,
        public_x=x[public],
        public_y=y[public],
        global_test=global_test,
        num_classes=num_classes,
        input_shape=tuple(source.input_shape),
        server_val=server_val,
        client_domains=(
            None
            if source.domains is None or source.domain_names is None
            else _client_domains(
                [private[p] for p in parts], source.domains, tuple(source.domain_names)
            )
        ),
        target_domain=None if target is None else split["target_domain"],
    )
    return insert_canaries(fed, split, seed)
