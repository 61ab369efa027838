"""Shared machinery for strategies that exchange predictions on the public set.

Round ``r`` sends each client the fused targets on round ``r-1``'s subset (to
distil on) and the indices of round ``r``'s subset (to predict on), so one
exchange per round carries both directions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedkd.errors import ConfigError, PayloadError
from fedkd.knowledge import PublicLogits
from server.strategies.base import FedkdStrategy


class PublicSetStrategy(FedkdStrategy):
    upload_kind = "public_logits"
    needs_public_set = True
    subset_key: str = ""  # strategy option holding the per-round subset size
    upload_space: str = "logits"

    @classmethod
    def subset_size(cls, cfg: dict[str, Any]) -> int:
        size = int(cfg["strategy"][cls.subset_key])
        if size < 1:
            raise ConfigError(f"strategy.{cls.subset_key} must be >= 1 (got {size})")
        return size

    def setup(self) -> None:
        self.size = min(self.subset_size(self.cfg), self.info.num_public)
        self.indices: dict[int, np.ndarray] = {}
        self.targets: PublicLogits | None = None

    def state_dict(self) -> dict[str, Any]:
        # the subsets need no state: indices_for draws them from (seed, round)
        return {**super().state_dict(), "targets": self.targets}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.targets = state["targets"]

    def indices_for(self, server_round: int) -> np.ndarray:
        """The round's subset of the public set: fresh, seeded, sorted."""
        if server_round not in self.indices:
            chosen = self.rng_for(server_round, "public").choice(
                self.info.num_public, size=self.size, replace=False
            )
            self.indices[server_round] = np.sort(chosen).astype(np.int64)
        return self.indices[server_round]

    def request_for(self, server_round: int) -> dict[str, np.ndarray]:
        return {"indices": self.indices_for(server_round)}

    def payload_for(self, server_round: int, client_id: int) -> PublicLogits | None:
        return self.targets

    def check_upload(self, server_round: int, client_id: int, payload: PublicLogits) -> None:
        if payload.space != self.upload_space:
            raise PayloadError(
                f"expected {self.upload_space} on the public set, got {payload.space}", "wrong_kind"
            )
        if not np.array_equal(payload.indices, self.indices_for(server_round)):
            raise PayloadError(
                "uploaded public-set indices differ from the ones requested this round",
                "index_range",
            )

    def stacked(self, uploads: dict[int, Any]) -> tuple[list[int], np.ndarray]:
        """Client ids in order and their values stacked ``[K, N, C]``."""
        ids = sorted(uploads)
        return ids, np.stack([uploads[i].values for i in ids]).astype(np.float64)
