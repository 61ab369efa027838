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
    width_of: ClassVar[str] = "num_classes"
    collects: ClassVar[str | None] = "logits"
    logits: np.ndarray
    counts: np.ndarray
