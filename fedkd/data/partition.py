"""Partitioners: thin adapters over flwr-datasets' partitioners.

Each returns int64 index arrays into ``labels``. The flwr-datasets classes work on
a Hugging Face ``Dataset``, so we hand them a two-column table (``label``, ``idx``)
and read back each partition's ``idx`` column. The table's rows are put in a
seeded random order first: ``IidPartitioner`` shards contiguously and is otherwise
unseeded, and the label-based partitioners split each class's rows in table order.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkd.data.registry import PARTITIONERS
from fedkd.errors import ConfigError, DataError


def _label_table(labels: np.ndarray, seed: int) -> Any:
    """A ``datasets.Dataset`` of (label, original index) rows in a seeded random order."""
    import datasets

    order = np.random.default_rng([seed, 0x9A27]).permutation(len(labels)).astype(np.int64)
    table = datasets.Dataset.from_dict(
        {"label": np.asarray(labels, dtype=np.int64)[order], "idx": order}
    )
    # pandas format: flwr-datasets does np.array(ds["label"]); with datasets 4's default
    # format that iterates a lazy Column row by row (~15 s for 1M rows)
    return table.with_format("pandas")


def _run(partitioner: Any, labels: np.ndarray, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Attach the label table to ``partitioner`` and collect every partition's indices.

    The public route is ``load_partition(pid)["idx"]``, but ``Dataset.select`` hashes
    its index list with dill for the fingerprint, which takes ~30 s for 1M rows. The
    label-based partitioners keep the assignment they select from in
    ``_partition_id_to_indices`` (row positions in the table), so when that exists we
    read it directly, and ``IidPartitioner``'s contiguous shards are cut with
    ``np.array_split``; ``tests/fedkd/test_data.py`` checks both routes agree.
    """
    table = _label_table(labels, seed)
    partitioner.dataset = table
    if partitioner.num_partitions != num_partitions:  # the property triggers the assignment
        raise RuntimeError(
            f"partitioner made {partitioner.num_partitions} partitions, not {num_partitions}"
        )
    assignment = getattr(partitioner, "_partition_id_to_indices", None)
    if isinstance(assignment, dict) and len(assignment) == num_partitions:
        order = np.asarray(table.with_format("numpy")[:]["idx"], dtype=np.int64)
        return [order[np.asarray(assignment[pid], dtype=np.int64)] for pid in range(num_partitions)]
    if type(partitioner).__name__ == "IidPartitioner":
        # load_partition is ``Dataset.shard(n, i, contiguous=True)``: the first len % n
        # shards one row longer, as np.array_split cuts; 2.6 ms a partition through
        # ``datasets`` (26 s for 10,000 clients) against microseconds here
        order = np.asarray(table.with_format("numpy")[:]["idx"], dtype=np.int64)
        return np.array_split(order, num_partitions)
    return _run_public(partitioner, num_partitions)


def _run_public(partitioner: Any, num_partitions: int) -> list[np.ndarray]:
    """Read each partition's ``idx`` column through the public ``load_partition`` API."""
    return [
        np.asarray(partitioner.load_partition(pid).with_format("numpy")[:]["idx"], dtype=np.int64)
        for pid in range(num_partitions)
    ]


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


@PARTITIONERS.register("iid")
def iid(
    labels: np.ndarray, num_partitions: int, seed: int, cfg: Mapping[str, Any]
) -> list[np.ndarray]:
    """Equal-size random shards (``IidPartitioner`` on a seeded shuffle)."""
    from flwr_datasets.partitioner import IidPartitioner

    return _run(IidPartitioner(num_partitions=num_partitions), labels, num_partitions, seed)


def check_dirichlet(cfg: Mapping[str, Any]) -> None:
    """``partition.alpha`` must be a positive number (smaller: more label skew)."""
    alpha = cfg.get("alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ConfigError(
            f"partition.alpha must be > 0 (got {alpha!r}): set a positive number, e.g. "
            f"partition.alpha=0.5 (smaller: more label skew)"
        )


@PARTITIONERS.register("dirichlet", check=check_dirichlet)
def dirichlet(
    labels: np.ndarray, num_partitions: int, seed: int, cfg: Mapping[str, Any]
) -> list[np.ndarray]:
    """Label skew: each class is split over clients by a Dirichlet(``alpha``) draw.

    Smaller ``alpha`` means more skew. flwr-datasets resamples until every client has
    ``min_partition_size`` samples and gives up after 10 tries; that becomes a DataError.
    """
    from flwr_datasets.partitioner import DirichletPartitioner

    check_dirichlet(cfg)
    alpha = cfg["alpha"]
    min_size = int(cfg["min_partition_size"])
    partitioner = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=float(alpha),
        min_partition_size=min_size,
        self_balancing=bool(cfg["self_balancing"]),
        seed=seed,
    )
    try:
        with warnings.catch_warnings():  # one warning per failed resampling try
            warnings.simplefilter("ignore")
            return _run(partitioner, labels, num_partitions, seed)
    except ValueError as err:
        raise DataError(
            f"dirichlet partition (alpha={alpha}) could not give each of {num_partitions} "
            f"clients at least {min_size} of {len(labels)} samples; use fewer clients or a "
            f"larger partition.alpha ({_one_line(err)})"
        ) from None


@PARTITIONERS.register("pathological")
def pathological(
    labels: np.ndarray, num_partitions: int, seed: int, cfg: Mapping[str, Any]
) -> list[np.ndarray]:
    """Each client holds exactly ``classes_per_client`` classes (``PathologicalPartitioner``).

    ``class_assignment_mode`` is ``first-deterministic`` (default, as in the paper),
    ``deterministic`` or ``random``. Samples of classes no client picked are unused.
    """
    from flwr_datasets.partitioner import PathologicalPartitioner

    num_present = len(np.unique(labels))
    k = cfg.get("classes_per_client")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_present:
        raise ConfigError(
            f"partition.classes_per_client must be an int in [1, {num_present}] (got {k!r})"
        )
    mode = cfg["class_assignment_mode"]
    modes = ("first-deterministic", "deterministic", "random")
    if mode not in modes:
        raise ConfigError(
            f"partition.class_assignment_mode must be one of {', '.join(modes)} (got {mode!r})"
        )
    partitioner = PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=k,
        class_assignment_mode=mode,
        seed=seed,
    )
    try:
        with warnings.catch_warnings():  # "classes ... will NOT be used"
            warnings.simplefilter("ignore")
            return _run(partitioner, labels, num_partitions, seed)
    except ValueError as err:
        raise DataError(
            f"pathological partition with {k} classes per client over {num_partitions} "
            f"clients failed: {_one_line(err)}"
        ) from None
