"""``dsfl``: DS-FL (Itahara et al., IEEE TMC 2021, arXiv 2008.06180).

Clients upload softmax probabilities on a per-round open subset; the server
averages them and applies entropy-reduction aggregation (ERA):
``Q = softmax(mean_k P_k / T_ERA)`` with ``T_ERA = 0.1`` [RECALL + 3P code];
``aggregation: sa`` is the simple-averaging ablation (``Q = mean_k P_k``). A client's
round follows the paper's order: local update on private data, prediction on the open
subset (uploaded), distillation on ``Q`` with soft-target cross-entropy. With one
exchange per round the ``Q`` a client distils on in round ``r`` is round ``r-1``'s (ours).
On averaged probabilities ``softmax(P / T)`` sharpens only for small ``T`` (for 10
classes ``T = 1`` flattens the mean); ``mean_entropy`` and ``target_entropy`` are
logged every round to show what ERA did.

``era_on: logits`` reproduces reimplementations that sharpen averaged logits
(a much sharper, almost one-hot target); the paper's choice, ``probs``, is the
default. ``server_model: true`` trains the paper's server model on the ERA targets every
round and logs its global-test accuracy (``server_model_acc``; :mod:`fedkd.server_student`).

Budgets (ours, ``docs/methods.md``): clients distil for ``distill.steps`` optimiser steps
per round with their own optimiser (Adam 1e-3), from ``distill.start_round`` on
(:mod:`fedkd.schedule`); ``hard_targets: true`` sends one-hot argmax targets instead.

``swing=adaptive`` (ours, :mod:`fedkd.privacy.swing`): clients upload Swing soft targets
and per-sample temperatures instead; the server averages both (ERA still sharpens the
mean) and students distil with ``swing_kl``. Its ε is a noise scale, not DP.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from fedkd.client.runtime import data_key, federated_data
from fedkd.fusion import era, public_mean, sharpen_entropy, softmax
from fedkd.knowledge import PublicLogits
from fedkd.plan import ExtractSpec, Plan
from fedkd.schedule import round_budget
from fedkd.server_student import ServerStudent
from server.fusion import require_finite
from server.strategies.public import PublicSetStrategy
from server.strategies.registry import STRATEGIES

log = logging.getLogger("fedkd")


def rows_summing_to_one(mean: np.ndarray) -> np.ndarray:
    """Each row divided by its sum; a row without mass (a robust reducer can return one)
    becomes uniform."""
    sums = mean.sum(axis=1, keepdims=True)
    return np.where(sums > 0, mean / np.where(sums > 0, sums, 1.0), 1.0 / mean.shape[1])


@STRATEGIES.register("dsfl")
class DSFL(PublicSetStrategy):
    name = "dsfl"

    def setup(self) -> None:
        super().setup()
        self.student: ServerStudent | None = None
        fed = federated_data(data_key(self.cfg))  # the server holds the public and test sets
        if self.params["server_model"] and (
            fed.num_classes != self.info.num_classes
            or tuple(fed.input_shape) != tuple(self.info.input_shape)
        ):  # a RunInfo made up for a unit test, not the run's data
            log.warning(
                "strategy.server_model: the run info does not match the data; no server model"
            )
        elif self.params["server_model"]:
            self.student = ServerStudent(
                self.cfg["model"], self.info.input_shape, self.info.num_classes, self.seed
            )
            self.public_x = torch.from_numpy(fed.public_x)
            self.test_x = torch.from_numpy(fed.global_test.x)
            self.test_y = torch.from_numpy(fed.global_test.y)
        sharpen_logits = self.params["aggregation"] == "era" and self.params["era_on"] == "logits"
        self.upload_space = "logits" if sharpen_logits else "probs"

    def plan(self, server_round: int) -> Plan:
        return self.with_swing(
            Plan(
                # the paper's order: local update, prediction on the open set, then
                # distillation on the fused targets (here last round's: one exchange a round)
                distill=self.budget_plan(
                    server_round,
                    self.params["distill_loss"],
                    "after",
                    ce_weight=float(self.params["ce_weight"]),
                ),
                extract=ExtractSpec(PublicLogits.kind, space=self.upload_space, at="after_train"),
            )
        )

    def fuse(
        self, server_round: int, uploads: dict[int, Any], num_train: dict[int, int]
    ) -> dict[str, float]:
        ids, values = self.stacked(uploads)
        mean = self.dp.central_or(server_round, values, lambda: public_mean(values, **self.reducer))
        if self.dp.central:
            mean = np.clip(mean, 0.0, None)  # post-processing
        if self.dp.central and self.upload_space == "probs":
            # clipping scales each upload's [rows, classes] table to norm ``clip`` (its norm
            # can reach sqrt(rows)): rows made to sum to one again undo that before ERA,
            # which would otherwise sharpen a mean scaled towards zero (post-processing)
            mean = rows_summing_to_one(mean)
        if self.params["aggregation"] == "sa":
            target = rows_summing_to_one(mean)
        else:
            target = era(mean, float(self.params["era_temperature"]))
        if self.params["hard_targets"]:  # ours: one-hot argmax targets
            target = np.eye(target.shape[1])[target.argmax(axis=1)]
        indices = self.indices_for(server_round)
        self.targets = PublicLogits(
            indices=indices,
            values=require_finite("soft labels", target).astype(np.float32),
            space="probs",
            temperatures=self.fused_temperatures(ids, uploads),
        )
        # the mean's entropy beside the target's: how much ERA sharpened
        mean_probs = mean if self.upload_space == "probs" else softmax(mean, axis=1)
        out = {
            **self.target_health(indices, target, "probs"),
            "mean_entropy": float(sharpen_entropy(mean_probs).mean()),
        }
        if self.student is not None:  # the paper's server model, on this round's targets
            # with the budget the clients use on them (next round's)
            self.student.fit(
                self.public_x[torch.from_numpy(indices)],
                target,
                loss=self.params["distill_loss"],
                budget=round_budget(self.params["distill"], server_round + 1),
                server_round=server_round,
            )
            out["server_model_acc"] = self.student.accuracy(self.test_x, self.test_y)
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.student is not None:
            state["server_model"] = self.student.state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.student is not None and "server_model" in state:
            self.student.load(state["server_model"])
