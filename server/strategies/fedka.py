"""``fedka``: FedKA, feature distribution matching for federated domain generalisation
(Sun, Chong, Ochiai, ACML 2022, arXiv 2203.11635; docs/algorithms.md §2, official notebook
``FedKA-Digit-Five.ipynb``).

Each client holds one labelled source domain; the unlabelled target domain is the public
set (``split.target_domain``). Per round (one exchange):

1. clients load the global weights (model + domain head), then run
   :func:`fedkd.adaptation.adapt_locally`: CE plus the domain-adversarial head through a
   gradient-reversal layer on source vs target batches, then MK-MMD between their source
   features and the *global* extractor's target features, both ramped by ``λ_p``;
2. the server averages every array (unweighted, as the code does: ``weighted: false``);
3. **federated voting**: every uploaded client model labels the target samples, the
   per-sample plurality (ties to the lowest class id; optional consensus threshold or
   PATE noise, :class:`~fedkd.privacy.label_release.LabelVoting`) is the pseudo-label, and
   the global model is fine-tuned on it with the ramped adoption rate
   (:func:`fedkd.adaptation.finetune_on_votes`);
4. the server evaluates the global model on the target domain.

Official-code quirks are options, corrected behaviour by default: ``mmd_accumulate``
(``sum`` | ``official``) and ``broadcast`` (``finetuned``: clients load the vote-fine-tuned
model, which is also the MMD reference; ``fedavg``: as in the notebook, clients load the
FedAvg weights while the fine-tuned model is only the MMD reference, sent alongside).
Ablations: ``method`` = ``source`` (source-only FedAvg) | ``dann`` | ``fedka`` | ``mmd``,
and ``voting`` on/off.

Metrics (server, per round): ``global_model_target_acc`` (after voting; its last round
is in ``summary.json``: no round is picked on the target's labels), ``fedavg_target_acc`` (before voting), ``client_target_acc``
(mean over the uploaded client models), ``group_effect`` = global model's target
accuracy minus that mean (negative transfer when < 0; the paper's exact definition was
not retrieved, this is ours), ``finetune_weight_shift`` (how far voting moved the
global weights) and the voting diagnostics of :mod:`server.strategies.vote`.
**Privacy**: the GNMax epsilon of noisy voting (``summary.json["privacy"]["gnmax"]``) covers
the released labels only. The clients' weights are not protected: they reach the server
raw and their average is broadcast un-noised (``summary.json["privacy"]["not_protected"]``).

Clients report their own models' ``local_test_acc`` (source) and ``global_test_acc``
(target). Evaluation is transductive, on the target samples used for adaptation, as in
the paper (pitfall 5).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedkd.adaptation import (
    ADVERSARIAL,
    MATCHING,
    finetune_on_votes,
    join_arrays,
    split_arrays,
)
from fedkd.client.runtime import data_key, federated_data
from fedkd.domain import DomainHead
from fedkd.fusion import vote_counts
from fedkd.knowledge import ModelWeights
from fedkd.plan import AdaptSpec, ExtractSpec, Plan
from fedkd.privacy.accounting import Release
from fedkd.privacy.label_release import LabelVoting
from fedkd.strategy_options import FEDKA_BROADCASTS
from fedkd.train import evaluate, predict
from fedkd.weights import arrays_to_model, model_to_arrays
from server.strategies.fedavg import FedAvg
from server.strategies.registry import STRATEGIES
from server.strategies.vote import voting_diagnostics

BROADCASTS = FEDKA_BROADCASTS


@STRATEGIES.register("fedka")
class FedKA(FedAvg):
    name = "fedka"
    final_evaluation = False  # the server evaluates the global model itself each round
    bookkeeping = ("gnmax",)  # the GNMax query counts (the releases are the run ledger's)
    streams = {"vote_noise": 3}

    def setup(self) -> None:
        super().setup()
        p = self.params
        self.method = p["method"]
        self.voting = (
            LabelVoting.from_config(p["voting"], ledger=self.ledger)
            if p["voting_enabled"]
            else None
        )
        (self.key,) = self.weights  # homogeneous: one architecture group
        self.spec = self.specs[self.key]
        if self.method in ADVERSARIAL:
            torch.manual_seed(self.seed * 7919 + 104_729)
            head = DomainHead(self.info.feature_dim, int(p["domain_hidden"]))
            self.weights[self.key] = join_arrays(self.weights[self.key], model_to_arrays(head))
        self.reference: dict[str, np.ndarray] | None = None  # broadcast=fedavg: MMD reference
        fed = federated_data(data_key(self.cfg))
        self.target_x = torch.from_numpy(fed.public_x)
        self.target_y = fed.public_y  # held back: voting accuracy only
        self.test_x = torch.from_numpy(fed.global_test.x)
        self.test_y = torch.from_numpy(fed.global_test.y)

    # summary.json["privacy"]["not_protected"]: what no epsilon here covers
    not_protected = (
        "fedka uploads and broadcasts model weights: the clients' raw weights reach the "
        "server and their FedAvg goes to every client un-noised; the GNMax epsilon covers "
        "the released labels only"
    )

    def vote_round_bound(self) -> list[Release]:
        return [] if self.voting is None else self.voting.round_bound(len(self.target_x))

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "reference": self.reference}
        if self.voting is not None:
            state["gnmax"] = self.voting.recorder.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.reference = state["reference"]
        if self.voting is not None:
            self.voting.recorder.load_state_dict(state["gnmax"])

    def plan(self, server_round: int) -> Plan:
        p = self.params
        return Plan(
            load_weights=True,
            adapt=AdaptSpec(
                method=self.method,
                batches=p["batches"],
                batch_size=p["batch_size"],
                optimizer=dict(p["client_optimizer"]),
                gamma=p["gamma"],
                mmd_every=p["mmd_every"],
                mmd_accumulate=p["mmd_accumulate"],
                kernel_mul=p["kernel_mul"],
                kernel_num=p["kernel_num"],
                domain_hidden=p["domain_hidden"],
                round_index=server_round - 1,
                num_rounds=int(self.cfg["num_rounds"]),
            ),
            extract=ExtractSpec(ModelWeights.kind),
        )

    def payload_for(self, server_round: int, client_id: int) -> ModelWeights:
        model, head, _ = split_arrays(self.weights[self.key])
        return ModelWeights(join_arrays(model, head, self.reference))

    def _model(self, arrays: dict[str, np.ndarray]) -> torch.nn.Module:
        model = self.build(self.spec)
        arrays_to_model(model, split_arrays(arrays)[0])
        return model

    def fuse(
        self, server_round: int, uploads: dict[int, Any], num_train: dict[int, int]
    ) -> dict[str, float]:
        self.average(uploads, num_train)
        fedavg_arrays = self.weights[self.key]
        global_model = self._model(fedavg_arrays)
        batch = int(self.cfg["client"]["eval_batch_size"])
        fedavg_acc, _ = evaluate(global_model, self.test_x, self.test_y, batch)
        client_accs = []
        votes = []
        for cid in sorted(uploads):
            client = self._model(uploads[cid].arrays)
            client_accs.append(evaluate(client, self.test_x, self.test_y, batch)[0])
            if self.voting is not None:
                votes.append(predict(client, self.target_x, batch)[1].argmax(1).numpy())
        out: dict[str, float] = {"fedavg_target_acc": fedavg_acc}
        if self.voting is not None:
            counts = vote_counts(np.stack(votes), self.info.num_classes)
            release = self.voting.release(
                counts, len(votes), self.random.noise_rng_for(server_round, "vote_noise")
            )
            p = self.params
            out["vote_finetune_loss"] = finetune_on_votes(
                global_model,
                self.target_x,
                torch.from_numpy(release.labels),
                batches=int(p["vote_batches"]),
                batch_size=int(p["batch_size"]),
                optimizer=p["server_optimizer"],
                round_index=server_round - 1,
                num_rounds=int(self.cfg["num_rounds"]),
                generator=torch.Generator().manual_seed(self.seed * 1_000_003 + server_round),
                gamma=float(p["gamma"]),
                ramp_on=p["vote_ramp_on"],
            )
            out.update(voting_diagnostics(release, self.target_y, self.voting))
            out["finetune_weight_shift"] = self._keep_finetuned(global_model, fedavg_arrays)
        global_acc, _ = evaluate(global_model, self.test_x, self.test_y, batch)
        client_mean = float(np.mean(client_accs))
        out.update(
            global_model_target_acc=global_acc,
            client_target_acc=client_mean,
            group_effect=global_acc - client_mean,
        )
        return out

    def _keep_finetuned(
        self, model: torch.nn.Module, fedavg_arrays: dict[str, np.ndarray]
    ) -> float:
        """``finetuned``: clients load the fine-tuned model; ``fedavg``: it is only the MMD
        reference. Returns how far fine-tuning moved the weights, ``‖Δθ‖ / ‖θ_FedAvg‖``."""
        tuned = model_to_arrays(model)
        averaged, head, _ = split_arrays(fedavg_arrays)
        if self.params["broadcast"] == "finetuned":
            self.weights[self.key] = join_arrays(tuned, head)
        elif self.method in MATCHING:
            self.reference = tuned
        floats = [k for k, v in averaged.items() if np.issubdtype(v.dtype, np.floating)]
        shift = sum(float(np.sum((tuned[k] - averaged[k]) ** 2)) for k in floats)
        norm = sum(float(np.sum(averaged[k] ** 2)) for k in floats)
        return float(np.sqrt(shift / norm)) if norm > 0 else 0.0
