"""``dataset=partitioned``: clients read their own pre-partitioned files in a simulation.

A folder in the PFLlib / HtFLlib layout, ``train/<id>.npz`` and ``test/<id>.npz``
for client ids ``0..num_clients-1`` (``fedkd-export-split`` writes it from any
fedkd split, so other tools can run the identical split). Each ``.npz`` holds
arrays ``x`` (``[n, *input_shape]`` or ``[n, prod(input_shape)]``) and ``y``
(``[n]`` class ids), or PFLlib's single ``data`` entry, a pickled dict with
``x`` and ``y`` (read with ``allow_pickle``: use files you trust).

The public set and the global test set come from ``dataset.source``, another
dataset config of the same task (e.g. ``{name: digits}``); the loader registered
here returns that source, and ``build_federated_data`` takes every client's
train and test split from the files instead of partitioning the source's pool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedkd.data.registry import DATASETS
from fedkd.data.types import ArrayDataset, ClientData, SourceData
from fedkd.errors import ConfigError, DataError

SPLITS = ("train", "test")


def check_partitioned(cfg: Mapping[str, Any]) -> None:
    """``dataset.path``: a folder with ``train/`` and ``test/``; ``dataset.source``: a dataset."""
    path = cfg.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError(
            "dataset.path must be the folder of per-client files (train/<id>.npz, "
            f"test/<id>.npz), e.g. dataset.path=data/split (got {path!r})"
        )
    folder = Path(path).expanduser()
    for split in SPLITS:
        if not (folder / split).is_dir():
            raise ConfigError(
                f"dataset.path={path}: no {split}/ folder; expected {split}/<id>.npz per client "
                f"(fedkd-export-split writes this layout)"
            )
    source = cfg.get("source")
    if not isinstance(source, Mapping) or not isinstance(source.get("name"), str):
        raise ConfigError(
            "dataset.source must name the dataset of the public and global test sets, "
            f"e.g. dataset.source.name=digits (got {source!r})"
        )
    if source["name"] == "partitioned":
        raise ConfigError("dataset.source cannot itself be partitioned; name e.g. digits")
    DATASETS.check(source["name"], source)


@DATASETS.register("partitioned", check=check_partitioned)
def load_partitioned_source(cfg: Mapping[str, Any], seed: int) -> SourceData:
    """The source dataset (public and global test sets); clients come from the files."""
    check_partitioned(cfg)
    source = cfg["source"]
    return DATASETS.get(source["name"])(source, seed)


def _read(path: Path, num_classes: int, input_shape: Sequence[int]) -> ArrayDataset:
    if not path.is_file():
        raise DataError(f"partitioned data: no file '{path}'")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"partitioned data '{path}' is not a readable .npz ({err})") from None
    with npz:
        files = set(npz.files)
        if {"x", "y"} <= files:
            x, y = npz["x"], npz["y"]
        elif "data" not in files:
            raise DataError(
                f"partitioned data '{path}' has arrays {sorted(files)}; expected x and y "
                "(or PFLlib's data)"
            )
    if not {"x", "y"} <= files:  # PFLlib: np.savez_compressed(f, data={"x": ..., "y": ...})
        with np.load(path, allow_pickle=True) as npz:
            data = npz["data"].item() if npz["data"].dtype == object else None
        if not isinstance(data, dict) or "x" not in data or "y" not in data:
            raise DataError(f"partitioned data '{path}': its data entry has no x and y")
        x, y = np.asarray(data["x"]), np.asarray(data["y"])
    shape = tuple(int(d) for d in input_shape)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2 and x.shape[1] == int(np.prod(shape)):
        x = x.reshape((len(x), *shape))
    if tuple(x.shape[1:]) != shape:
        raise DataError(
            f"partitioned data '{path}' has samples of shape {tuple(x.shape[1:])}; the source "
            f"dataset's are {shape} (choose dataset.source to match the files)"
        )
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"partitioned data '{path}' needs y of {len(x)} integer labels (got {y.dtype} "
            f"{tuple(y.shape)})"
        )
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(
            f"partitioned data '{path}' has labels {int(y.min())}..{int(y.max())} but the "
            f"source dataset has {num_classes} classes (0..{num_classes - 1})"
        )
    return ArrayDataset(x=x, y=y.astype(np.int64))


def client_files(cfg: Mapping[str, Any], num_clients: int) -> list[tuple[Path, Path]]:
    """(train, test) file of every client; a DataError if the folder holds another number."""
    folder = Path(cfg["path"]).expanduser()
    ids = sorted(int(p.stem) for p in (folder / "train").glob("*.npz") if p.stem.isdigit())
    if ids != list(range(len(ids))) or len(ids) != num_clients:
        found = f"{len(ids)} clients (ids {ids[0]}..{ids[-1]})" if ids else "no client files"
        raise DataError(
            f"dataset.path={cfg['path']} holds {found} in train/; set num_clients={len(ids)}"
            if ids == list(range(len(ids))) and ids
            else f"dataset.path={cfg['path']}: train/ holds {found}; expected 0.npz.."
            f"{num_clients - 1}.npz"
        )
    return [(folder / "train" / f"{i}.npz", folder / "test" / f"{i}.npz") for i in ids]


def read_clients(
    cfg: Mapping[str, Any], num_clients: int, num_classes: int, input_shape: Sequence[int]
) -> list[ClientData]:
    """Every client's train and test split from its files."""
    return [
        ClientData(
            train=_read(train, num_classes, input_shape), test=_read(test, num_classes, input_shape)
        )
        for train, test in client_files(cfg, num_clients)
    ]


def write_split(folder: str | Path, clients: Sequence[ClientData]) -> list[Path]:
    """``folder/train/<id>.npz`` and ``folder/test/<id>.npz`` (arrays ``x``, ``y``) per client."""
    folder = Path(folder)
    written = []
    for split in SPLITS:
        (folder / split).mkdir(parents=True, exist_ok=True)
        for cid, client in enumerate(clients):
            data = client.train if split == "train" else client.test
            path = folder / split / f"{cid}.npz"
            np.savez_compressed(path, x=data.x, y=data.y)
            written.append(path)
    return written
