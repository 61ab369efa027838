"""Class votes on public samples: labels only (FedKA-style federated voting, PATE teachers)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from fedkd.errors import ConfigError, PayloadError
from fedkd.knowledge.base import PAYLOADS, Payload, check_indices, check_keys, int_array


@PAYLOADS.register("votes")
@dataclass(frozen=True, eq=False)
class Votes(Payload):
    """Class votes ``[N, k]`` (top-k, best first; -1 = abstain) on public samples ``indices [N]``.

    A client reveals only labels, not scores: the top-k classes of its logits on the
    requested samples; locally private through k-ary randomized response (top-1 only).
    """

    kind: ClassVar[str] = "votes"
    label_release: ClassVar[bool] = True
    attacks: ClassVar[tuple[str, ...]] = ("random_logits", "label_flip", "stale", "count_claim")
    indices: np.ndarray
    votes: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"indices": self.indices, "votes": self.votes}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Votes:
        check_keys(cls.kind, "array", arrays, {"indices", "votes"})
        check_keys(cls.kind, "meta", meta, set())
        return cls(indices=arrays["indices"], votes=arrays["votes"])

    def validate(
        self,
        *,
        num_classes: int,
        num_public: int | None = None,
        feature_dim: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        k = self.kind
        idx = int_array(f"{k}.indices", self.indices, 1)
        votes = int_array(f"{k}.votes", self.votes, 2)
        if votes.shape[0] != idx.shape[0]:
            raise PayloadError(
                f"{k}: {votes.shape[0]} vote rows but {idx.shape[0]} indices", "shape"
            )
        if votes.size and (votes.min() < -1 or votes.max() >= num_classes):
            raise PayloadError(
                f"{k}.votes: class ids must be in [-1, {num_classes}), got {votes.min()}..{votes.max()}",
                "value_range",
            )
        check_indices(k, idx, num_public)
        self._check_bytes(max_bytes)

    @classmethod
    def extract(cls, source, spec) -> Votes:
        top = source.public_logits().topk(int(spec.top_k), dim=1).indices.cpu().numpy()
        return cls(indices=source.request_indices.astype(np.int64), votes=top.astype(np.int64))

    def privatize(self, release) -> Votes:
        if self.votes.shape[1] != 1:
            raise ConfigError("the privacy mod's randomized response needs top_k = 1 votes")
        return replace(self, votes=release.labels(self.votes))

    def randomized(self, rng, magnitude, num_classes) -> Votes:
        votes = rng.integers(0, num_classes, size=self.votes.shape)
        return Votes(self.indices, votes.astype(self.votes.dtype))

    def relabelled(self, pi) -> Votes:
        votes = np.where(self.votes >= 0, pi[np.clip(self.votes, 0, None)], -1)
        return Votes(self.indices, votes.astype(self.votes.dtype))

    @classmethod
    def with_extra_class(cls, arrays):  # a class id past the last class
        return {**arrays, "votes": arrays["votes"] + 1_000}
