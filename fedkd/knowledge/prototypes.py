"""FedProto's per-class mean features ``[C, d]`` + label counts (Tan et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedkd.knowledge.base import PAYLOADS, PerClass


@PAYLOADS.register("prototypes")
@dataclass(frozen=True, eq=False)
class Prototypes(PerClass):
    """FedProto per-class mean features ``[C, d]``; rows with count 0 are ignored.

    Collected from the training forward passes' features (the penultimate embedding)."""

    kind: ClassVar[str] = "prototypes"
    value_key: ClassVar[str] = "prototypes"
    width_of: ClassVar[str] = "feature_dim"
    collects: ClassVar[str | None] = "features"
    prototypes: np.ndarray
    counts: np.ndarray
