"""Values on indexed public samples: FedMD logits, DS-FL / KnFu probabilities."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from fedkd.errors import PayloadError
from fedkd.knowledge.base import (
    PAYLOADS,
    PROB_TOLERANCE,
    SPACES,
    Payload,
    check_indices,
    check_keys,
    float_array,
    int_array,
    softmax,
)


def simplex(values: np.ndarray) -> np.ndarray:
    """Clamp at 0 and renormalise rows (post-processing); an all-zero row becomes uniform."""
    values = np.clip(values, 0.0, None)
    sums = values.sum(axis=1, keepdims=True)
    return np.where(sums > 0, values / np.where(sums > 0, sums, 1.0), 1.0 / values.shape[1])


@PAYLOADS.register("public_logits")
@dataclass(frozen=True, eq=False)
class PublicLogits(Payload):
    """Values ``[N, C]`` on public samples ``indices [N]``; ``space`` is logits or probs.

    ``temperatures [N]`` (optional, > 0): per-sample distillation temperatures (Swing,
    :mod:`fedkd.privacy.swing`); absent for every other method. Extracted as the client
    model's logits on the requested samples, or their softmax at the plan's temperature.
    """

    kind: ClassVar[str] = "public_logits"
    score_key: ClassVar[str | None] = "values"
    attacks: ClassVar[tuple[str, ...]] = (
        "random_logits",
        "label_flip",
        "scale",
        "stale",
        "count_claim",
    )
    indices: np.ndarray
    values: np.ndarray
    space: str
    temperatures: np.ndarray | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"indices": self.indices, "values": self.values}
        if self.temperatures is not None:
            arrays["temperatures"] = self.temperatures
        return arrays

    def meta(self) -> dict[str, str | int | float]:
        return {"space": self.space}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> PublicLogits:
        expected = {"indices", "values"} | ({"temperatures"} & set(arrays))
        check_keys(cls.kind, "array", arrays, expected)
        check_keys(cls.kind, "meta", meta, {"space"})
        if meta["space"] not in SPACES:
            raise PayloadError(
                f"{cls.kind}: space must be one of {SPACES}, got {meta['space']!r}", "malformed"
            )
        return cls(
            indices=arrays["indices"],
            values=arrays["values"],
            space=str(meta["space"]),
            temperatures=arrays.get("temperatures"),
        )

    def validate(
        self,
        *,
        num_classes: int,
        num_public: int | None = None,
        feature_dim: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        k = self.kind
        if self.space not in SPACES:
            raise PayloadError(
                f"{k}: space must be one of {SPACES}, got {self.space!r}", "malformed"
            )
        idx = int_array(f"{k}.indices", self.indices, 1)
        values = float_array(f"{k}.values", self.values, 2)
        if values.shape[0] != idx.shape[0]:
            raise PayloadError(
                f"{k}: {values.shape[0]} value rows but {idx.shape[0]} indices", "shape"
            )
        if values.shape[1] != num_classes:
            raise PayloadError(
                f"{k}.values: expected {num_classes} classes, got {values.shape[1]}", "class_count"
            )
        check_indices(k, idx, num_public)
        if self.temperatures is not None:
            temps = float_array(f"{k}.temperatures", self.temperatures, 1)
            if temps.shape[0] != idx.shape[0]:
                raise PayloadError(
                    f"{k}: {temps.shape[0]} temperatures but {idx.shape[0]} indices", "shape"
                )
            if temps.size and temps.min() <= 0:
                raise PayloadError(
                    f"{k}.temperatures: must be > 0, got min {temps.min()}", "value_range"
                )
        if self.space == "probs":
            if values.size and (values.min() < 0 or values.max() > 1):
                raise PayloadError(f"{k}.values: probabilities outside [0, 1]", "value_range")
            err = np.abs(values.sum(axis=1) - 1.0)
            if err.size and err.max() > PROB_TOLERANCE:
                raise PayloadError(
                    f"{k}.values: probability rows must sum to 1 (max error {err.max():.3g})",
                    "value_range",
                )
        self._check_bytes(max_bytes)

    @classmethod
    def extract(cls, source, spec) -> PublicLogits:
        import torch

        logits = source.public_logits()
        if spec.space == "probs":
            logits = torch.softmax(logits / float(spec.temperature), dim=1)
        values = logits.cpu().numpy().astype(np.float32)
        indices = source.request_indices.astype(np.int64)
        return cls(indices=indices, values=values, space=spec.space)

    def privatize(self, release) -> PublicLogits:
        values = release.values(self.values)
        if self.space == "probs":
            values = simplex(values)
        return replace(self, values=values.astype(np.float32))

    def randomized(self, rng, magnitude, num_classes) -> PublicLogits:
        values = (rng.standard_normal(self.values.shape) * magnitude).astype(self.values.dtype)
        if self.space == "probs":
            values = softmax(values.astype(np.float64)).astype(self.values.dtype)
        return PublicLogits(self.indices, values, self.space)

    def relabelled(self, pi) -> PublicLogits:
        values = np.empty_like(self.values)
        values[:, pi] = self.values  # the score of class c becomes the score of pi(c)
        return PublicLogits(self.indices, values, self.space)

    def scaled(self, factor) -> PublicLogits:
        values = self.values.astype(np.float64)
        if self.space == "probs":
            values = softmax(factor * np.log(np.clip(values, 1e-12, None)))
        else:
            values = values * factor
        return PublicLogits(self.indices, values.astype(self.values.dtype), self.space)

    def bounded_arrays(self):
        return [("public_logits.values", self.values, "logits")] if self.space == "logits" else []

    def clip_blocks(self):
        if self.space != "logits":  # probabilities are bounded already
            return {}
        return {"values": (self.values, np.ones(self.values.shape[0], bool))}

    def with_blocks(self, blocks):
        return replace(self, values=blocks["values"].astype(np.float32))

    @classmethod
    def with_extra_class(cls, arrays):  # one more class column
        values = arrays["values"]
        return {**arrays, "values": np.concatenate([values, values[:, :1]], axis=1)}
