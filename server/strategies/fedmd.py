"""``fedmd``: FedMD (Li & Wang 2019, arXiv 1910.03581).

Each round draws a fresh alignment subset of the public set; clients send
pre-softmax logits on it; the server's consensus is their unweighted mean; each
client *digests* it (L1 regression of its logits with Adam 1e-3, as the official code
[CODE: diogenes0319/FedMD_clean], which digests 1 epoch at batch 256; here the digest
budget is ``distill.steps`` optimiser steps) and then *revisits* its private data.
Ours: digest happens at the start of the next round (so a round is one exchange), the
transfer-learning phase on a labelled public set is not run (the public set is
unlabelled here), and robust reducers are an option.

Phases: ``pretrain_epochs`` (> 0) gives round 1 that many private epochs, the
paper's training to convergence before collaboration; ``distill.start_round``
keeps the first rounds free of digests (:mod:`fedkd.schedule`); each later round
digests for ``distill.steps`` Adam steps, then revisits (``client.epochs``).
``ce_weight`` (ours) adds CE on a private batch to every digest step.
"""

from __future__ import annotations

from typing import Any

from fedkd.fusion import public_mean
from fedkd.knowledge import PublicLogits
from fedkd.plan import ExtractSpec, Plan
from server.fusion import require_finite
from server.strategies.public import PublicSetStrategy
from server.strategies.registry import STRATEGIES


@STRATEGIES.register("fedmd")
class FedMD(PublicSetStrategy):
    name = "fedmd"

    def plan(self, server_round: int) -> Plan:
        pretrain = int(self.params["pretrain_epochs"])
        return Plan(
            # FedMD's phase "train on private data to convergence before collaboration"
            train_epochs=pretrain if server_round == 1 and pretrain > 0 else None,
            distill=self.budget_plan(
                server_round, self.params["digest_loss"], ce_weight=float(self.params["ce_weight"])
            ),
            extract=ExtractSpec(PublicLogits.kind, space="logits"),
        )

    def fuse(
        self, server_round: int, uploads: dict[int, Any], num_train: dict[int, int]
    ) -> dict[str, float]:
        _, values = self.stacked(uploads)
        consensus = self.dp.central_or(
            server_round, values, lambda: public_mean(values, **self.reducer)
        )
        indices = self.indices_for(server_round)
        self.targets = PublicLogits(
            indices=indices,
            values=require_finite("consensus", consensus).astype("float32"),
            space="logits",
        )
        return {
            **self.target_health(indices, consensus, "logits"),
            "consensus_spread": float(values.std(axis=0).mean()),
        }
