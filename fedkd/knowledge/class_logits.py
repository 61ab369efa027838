"""FD's per-label mean logits ``[C, C]`` + label counts (Jeong et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedkd.knowledge.base import PAYLOADS, PerClass


@PAYLOADS.register("class_logits")
@dataclass(frozen=True, eq=False)
class ClassLogits(PerClass):
    """FD per-label mean logits ``[C, C]`` (row ℓ = mean logits of samples labelled ℓ).

    Collected from the training forward passes' logits, as the reference code does; the
    logits table is a score table (top-k encoding may sparsify it)."""

    kind: ClassVar[str] = "class_logits"
    value_key: ClassVar[str] = "logits"
    score_key: ClassVar[str | None] = "logits"
    collects: ClassVar[str | None] = "logits"
    logits: np.ndarray
    counts: np.ndarray

    def validate(
        self,
        *,
        num_classes: int,
        num_public: int | None = None,
        feature_dim: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self._validate_per_class(num_classes, num_classes, "num_classes")
        self._check_bytes(max_bytes)
