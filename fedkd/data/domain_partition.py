"""The ``domain`` partitioner: every client holds one source domain (FedKA's setting).

Needs a dataset with domains (e.g. ``digits_domains``): ``build_federated_data``
passes each sample's domain id in the partition config under ``DOMAINS_KEY``.
The source domains are the domains present in the private pool (all of them, or all
but ``split.target_domain`` for leave-one-domain-out), in ascending id order. Client
``k`` gets source domain ``k mod D``; a domain shared by several clients is split iid
(seeded, sizes within one) among them. Every source sample is assigned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkd.data.registry import PARTITIONERS
from fedkd.data.types import DOMAIN_NAMES_KEY, DOMAINS_KEY
from fedkd.errors import ConfigError, DataError

_STREAM = 0xD0A1  # RNG stream tag for the within-domain shuffles


@PARTITIONERS.register("domain")
def domain(
    labels: np.ndarray, num_partitions: int, seed: int, cfg: Mapping[str, Any]
) -> list[np.ndarray]:
    """One source domain per client, round-robin; iid within a domain."""
    ids = cfg.get(DOMAINS_KEY)
    if ids is None:
        raise ConfigError(
            "partition=domain needs a dataset with domains (e.g. dataset=digits_domains)"
        )
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape != (len(labels),):
        raise DataError(
            f"partition 'domain' got {ids.shape[0] if ids.ndim else 0} domain ids "
            f"for {len(labels)} samples"
        )
    present = np.unique(ids)
    names = cfg.get(DOMAIN_NAMES_KEY)
    shown = [str(names[d]) if names is not None else str(d) for d in present]
    if num_partitions < len(present):
        raise DataError(
            f"partition 'domain' needs num_clients >= the number of source domains: "
            f"{num_partitions} clients < {len(present)} source domains ({', '.join(shown)})"
        )
    parts: list[np.ndarray] = [np.empty(0, np.int64)] * num_partitions
    for i, d in enumerate(present):
        clients = list(range(i, num_partitions, len(present)))
        idx = np.random.default_rng([seed, _STREAM, int(d)]).permutation(np.flatnonzero(ids == d))
        for k, chunk in zip(clients, np.array_split(idx, len(clients)), strict=True):
            parts[k] = np.sort(chunk).astype(np.int64)
    return parts
