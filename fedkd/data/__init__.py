"""Datasets, partitioners and the federated split; knows nothing of Flower.

Importing this package imports every dataset and partitioner module so their
``@DATASETS.register`` / ``@PARTITIONERS.register`` decorators run. Heavy
libraries (``datasets``, ``flwr_datasets``, scikit-learn) load only when used.
"""

from fedkd.data import (  # noqa: F401  (registration)
    digits,
    domain_partition,
    domains,
    hf,
    hf_domains,
    partition,
    partitioned,
    synthetic,
)
from fedkd.data.registry import DATASETS, PARTITIONERS
from fedkd.data.splits import build_federated_data
from fedkd.data.types import ArrayDataset, ClientData, FederatedData, SourceData

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "ArrayDataset",
    "ClientData",
    "FederatedData",
    "SourceData",
    "build_federated_data",
]
