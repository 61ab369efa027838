"""``knfu``: Effective Knowledge Fusion (Seyedmohammadi et al. 2024, arXiv 2403.11892).

Per round: local training -> knowledge extraction (soft labels on the transfer
set) -> effective knowledge fusion on the server, *personalised*: client ``k``
receives ``Q_k = sum_j w_kj P_j`` with ``w_k = softmax_j(-beta * d_kj)`` over the
divergences between clients' estimated probability distributions (EPDs) ->
local fine-tuning with ``T^2 * KL(Q_k || softmax(f_k(x) / T))`` (optionally plus
``ce_weight * CE`` on private data).

The paper's: the four steps, personalisation to semantic neighbours, the EPD
and beta = 10 [3P]. Ours [PROPOSED, see docs/algorithms.md §1.2]: the EPD as the mean
soft label over the transfer set, the divergence (``kl``, ``js``,
``mean_sample_kl``), the softmax weight form, the optional hard gating
(``threshold`` / ``top_m``), the loss. Also ours, for one exchange per round:
the fine-tuning in round ``r`` uses the fusion of round ``r-1``'s extraction,
and a client's evaluation follows its fine-tuning (ALMA is the mean local-test
accuracy). ``beta = 0`` gives uniform weights: vanilla federated knowledge
distillation, KnFu's baseline.

``swing=adaptive`` (ours, :mod:`fedkd.privacy.swing`): clients upload Swing soft targets
and temperatures; each client's temperatures are fused with its own KnFu weights. Its ε
is a noise scale, not DP.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedkd.fusion import divergence_matrix, fusion_weights, personalised_fusion
from fedkd.knowledge import PublicLogits
from fedkd.plan import ExtractSpec, Plan
from server.fusion import require_finite
from server.strategies.public import PublicSetStrategy
from server.strategies.registry import STRATEGIES


@STRATEGIES.register("knfu")
class KnFu(PublicSetStrategy):
    name = "knfu"

    @classmethod
    def subset_size(cls, cfg: dict[str, Any]) -> int:
        return 1  # the transfer set is always the whole public set (see indices_for)

    def indices_for(self, server_round: int) -> np.ndarray:
        return np.arange(self.info.num_public, dtype=np.int64)

    def privacy_rows(self) -> int:
        return self.info.num_public  # every round releases the whole public set

    def setup(self) -> None:
        super().setup()
        self.personal: dict[int, PublicLogits] = {}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "personal": dict(self.personal)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.personal = {int(c): p for c, p in state["personal"].items()}

    def plan(self, server_round: int) -> Plan:
        p, temperature = self.params, float(self.params["temperature"])
        return self.with_swing(
            Plan(
                extract=ExtractSpec(
                    PublicLogits.kind, space="probs", temperature=temperature, at="after_train"
                ),
                distill=self.budget_plan(
                    server_round,
                    "kl_probs",
                    when="after",
                    temperature=temperature,
                    ce_weight=p["ce_weight"],
                ),
            )
        )

    def payload_for(self, server_round: int, client_id: int) -> PublicLogits | None:
        # a client without last round's upload has no EPD to personalise for: it gets nothing
        return self.personal.get(client_id)

    def fuse(
        self, server_round: int, uploads: dict[int, Any], num_train: dict[int, int]
    ) -> dict[str, float]:
        ids, probs = self.stacked(uploads)
        p = self.params
        divergence = divergence_matrix(probs, p["divergence"])
        weights = fusion_weights(
            divergence, float(p["beta"]), p["gating"], p["threshold"], p["top_m"]
        )
        fused = require_finite("soft labels", personalised_fusion(probs, weights))
        indices = self.indices_for(server_round)
        temps = self.fused_temperatures(ids, uploads, weights)  # Swing only: [K, N] or None
        self.personal = {
            cid: PublicLogits(
                indices=indices,
                values=fused[row].astype(np.float32),
                space="probs",
                temperatures=None if temps is None else temps[row],
            )
            for row, cid in enumerate(ids)
        }
        if self.recorder is not None:
            for row, cid in enumerate(ids):
                row_weights = {
                    str(other): round(float(weights[row, col]), 6) for col, other in enumerate(ids)
                }
                self.recorder.client_extra(server_round, cid, {"fusion_weights": row_weights})
            self.recorder.fusion_weights(server_round, weights)
        effective = 1.0 / (weights**2).sum(axis=1)
        return {
            **self.target_health(indices, fused, "probs"),
            "self_weight": float(np.diag(weights).mean()),
            "effective_neighbours": float(effective.mean()),
        }
