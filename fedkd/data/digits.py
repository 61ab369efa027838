"""scikit-learn's bundled 8x8 digits: a real image dataset that needs no download."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedkd.data.registry import DATASETS
from fedkd.data.types import SourceData
from fedkd.errors import DataError


@DATASETS.register("digits")
def load_digits(cfg: Mapping[str, Any], seed: int) -> SourceData:
    """1797 grayscale digits as ``(N, 1, 8, 8)`` in [0, 1]; no official test split.

    Pixel values are 0..16 in the source, hence the division by 16. The file is
    read the way ``sklearn.datasets.load_digits`` reads it (64 pixel columns, then
    the label), without importing scikit-learn: that import costs every worker
    process about a second (``tests/fedkd/test_data.py`` checks both give the same arrays).
    """
    data = np.loadtxt(_digits_file(), delimiter=",", dtype=np.float64)
    x = (data[:, :-1].astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = data[:, -1].astype(np.int64)
    return SourceData(x=x, y=y, num_classes=10, input_shape=(1, 8, 8))


def _digits_file() -> Path:
    """scikit-learn's ``datasets/data/digits.csv.gz``, found without importing sklearn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DataError("dataset 'digits' needs scikit-learn installed (pip install scikit-learn)")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.exists():
        raise DataError(f"dataset 'digits': scikit-learn's {path} is missing")
    return path
