"""``feddf``: Ensemble Distillation for Model Fusion (Lin et al., NeurIPS 2020, arXiv 2006.07242).

Clients train and upload their models; per architecture group the server
initialises a student from the group's FedAvg and distils the ensemble of
*all* uploaded models (average logits) into it on the unlabelled public set,
early-stopping on a labelled server validation split; each client receives its
group's distilled model. See :mod:`fedkd.server_distill` for the loop.

From the reference [CODE: epfml/federated-learning-public-code]: FedAvg
initialisation per group, ``avg_logits`` teacher, KL with T = 1 and no T²,
Adam 1e-3 with cosine annealing, validation-based early stopping on a server
split. Ours: the step budget (``max_steps``, ``patience``, ``eval_every``) is
scaled down to the small public sets used here (the reference allows 10k steps
with 1k-2k patience), and clients report the accuracy of the model they receive
(like ``fedavg``) while the server also logs each group's model accuracy on the
global test set (``server_model_acc``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedkd.client.runtime import data_key, federated_data
from fedkd.server_distill import distill_ensemble
from fedkd.train import evaluate
from fedkd.weights import arrays_to_model, model_to_arrays
from server.strategies.fedavg import FedAvg
from server.strategies.registry import STRATEGIES


@STRATEGIES.register("feddf")
class FedDF(FedAvg):
    name = "feddf"
    bookkeeping = ("generator",)  # the distillation draws go on after a rollback

    def setup(self) -> None:
        super().setup()
        fed = federated_data(
            data_key(self.cfg)
        )  # the server holds the public set and its validation split
        self.public_x = torch.from_numpy(fed.public_x)
        self.val_x, self.val_y = (
            torch.from_numpy(fed.server_val.x),
            torch.from_numpy(fed.server_val.y),
        )
        self.test_x, self.test_y = (
            torch.from_numpy(fed.global_test.x),
            torch.from_numpy(fed.global_test.y),
        )
        self.generator = torch.Generator().manual_seed(int(self.cfg["seed"]) * 31 + 7)

    def state_dict(self) -> dict[str, Any]:
        generator = self.generator.get_state().numpy().copy()
        return {**super().state_dict(), "generator": generator}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(torch.from_numpy(np.asarray(state["generator"], np.uint8)))

    def fuse(
        self, server_round: int, uploads: dict[int, Any], num_train: dict[int, int]
    ) -> dict[str, float]:
        self.average(uploads, num_train)
        teachers = []
        for cid in sorted(uploads):
            model = self.build(self.specs[self.group_of[cid]])
            arrays_to_model(model, uploads[cid].arrays)
            teachers.append(model)
        p = self.params
        diagnostics: dict[str, float] = {}
        accs, gains, steps = [], [], []
        for group, key in enumerate(sorted(self.weights)):
            student = self.build(self.specs[key])
            arrays_to_model(student, self.weights[key])
            report = distill_ensemble(
                student,
                teachers,
                self.public_x,
                self.val_x,
                self.val_y,
                max_steps=int(p["max_steps"]),
                batch_size=int(p["batch_size"]),
                lr=float(p["lr"]),
                temperature=float(p["temperature"]),
                eval_every=int(p["eval_every"]),
                patience=int(p["patience"]),
                generator=self.generator,
            )
            self.weights[key] = model_to_arrays(student)
            acc, _ = evaluate(student, self.test_x, self.test_y, 1024)
            diagnostics[f"server_model_acc/group_{group}"] = acc
            accs.append(acc)
            gains.append(report.best_val_acc - report.initial_val_acc)
            steps.append(report.steps)
        diagnostics.update(
            server_model_acc=float(np.mean(accs)),
            distill_val_gain=float(np.mean(gains)),
            distill_steps=float(np.mean(steps)),
        )
        return diagnostics
