"""scikit-learn's bundled 8x8 digits: a real image dataset that needs no download."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkd.data.registry import DATASETS
from fedkd.data.types import SourceData


@DATASETS.register("digits")
def load_digits(cfg: Mapping[str, Any], seed: int) -> SourceData:
    """1797 grayscale digits as ``(N, 1, 8, 8)`` in [0, 1]; no official test split.

    Pixel values are 0..16 in the source, hence the division by 16.
    """
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    return SourceData(x=x, y=y, num_classes=10, input_shape=(1, 8, 8))
