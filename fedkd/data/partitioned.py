"""``dataset=partitioned``: clients read their own pre-partitioned files in a simulation.

A folder with ``train/<id>`` and ``test/<id>`` for client ids ``0..num_clients-1``:
the PFLlib / HtFLlib layout ``train/<id>.npz`` + ``test/<id>.npz``
(``fedkd-export-split`` writes it from any fedkd split, so other tools can run the
identical split), or any of the formats a deployed client reads from its own data
file (``fedkd.data.local``, the same reader): ``<id>.npz``, ``<id>.csv``,
``<id>.parquet`` (label column ``dataset.label_column``, one column per input value)
or an image folder ``<id>/`` with one sub-folder per class id. A ``.npz`` holds arrays
``x`` (``[n, *input_shape]`` or ``[n, prod(input_shape)]``) and ``y`` (``[n]`` class
ids), or PFLlib's single ``data`` entry, a pickled dict with ``x`` and ``y`` (read
with ``allow_pickle``: use files you trust).

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

from fedkd.data.local import FILE_SUFFIXES, load_local_data
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
            f"test/<id>.npz; or .csv, .parquet, image folders), e.g. dataset.path=data/split "
            f"(got {path!r})"
        )
    folder = Path(path).expanduser()
    for split in SPLITS:
        if not (folder / split).is_dir():
            raise ConfigError(
                f"dataset.path={path}: no {split}/ folder; expected {split}/<id>.npz (or "
                f".csv, .parquet, an image folder) per client (fedkd-export-split writes this "
                f"layout)"
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


def _entries(folder: Path) -> dict[int, Path]:
    """``{client id: file or image folder}`` of one split folder (``0.npz``, ``1.csv``, ``2/``)."""
    out: dict[int, Path] = {}
    for entry in sorted(folder.iterdir()):
        if not entry.stem.isdigit() or entry.name.startswith("."):
            continue
        if entry.is_dir() and entry.name.isdigit() or entry.suffix.lower() in FILE_SUFFIXES:
            cid = int(entry.stem)
            if cid in out:
                raise DataError(
                    f"partitioned data: client {cid} has two entries in {folder}/: "
                    f"{out[cid].name} and {entry.name}; keep one"
                )
            out[cid] = entry
    return out


def client_files(cfg: Mapping[str, Any], num_clients: int) -> list[tuple[Path, Path]]:
    """(train, test) entry of every client; a DataError if the folder holds another number."""
    folder = Path(cfg["path"]).expanduser()
    train, test = _entries(folder / "train"), _entries(folder / "test")
    ids = sorted(train)
    if ids != list(range(len(ids))) or len(ids) != num_clients:
        found = f"{len(ids)} clients (ids {ids[0]}..{ids[-1]})" if ids else "no client files"
        raise DataError(
            f"dataset.path={cfg['path']} holds {found} in train/; set num_clients={len(ids)}"
            if ids == list(range(len(ids))) and ids
            else f"dataset.path={cfg['path']}: train/ holds {found}; expected 0.npz.."
            f"{num_clients - 1}.npz (or .csv, .parquet, image folders 0/..)"
        )
    missing = [i for i in ids if i not in test]
    if missing:
        raise DataError(
            f"dataset.path={cfg['path']}: test/ has no file for client(s) "
            f"{', '.join(map(str, missing))}; add test/{missing[0]}.npz (or .csv, .parquet, "
            f"an image folder)"
        )
    return [(train[i], test[i]) for i in ids]


def read_clients(
    cfg: Mapping[str, Any], num_clients: int, num_classes: int, input_shape: Sequence[int]
) -> list[ClientData]:
    """Every client's train and test split from its files (``fedkd.data.local``'s reader)."""

    def read(path: Path) -> ArrayDataset:
        return load_local_data(
            path,
            num_classes=num_classes,
            input_shape=input_shape,
            label_column=str(cfg["label_column"]),
            min_samples=1,
            allow_pickle=True,
        )

    return [
        ClientData(train=read(train), test=read(test))
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
