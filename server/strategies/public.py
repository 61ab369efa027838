"""Shared machinery for strategies that exchange predictions on the public set.

Round ``r`` sends each client the fused targets on round ``r-1``'s subset (to
distil on) and the indices of round ``r``'s subset (to predict on), so one
exchange per round carries both directions.

Strategies with a ``strategy.distill`` section (dsfl, fedmd, knfu) budget the
clients' distillation in optimiser steps with its own optimiser, from
``start_round`` on, optionally ramped (:mod:`fedkd.schedule`). Every fusion
reports the health of the fused targets (:meth:`PublicSetStrategy.target_health`):
their accuracy against the public set's held-back labels (``target_acc``, which
only the simulator knows and no method uses) and their mean entropy.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from fedkd.client.runtime import data_key, federated_data
from fedkd.errors import ConfigError, PayloadError
from fedkd.fusion import sharpen_entropy, softmax
from fedkd.knowledge import PublicLogits
from fedkd.plan import DistillSpec, Plan
from fedkd.privacy.swing import SwingSpec
from fedkd.schedule import round_budget
from fedkd.strategy_options import SPECS, swing_of
from server.canaries import CanaryLog
from server.fusion import require_finite
from server.strategies.base import FedkdStrategy


class PublicSetStrategy(FedkdStrategy):
    streams = {"public": 2}  # random.rng_for(round, "public"): the round's public subset

    @classmethod
    def subset_size(cls, cfg: dict[str, Any]) -> int:
        size = int(cfg["strategy"][cls.subset_key])
        if size < 1:
            raise ConfigError(f"strategy.{cls.subset_key} must be >= 1 (got {size})")
        return size

    def budget_plan(
        self, server_round: int, loss: str, when: str = "before", **options: Any
    ) -> DistillSpec:
        """The plan's ``distill`` entry: this round's steps (0 before ``start_round``);
        ``options``: other ``DistillSpec`` fields (``ce_weight``, ``temperature``)."""
        budget = round_budget(self.params["distill"], server_round)
        return DistillSpec(loss=loss, when=when, **budget, **options)

    def target_health(
        self, indices: np.ndarray, values: np.ndarray, space: str
    ) -> dict[str, float]:
        """Accuracy of fused targets ``values [N, C]`` (or ``[K, N, C]``, one per client)
        against the held-back public labels, and their mean entropy (as probabilities)."""
        probs = np.asarray(values, np.float64)
        if space == "logits":
            probs = softmax(probs, axis=-1)
        out = {"target_entropy": float(sharpen_entropy(probs).mean())}
        labels = None if self.public_y is None else self.public_y[indices]
        if labels is not None and (labels >= 0).any():  # canaries have no label (-1)
            known = labels >= 0
            out["target_acc"] = float((probs.argmax(axis=-1)[..., known] == labels[known]).mean())
        return out

    def setup(self) -> None:
        # the public set's labels are held back from every method: diagnostics only
        self.public_y = federated_data(data_key(self.cfg)).public_y
        self.size = min(self.subset_size(self.cfg), self.info.num_public)
        self.indices: dict[int, np.ndarray] = {}
        self.targets: PublicLogits | None = None
        self.swing = check_swing(self.cfg, self)
        self.canaries = CanaryLog.from_config(self.cfg, self.info.num_public)

    def with_swing(self, plan: Plan) -> Plan:
        """Swing (``fedkd.privacy.swing``): clients release Swing soft targets instead of
        their probabilities and distil with ``(1−α)·CE + α·T²·KL`` at the sent temperatures."""
        if self.swing is None:
            return plan
        s = self.swing
        extract = replace(
            plan.extract,
            space="logits",
            temperature=1.0,  # the logits go to Swing as they are
            swing=s.to_dict(),
            swing_seeded=self.seeded_noise,  # fedkd.privacy.noise
        )
        distill = replace(
            plan.distill,
            loss="swing_kl",
            temperature=s.t_lo,  # used where no per-sample temperatures arrive
            kd_weight=s.alpha,
            ce_weight=1.0 - s.alpha,
        )
        return plan.with_(extract=extract, distill=distill)

    def fused_temperatures(
        self, ids: list[int], uploads: dict[int, Any], weights: np.ndarray | None = None
    ) -> np.ndarray | None:
        """Per-sample temperatures for the students: the (weighted) mean of the clients'."""
        temps = [uploads[i].temperatures for i in ids]
        if any(t is None for t in temps):
            return None
        stacked = np.stack(temps).astype(np.float64)
        fused = stacked.mean(axis=0) if weights is None else weights @ stacked
        return require_finite("temperatures", fused).astype(np.float32)

    def default_distill(self, loss: str) -> DistillSpec:
        """Distil on the received targets before local training, with ``client.distill``'s settings."""
        distill = self.cfg["client"]["distill"]
        return DistillSpec(
            loss=loss,
            epochs=distill["epochs"],
            batch_size=distill["batch_size"],
            optimizer=None if distill["optimizer"] is None else dict(distill["optimizer"]),
            when="before",
        )

    def privacy_rows(self) -> int:
        return self.size

    def state_dict(self) -> dict[str, Any]:
        # the subsets need no state: indices_for draws them from (seed, round)
        return {**super().state_dict(), "targets": self.targets}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.targets = state["targets"]

    def indices_for(self, server_round: int) -> np.ndarray:
        """The round's subset of the public set: fresh, seeded, sorted."""
        if server_round not in self.indices:
            chosen = self.random.rng_for(server_round, "public").choice(
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
        if self.canaries is not None and self.recorder is not None:
            self.canaries.record(server_round, client_id, payload, self.recorder.run_dir)

    def stacked(self, uploads: dict[int, Any]) -> tuple[list[int], np.ndarray]:
        """Client ids in order and their values stacked ``[K, N, C]``."""
        ids = sorted(uploads)
        return ids, np.stack([uploads[i].values for i in ids]).astype(np.float64)


def check_swing(cfg: dict[str, Any], strategy: Any) -> SwingSpec | None:
    """The run's Swing options (``swing=adaptive``), None when off; a one-line error unless
    the strategy's clients release public-set probabilities (``strategy``: a strategy, its
    class or its ``StrategySpec``)."""
    return swing_of(cfg, SPECS[strategy.name])
