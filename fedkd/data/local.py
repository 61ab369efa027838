"""A client's own data file: ``.npz``, ``.csv``, ``.parquet`` or an image folder.

In a real deployment each SuperNode may hold its own data instead of a
partition of a named dataset. The run's dataset still defines the task (input
shape, number of classes) and still provides the global test set and the public
set on every node, because the server and all clients must share the same
public set; only the client's private train/test split comes from its file.

Formats (labels are integer class ids ``0..num_classes-1``):

- ``.npz``: arrays ``x`` (``[N, *input_shape]`` or ``[N, prod(input_shape)]``)
  and ``y`` (``[N]``); an optional scalar ``num_classes`` must match the run; with
  ``allow_pickle`` (``dataset=partitioned``: PFLlib / HtFLlib files), PFLlib's single
  ``data`` entry, a pickled dict with ``x`` and ``y``, instead;
- ``.csv`` / ``.parquet``: one integer label column (``label`` unless told
  otherwise) and one numeric column per input value, in row-major order of the
  run's input shape (64 columns for digits' ``1x8x8``);
- a folder: one sub-folder per class, named by its class id (``0/``, ``1/``,
  ...), holding images (png, jpg, bmp, gif, webp); pixels are scaled to [0, 1].

Features of files are used as they are (float32): scale them like the run's
dataset (digits: [0, 1]). Every problem is a one-line ``DataError`` naming the
path: a missing file, missing or non-numeric columns, a class count that
disagrees with the run, or samples whose shape does not match the run's inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedkd.data.splits import _local_split
from fedkd.data.types import ArrayDataset, ClientData
from fedkd.errors import DataError

FILE_SUFFIXES = (".npz", ".csv", ".parquet")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def load_local_data(
    path: str | Path,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    label_column: str = "label",
    min_samples: int = 2,
    allow_pickle: bool = False,
) -> ArrayDataset:
    """Load and validate one client's labelled samples against the run's task.

    ``allow_pickle``: also read PFLlib's pickled ``data`` entry of a ``.npz`` (files you
    trust); ``min_samples``: the fewest samples the file may hold."""
    path = Path(path).expanduser()
    shape = tuple(int(d) for d in input_shape)
    if not path.exists():
        raise DataError(f"local data '{path}' does not exist")
    if path.is_dir():
        x, y = _read_image_folder(path, num_classes)
    elif path.suffix.lower() == ".npz":
        x, y = _read_npz(path, num_classes, allow_pickle)
    elif path.suffix.lower() in (".csv", ".parquet"):
        x, y = _read_table(path, label_column)
    else:
        raise DataError(
            f"local data '{path}' must be a .npz, .csv or .parquet file or an image folder"
        )
    y = _check_labels(path, y, num_classes)
    x = _check_features(path, x, shape)
    if len(y) != len(x):
        raise DataError(f"local data '{path}' has {len(x)} samples but {len(y)} labels")
    if len(y) < min_samples:
        raise DataError(f"local data '{path}' has {len(y)} samples; needs at least {min_samples}")
    return ArrayDataset(x=x, y=y)


def local_client_data(
    path: str | Path,
    *,
    num_classes: int,
    input_shape: Sequence[int],
    test_fraction: float,
    seed: int,
    client_id: int,
    label_column: str = "label",
) -> ClientData:
    """The client's local train/test split of its own file, seeded like a partition's."""
    data = load_local_data(
        path, num_classes=num_classes, input_shape=input_shape, label_column=label_column
    )
    train, test = _local_split(np.arange(len(data)), client_id, test_fraction, seed)
    return ClientData(
        train=ArrayDataset(x=data.x[train], y=data.y[train]),
        test=ArrayDataset(x=data.x[test], y=data.y[test]),
    )


def _read_npz(
    path: Path, num_classes: int, allow_pickle: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if not {"x", "y"} <= set(names) and "data" in names and allow_pickle:
                arrays = {}  # PFLlib: np.savez_compressed(f, data={"x": ..., "y": ...})
            else:
                arrays = {key: npz[key] for key in names}
    except (OSError, ValueError) as err:
        raise DataError(f"local data '{path}' is not a readable .npz file: {err}") from None
    if not arrays and names:
        try:
            with np.load(path, allow_pickle=True) as npz:
                data = npz["data"].item() if npz["data"].dtype == object else None
        except (OSError, ValueError) as err:
            raise DataError(f"local data '{path}' is not a readable .npz file: {err}") from None
        if not isinstance(data, dict) or "x" not in data or "y" not in data:
            raise DataError(f"local data '{path}': its data entry is not a dict with 'x' and 'y'")
        arrays = {"x": np.asarray(data["x"]), "y": np.asarray(data["y"])}
    if "x" not in arrays or "y" not in arrays:
        pfl = " (or PFLlib's 'data')" if allow_pickle else ""
        raise DataError(
            f"local data '{path}' has arrays [{', '.join(sorted(arrays))}]; "
            f"needs 'x' (features) and 'y' (labels){pfl}"
        )
    if "num_classes" in arrays:
        declared = arrays["num_classes"]
        if declared.shape != () or int(declared) != num_classes:
            raise DataError(
                f"local data '{path}' declares num_classes={declared.tolist()} "
                f"but the run's dataset has {num_classes} classes"
            )
    return arrays["x"], arrays["y"]


def _read_table(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa

    try:
        if path.suffix.lower() == ".csv":
            from pyarrow import csv

            table = csv.read_csv(path)
        else:
            from pyarrow import parquet

            table = parquet.read_table(path)
    except (OSError, pa.ArrowException) as err:
        reason = " ".join(str(err).split())
        raise DataError(f"local data '{path}' cannot be read: {reason}") from None
    columns = table.column_names
    if label_column not in columns:
        raise DataError(
            f"local data '{path}' has no label column '{label_column}'; "
            f"columns: {', '.join(columns) or 'none'}"
        )
    features = [c for c in columns if c != label_column]
    if not features:
        raise DataError(f"local data '{path}' has no feature columns besides '{label_column}'")
    for name in features:
        kind = table.schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise DataError(
                f"local data '{path}' column '{name}' is not numeric (type {kind}); "
                f"every column except '{label_column}' must hold one input value"
            )
    label = table.column(label_column)
    if label.null_count:
        raise DataError(f"local data '{path}' has {label.null_count} empty labels")
    x = np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in features], axis=1)
    return x, label.to_numpy(zero_copy_only=False)


def _read_image_folder(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    from fedkd.data.hf import _to_chw

    folders = sorted(p for p in path.iterdir() if p.is_dir())
    bad = [p.name for p in folders if not p.name.isdigit()]
    if bad or not folders:
        raise DataError(
            f"local image folder '{path}' needs one sub-folder per class named by its "
            f"class id (0..{num_classes - 1}); found {', '.join(bad) or 'no sub-folders'}"
        )
    xs, ys = [], []
    for folder in folders:
        for file in sorted(folder.iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    xs.append(_to_chw(image.copy()))
            except (OSError, UnidentifiedImageError, ValueError) as err:
                raise DataError(f"local image '{file}' cannot be read: {err}") from None
            ys.append(int(folder.name))
    if not xs:
        raise DataError(f"local image folder '{path}' holds no images")
    shapes = sorted({a.shape for a in xs})
    if len(shapes) > 1:
        raise DataError(f"local image folder '{path}' has images of different shapes: {shapes}")
    x = np.stack(xs).astype(np.float32) / np.float32(255.0)
    return x, np.asarray(ys, dtype=np.int64)


def _check_labels(path: Path, y: np.ndarray, num_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"local data '{path}' labels must be one id per sample (shape {y.shape})")
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"local data '{path}' labels must be integer class ids (got {y.dtype})")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(
            f"local data '{path}' has labels {int(y.min())}..{int(y.max())} but the run's "
            f"dataset has {num_classes} classes (0..{num_classes - 1})"
        )
    return y.astype(np.int64)


def _check_features(path: Path, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"local data '{path}' features must be numbers (got {x.dtype})")
    size = int(np.prod(shape))
    sample = tuple(x.shape[1:])
    if sample != shape and sample != (size,):
        raise DataError(
            f"local data '{path}' samples have shape {sample}; the run's dataset has "
            f"input shape {shape} ({size} values per sample)"
        )
    x = x.astype(np.float32).reshape((len(x), *shape))
    if not np.isfinite(x).all():
        raise DataError(f"local data '{path}' features contain NaN or Inf")
    return x
