"""Any Hugging Face image-classification dataset: hub name, saved dataset or parquet folder.

``datasets`` is imported inside the loader so importing ``fedkd.data`` stays cheap.
A ``test`` split becomes the official test split; every other split joins the pool.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedkd.data.registry import DATASETS
from fedkd.data.types import ArrayDataset, SourceData
from fedkd.errors import ConfigError, DataError, FedkdError

IMAGE_KEYS = ("image", "img", "pixel_values")
LABEL_KEYS = ("label", "labels", "fine_label")
_TEST_FILE = re.compile(r"(^|[/_.-])test([/_.-]|$)")
_BATCH = 1024


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _open(path: str, cache_dir: str | None) -> dict[str, Any]:
    """Load ``path`` as ``{split: datasets.Dataset}`` from disk or the hub."""
    import datasets

    local = Path(path).expanduser()
    if local.is_dir():
        if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
            loaded = datasets.load_from_disk(str(local))
        elif parquet := sorted(local.rglob("*.parquet")):
            files: dict[str, list[str]] = {}
            for f in parquet:
                split = (
                    "test"
                    if _TEST_FILE.search(f.relative_to(local).as_posix().lower())
                    else "train"
                )
                files.setdefault(split, []).append(str(f))
            loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=cache_dir)
        else:
            loaded = datasets.load_dataset(str(local), cache_dir=cache_dir)
    elif os.path.isabs(path) or path.startswith((".", "~")) or local.exists():
        raise FileNotFoundError(f"no such directory {str(local)!r}")
    else:
        loaded = datasets.load_dataset(path, cache_dir=cache_dir)
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def _pick(
    columns: list[str],
    wanted: str | None,
    candidates: tuple[str, ...],
    what: str,
    path: str,
    split: str,
) -> str:
    """The configured column, or the first candidate present; DataError listing columns."""
    if wanted is not None:
        if wanted in columns:
            return wanted
        raise DataError(
            f"hf dataset '{path}' split '{split}' has no {what} column '{wanted}'; columns: {', '.join(columns)}"
        )
    for key in candidates:
        if key in columns:
            return key
    raise DataError(
        f"hf dataset '{path}' split '{split}' has no {what} column (looked for {', '.join(candidates)}; "
        f"set dataset.{what}_key); columns: {', '.join(columns)}"
    )


def _to_chw(item: Any) -> np.ndarray:
    """One image (PIL, encoded bytes dict or array) as a channels-first array."""
    from PIL import Image

    if isinstance(item, dict) and item.get("bytes") is not None:
        item = Image.open(io.BytesIO(item["bytes"]))
    if isinstance(item, Image.Image):
        if item.mode not in ("L", "RGB"):
            item = item.convert("L" if item.mode in ("1", "I", "I;16", "F") else "RGB")
        item = np.asarray(item)
    arr = np.asarray(item)
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim == 3:
        if arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
            arr = np.moveaxis(arr, -1, 0)
        return arr[:3] if arr.shape[0] == 4 else arr
    raise ValueError(f"image with shape {arr.shape}")


def _images(ds: Any, key: str, path: str) -> np.ndarray:
    """Decode the image column into one ``[N, C, H, W]`` array of its original dtype."""
    import datasets

    if not isinstance(ds.features[key], datasets.Image):
        ds = ds.with_format("numpy")
    batches: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for batch in ds.select_columns([key]).iter(batch_size=_BATCH):
        try:
            arrays = [_to_chw(item) for item in batch[key]]
        except (ValueError, OSError) as err:
            raise DataError(
                f"hf dataset '{path}' column '{key}' has an unusable image: {_one_line(err)}"
            ) from None
        for arr in arrays:
            if arr.shape != (shape or arr.shape):
                raise DataError(
                    f"hf dataset '{path}' images differ in shape: saw {shape} and {arr.shape}; "
                    "all images must share one shape"
                )
            shape = arr.shape
        batches.append(np.stack(arrays))
    if not batches:
        raise DataError(f"hf dataset '{path}' has an empty split")
    return np.concatenate(batches)


def _labels(ds: Any, key: str, path: str) -> np.ndarray:
    y = np.asarray(ds.with_format("numpy")[key])
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"hf dataset '{path}' label column '{key}' must hold integer class ids (got dtype {y.dtype}, shape {y.shape})"
        )
    if y.size and y.min() < 0:
        raise DataError(
            f"hf dataset '{path}' label column '{key}' has negative labels (unlabelled split?)"
        )
    return y.astype(np.int64)


def open_splits(path: str, cache_dir: str | None) -> dict[str, Any]:
    """``{split: datasets.Dataset}`` of ``path``; any loading failure is a one-line DataError."""
    try:
        splits = _open(path, cache_dir)
    except FedkdError:
        raise
    except Exception as err:  # datasets raises many types; all mean "cannot load"
        raise DataError(
            f"could not load hf dataset '{path}' from the hub or disk: {_one_line(err)}"
        ) from None
    if not splits:
        raise DataError(f"hf dataset '{path}' has no splits")
    return splits


def read_labels(
    ds: Any, split: str, path: str, label_key: str | None
) -> tuple[np.ndarray, int | None]:
    """One split's int64 labels and its ClassLabel size (or None); ``label_key`` None: auto-detect."""
    import datasets

    label_key = _pick(ds.column_names, label_key, LABEL_KEYS, "label", path, split)
    feature = ds.features[label_key]
    declared = int(feature.num_classes) if isinstance(feature, datasets.ClassLabel) else None
    return _labels(ds, label_key, path), declared


