"""``dsfl``: DS-FL (Itahara et al., IEEE TMC 2021, arXiv 2008.06180).

Clients upload softmax probabilities on a per-round open subset; the server
averages them and applies entropy-reduction aggregation (ERA):
``Q = softmax(mean_k P_k / T_ERA)`` with ``T_ERA = 0.1`` [RECALL + 3P code];
``aggregation: sa`` is the simple-averaging ablation (``Q = mean_k P_k``). Clients
distil on ``Q`` with soft-target cross-entropy, then train on private data.

``era_on: logits`` reproduces reimplementations that sharpen averaged logits
(a much sharper, almost one-hot target); the paper's choice, ``probs``, is the
default. The server-side model of the paper is not trained here (ours).

``swing=adaptive`` (ours, :mod:`fedkd.privacy.swing`): clients upload Swing soft targets
and per-sample temperatures instead; the server averages both (ERA still sharpens the
mean) and students distil with ``swing_kl``. Its ε is a noise scale, not DP.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedkd.errors import ConfigError
from fedkd.fusion import era, public_mean, sharpen_entropy
from fedkd.knowledge import PublicLogits
from fedkd.losses import LOSSES, check_space
from server.strategies.public import PublicSetStrategy
from server.strategies.registry import STRATEGIES


@STRATEGIES.register("dsfl")
class DSFL(PublicSetStrategy):
    name = "dsfl"
    upload_space = "probs"  # the paper's choice; era_on=logits switches to logits in setup
    supports_central = True
    subset_key = "open_size"
    supports_swing = True

    @classmethod
    def check_config(cls, cfg: dict[str, Any]) -> None:
        p = cfg["strategy"]
        cls.subset_size(cfg)
        if p["aggregation"] not in ("era", "sa"):
            raise ConfigError(
                f"strategy.aggregation must be 'era' or 'sa' (got '{p['aggregation']}')"
            )
        if p["era_on"] not in ("probs", "logits"):
            raise ConfigError(f"strategy.era_on must be 'probs' or 'logits' (got '{p['era_on']}')")
        if p["aggregation"] == "era" and not 0 < float(p["era_temperature"]) < 1:
            raise ConfigError(
                f"strategy.era_temperature must be in (0, 1): ERA sharpens (got {p['era_temperature']})"
            )
        if p["era_on"] == "logits" and (cfg.get("privacy") or {}).get("name") == "subteachers":
            raise ConfigError(
                "privacy=subteachers releases probabilities: use strategy.era_on=probs"
            )
        LOSSES.get(p["distill_loss"])
        check_space(p["distill_loss"], "probs")
        cls.check_reducer(p)
        if cls.swing_of(cfg) is not None and p["era_on"] != "probs":
            raise ConfigError("swing releases probabilities: it needs strategy.era_on=probs")

    def setup(self) -> None:
        super().setup()
        sharpen_logits = self.params["aggregation"] == "era" and self.params["era_on"] == "logits"
        self.upload_space = "logits" if sharpen_logits else "probs"

    def plan(self, server_round: int) -> dict[str, Any]:
        return self.with_swing(
            {
                "distill": self.default_distill(self.params["distill_loss"]),
                "extract": {"kind": "public", "space": self.upload_space},
            }
        )

    def fuse(
        self, server_round: int, uploads: dict[int, Any], num_train: dict[int, int]
    ) -> dict[str, float]:
        ids, values = self.stacked(uploads)
        mean = (
            np.clip(self.central_mean(server_round, values), 0.0, None)  # post-processing
            if self.central
            else public_mean(values, **self.reducer)
        )
        if self.params["aggregation"] == "sa":
            # a robust reducer can return an all-zero row; such a sample gets a uniform target
            sums = mean.sum(axis=1, keepdims=True)
            target = np.where(sums > 0, mean / np.where(sums > 0, sums, 1.0), 1.0 / mean.shape[1])
        else:
            target = era(mean, float(self.params["era_temperature"]))
        self.targets = PublicLogits(
            indices=self.indices_for(server_round),
            values=self.require_finite("soft labels", target).astype(np.float32),
            space="probs",
            temperatures=self.fused_temperatures(ids, uploads),
        )
        return {"target_entropy": float(sharpen_entropy(target).mean())}
