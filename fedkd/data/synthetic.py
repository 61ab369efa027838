"""Seeded Gaussian-mixture classification data of any size and shape.

Used for scale tests (e.g. 1,000,000 x 32) and for runs where a real dataset is
beside the point. Difficulty is set by ``class_sep`` relative to ``noise`` and does
not depend on the number of features, so a 784-feature "image" is as hard as a
32-feature vector with the same settings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkd.data.registry import DATASETS
from fedkd.data.types import ArrayDataset, SourceData
from fedkd.errors import ConfigError

_CHUNK = 65536  # rows generated at a time: bounds temporary memory for huge N


def _number(cfg: Mapping[str, Any], key: str, minimum: float, kind: type) -> Any:
    """Read ``dataset.<key>`` as ``kind`` (int or float), >= ``minimum``, else ConfigError."""
    value = cfg[key]
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or value < minimum:
        raise ConfigError(f"dataset.{key} must be a {kind.__name__} >= {minimum} (got {value!r})")
    return kind(value)


def _sample(
    rng: np.random.Generator, means: np.ndarray, n: int, noise: float, center: float, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` exactly class-balanced samples; returns flat float32 x and int64 y."""
    num_classes, dim = means.shape
    y = rng.permutation(np.arange(n, dtype=np.int64) % num_classes)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block *= noise
        block += means[y[start:stop]]
        block *= scale
        block += center
        x[start:stop] = block
    return x, y


def _class_means(
    rng: np.random.Generator, num_classes: int, shape: tuple[int, ...], blocks: Any
) -> np.ndarray:
    """Standard-normal class means ``[C, prod(shape)]``; with ``blocks: B`` constant on
    ``B x B`` pixel blocks of an image shape, so they have spatial structure a CNN can
    pick up (i.i.d. pixels average out under pooling). Ours, for the scale benchmarks."""
    if blocks is None:
        return rng.standard_normal((num_classes, math.prod(shape)))
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1 or len(shape) < 2:
        raise ConfigError(
            f"dataset.blocks must be null or an int >= 1 with an image dataset.shape (got {blocks!r})"
        )
    height, width = shape[-2:]
    grid = rng.standard_normal(
        (num_classes, *shape[:-2], -(-height // blocks), -(-width // blocks))
    )
    full = grid.repeat(blocks, axis=-2).repeat(blocks, axis=-1)[..., :height, :width]
    return full.reshape(num_classes, -1)


@DATASETS.register("synthetic")
def load_synthetic(cfg: Mapping[str, Any], seed: int) -> SourceData:
    """Gaussian mixture: one isotropic Gaussian (std ``noise``) per class.

    Class means have i.i.d. normal entries (per block of ``blocks x blocks`` pixels
    when ``blocks`` is set) scaled so the expected distance between
    two means is ``2 * class_sep`` whatever the dimension. The output is affinely
    mapped to be centred on 0.5 with ~99.7% of values in [0, 1], like image data.
    """
    num_samples = _number(cfg, "num_samples", 1, int)
    num_classes = _number(cfg, "num_classes", 2, int)
    class_sep = _number(cfg, "class_sep", 0.0, float)
    noise = _number(cfg, "noise", 0.0, float)
    test_samples = _number(cfg, "test_samples", 0, int)
    shape_cfg = cfg["shape"]
    if shape_cfg is not None:
        shape = tuple(shape_cfg)
        if not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
        ):
            raise ConfigError(f"dataset.shape must be a list of positive ints (got {shape_cfg!r})")
        dim = math.prod(shape)
    else:
        dim = _number(cfg, "num_features", 1, int)
        shape = (dim,)
    data_seed = cfg.get("seed")
    rng = np.random.default_rng(seed if data_seed is None else int(data_seed))

    means = (
        _class_means(rng, num_classes, shape, cfg["blocks"]) * (class_sep * math.sqrt(2.0 / dim))
    ).astype(np.float32)
    spread = math.sqrt(noise**2 + 2.0 * class_sep**2 / dim)  # per-feature std of the mixture
    scale = 1.0 / (6.0 * spread) if spread > 0 else 1.0
    x, y = _sample(rng, means, num_samples, noise, 0.5, scale)
    test = None
    if test_samples > 0:
        tx, ty = _sample(rng, means, test_samples, noise, 0.5, scale)
        test = ArrayDataset(x=tx.reshape((test_samples, *shape)), y=ty)
    return SourceData(
        x=x.reshape((num_samples, *shape)),
        y=y,
        num_classes=num_classes,
        input_shape=shape,
        test=test,
    )