def read_split(
    ds: Any, split: str, path: str, image_key: str | None, label_key: str | None
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """One split's raw images ``[N, C, H, W]``, int64 labels, and its ClassLabel size (or None).

    ``image_key``/``label_key``: the configured columns, None to auto-detect.
    """
    image_key = _pick(ds.column_names, image_key, IMAGE_KEYS, "image", path, split)
    y, declared = read_labels(ds, split, path, label_key)
    return _images(ds, image_key, path), y, declared


def class_count(ys: list[np.ndarray], declared: int | None, path: str) -> int:
    """The ClassLabel size if any split declares one, else max label + 1; checks the labels."""
    top = max(int(a.max()) for a in ys if a.size)
    num_classes = top + 1 if declared is None else declared
    if top >= num_classes:
        raise DataError(f"hf dataset '{path}' has labels >= num_classes ({num_classes})")
    return num_classes


def needs_scaling(arrays: list[np.ndarray]) -> bool:
    """Pixels need a 1/255 scale unless every array is already floats in [0, 1]."""
    return any(np.issubdtype(a.dtype, np.integer) or float(a.max()) > 1.0 for a in arrays)


def check_hf(cfg: Mapping[str, Any]) -> None:
    """``dataset.path``: a hub name, or a local folder that exists."""
    path = cfg.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError(
            f"dataset.path must name a hub dataset or a local directory (got {path!r}); "
            f"e.g. dataset.path=mnist or dataset.path=/data/cifar10"
        )
    local = Path(path).expanduser()
    if (os.path.isabs(path) or path.startswith((".", "~"))) and not local.is_dir():
        raise DataError(
            f"could not load hf dataset '{path}' from the hub or disk: no such directory; set "
            f"dataset.path to an existing folder (save_to_disk or parquet files) or a hub name "
            f"such as mnist"
        )


@DATASETS.register("hf", check=check_hf)
def load_hf(cfg: Mapping[str, Any], seed: int) -> SourceData:
    """Params: ``path``, ``image_key``, ``label_key``, ``max_samples`` (per split), ``cache_dir``.

    Images are scaled by 1/255 (unless already floats in [0, 1]); grayscale becomes
    ``(1, H, W)``, RGB ``(3, H, W)``.
    """
    check_hf(cfg)
    path = cfg["path"]
    splits = open_splits(path, cfg.get("cache_dir"))

    max_samples = cfg.get("max_samples")
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
    ):
        raise ConfigError(f"dataset.max_samples must be an int >= 1 (got {max_samples!r})")
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    num_classes: int | None = None
    for i, name in enumerate(sorted(splits)):
        ds = splits[name]
        if len(ds) == 0:
            continue
        if max_samples is not None and len(ds) > max_samples:
            keep = np.random.default_rng([seed, i]).choice(len(ds), max_samples, replace=False)
            ds = ds.select(np.sort(keep))
        xs[name], ys[name], declared = read_split(
            ds, name, path, cfg.get("image_key"), cfg.get("label_key")
        )
        if declared is not None:
            num_classes = max(num_classes or 0, declared)

    if not xs:
        raise DataError(f"hf dataset '{path}' has no samples")
    shapes = sorted({x.shape[1:] for x in xs.values()})
    if len(shapes) > 1:
        raise DataError(f"hf dataset '{path}' splits have different image shapes: {shapes}")
    test = None
    if "test" in xs and len(xs) > 1:  # a lone test split is used as the pool
        test = (xs.pop("test"), ys.pop("test"))
    x = np.concatenate([xs[n] for n in sorted(xs)])
    y = np.concatenate([ys[n] for n in sorted(ys)])
    all_y = [y] if test is None else [y, test[1]]
    num_classes = class_count(all_y, num_classes, path)
    scale = needs_scaling([x] if test is None else [x, test[0]])

    def scaled(a: np.ndarray) -> np.ndarray:
        out = a.astype(np.float32)
        if scale:
            out *= np.float32(1.0 / 255.0)
        return out

    return SourceData(
        x=scaled(x),
        y=y,
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in x.shape[1:]),
        test=None if test is None else ArrayDataset(x=scaled(test[0]), y=test[1]),
    )
