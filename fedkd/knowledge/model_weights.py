"""Named model arrays for weight-sharing baselines (FedAvg, FedDF, FedKA)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from fedkd.errors import PayloadError
from fedkd.knowledge.base import PAYLOADS, Payload, check_array, check_keys


def _floating(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return sorted(k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating))


@PAYLOADS.register("model_weights")
@dataclass(frozen=True, eq=False)
class ModelWeights(Payload):
    """Named model arrays; dtype (float or int), finiteness and size are checked here, names
    and shapes against the architecture by the strategy.

    Locally private as one flat vector of the float arrays (clipped and noised as a whole);
    integer arrays (BatchNorm's step counter, which counts the client's batches, a function
    of its data size) are released as zeros, which says nothing (ours)."""

    kind: ClassVar[str] = "model_weights"
    attacks: ClassVar[tuple[str, ...]] = ("random_logits", "scale", "stale", "count_claim")
    arrays: dict[str, np.ndarray]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return dict(self.arrays)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> ModelWeights:
        check_keys(cls.kind, "meta", meta, set())
        return cls(arrays=dict(arrays))

    def validate(
        self,
        *,
        num_classes: int,
        num_public: int | None = None,
        feature_dim: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        if not self.arrays:
            raise PayloadError(f"{self.kind}: no arrays", "shape")
        for name, value in self.arrays.items():
            arr = check_array(f"{self.kind}.{name}", value)
            if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                raise PayloadError(
                    f"{self.kind}.{name}: dtype must be a float or integer type, got {arr.dtype}",
                    "dtype",
                )
            if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
                raise PayloadError(f"{self.kind}.{name}: contains NaN or Inf", "non_finite")
        self._check_bytes(max_bytes)

    @classmethod
    def extract(cls, source, spec) -> ModelWeights:
        return cls(source.model_arrays())

    def privatize(self, release) -> ModelWeights:
        floats = _floating(self.arrays)
        arrays = {k: v if k in floats else np.zeros_like(v) for k, v in self.arrays.items()}
        if not floats:
            return ModelWeights(arrays)
        flat = np.concatenate([self.arrays[k].ravel() for k in floats])
        noisy = release.values(flat[None, :])[0]
        start = 0
        for k in floats:
            n, like = self.arrays[k].size, self.arrays[k]
            arrays[k] = noisy[start : start + n].reshape(like.shape).astype(like.dtype)
            start += n
        return ModelWeights(arrays)

    def randomized(self, rng, magnitude, num_classes) -> ModelWeights:
        return ModelWeights(
            {
                k: (rng.standard_normal(v.shape) * magnitude).astype(v.dtype)
                if np.issubdtype(v.dtype, np.floating)
                else v
                for k, v in self.arrays.items()
            }
        )

    def scaled(self, factor) -> ModelWeights:
        return ModelWeights(
            {
                k: (v * factor).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
                for k, v in self.arrays.items()
            }
        )

    def bounded_arrays(self):
        return [
            (
                f"model_weights.{name}",
                a,
                "weights" if np.issubdtype(a.dtype, np.floating) else "max_count",
            )
            for name, a in self.arrays.items()
        ]

    def clip_blocks(self):
        # each floating array is one row: whole tensors are clipped towards the median tensor
        return {
            name: (self.arrays[name].reshape(1, -1), np.ones(1, bool))
            for name in _floating(self.arrays)
        }

    def with_blocks(self, blocks):
        arrays = dict(self.arrays)
        for name, rows in blocks.items():
            ref = self.arrays[name]
            arrays[name] = rows.reshape(ref.shape).astype(ref.dtype)
        return ModelWeights(arrays)

    @classmethod
    def with_extra_class(cls, arrays):
        # model weights have no class axis: a wrong output layer instead (the first float
        # array gains a trailing axis)
        floats = [k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating)]
        key = floats[0] if floats else next(iter(arrays))
        return {**arrays, key: arrays[key][..., None]}
