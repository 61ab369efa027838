"""The two data registries: a new dataset or partitioner is one decorated function."""

from __future__ import annotations

from fedkd.data.types import DatasetLoader, Partitioner
from fedkd.registry import Registry

DATASETS: Registry[DatasetLoader] = Registry("dataset")
PARTITIONERS: Registry[Partitioner] = Registry("partitioner")
