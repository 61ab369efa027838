"""``fedavg``: FedAvg (McMahan et al. 2017, arXiv 1602.05629), the weight-sharing reference.

Clients load the global weights, train locally, upload their weights; the server
averages them (weighted by training samples by default). Plain FedAvg needs
identical models on every client and refuses heterogeneous model families;
the averaging itself works per architecture group, which FedDF builds on.

Our choices: each round's reply evaluates the *received* global model (so the
numbers describe the FedAvg model, not a locally fine-tuned one), reported at
the round that produced it; one evaluate exchange after the last round
measures the final global model. Round 0 is the shared initial model.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from fedkd.errors import PayloadError
from fedkd.fusion import REDUCERS
from fedkd.knowledge import ModelWeights
from fedkd.models import build_model, spec_for_client
from fedkd.plan import ExtractSpec, Plan
from fedkd.weights import model_to_arrays
from server.strategies.base import FedkdStrategy
from server.strategies.registry import STRATEGIES


@STRATEGIES.register("fedavg")
class FedAvg(FedkdStrategy):
    name = "fedavg"
    final_evaluation = True

    def setup(self) -> None:
        """One weight set per architecture group, initialised from the group's first client's seed."""
        self.specs: dict[str, dict[str, Any]] = {}
        self.group_of: dict[int, str] = {}
        for cid in range(self.info.num_clients):
            spec = spec_for_client(self.cfg["model"], cid)
            key = json.dumps(spec, sort_keys=True)
            self.group_of[cid] = key
            self.specs.setdefault(key, spec)
        self.weights: dict[str, dict[str, np.ndarray]] = {}
        for key, spec in self.specs.items():
            first = min(c for c, k in self.group_of.items() if k == key)
            self.weights[key] = model_to_arrays(self.build(spec, seed_offset=first))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "weights": {k: dict(v) for k, v in self.weights.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if set(state["weights"]) != set(self.weights):
            raise ValueError("the checkpoint's architecture groups differ from this run's")
        self.weights = {k: dict(v) for k, v in state["weights"].items()}

    def build(self, spec: dict[str, Any], seed_offset: int | None = None) -> torch.nn.Module:
        if seed_offset is not None:
            torch.manual_seed(int(self.cfg["seed"]) * 7919 + seed_offset)
        return build_model(
            spec, self.info.input_shape, self.info.num_classes, self.info.feature_dim
        )

    def plan(self, server_round: int) -> Plan:
        return Plan(load_weights=True, eval_received=True, extract=ExtractSpec(ModelWeights.kind))

    def payload_for(self, server_round: int, client_id: int) -> ModelWeights:
        return ModelWeights(self.weights[self.group_of[client_id]])

    def check_upload(self, server_round: int, client_id: int, payload: ModelWeights) -> None:
        expected = self.weights[self.group_of[client_id]]
        if set(payload.arrays) != set(expected):
            raise PayloadError(
                "weights do not match the client's architecture (different keys)", "shape"
            )
        for key, ref in expected.items():
            if payload.arrays[key].shape != ref.shape:
                raise PayloadError(
                    f"weight '{key}' has shape {payload.arrays[key].shape}, expected {ref.shape}",
                    "shape",
                )
            if payload.arrays[key].dtype != ref.dtype:
                raise PayloadError(
                    f"weight '{key}' has dtype {payload.arrays[key].dtype}, expected {ref.dtype}",
                    "dtype",
                )

    def average(self, uploads: dict[int, Any], num_train: dict[int, int]) -> None:
        """(Weighted) average of each architecture group's uploads."""
        mean = REDUCERS.get("mean")
        for key in self.weights:
            ids = sorted(cid for cid in uploads if self.group_of[cid] == key)
            if not ids:
                continue
            weights = (
                np.array([num_train[i] for i in ids], np.float64)
                if self.params["weighted"]
                else None
            )
            fused = {}
            for name, ref in self.weights[key].items():
                value = mean(
                    np.stack([uploads[i].arrays[name] for i in ids]).astype(np.float64), weights
                )
                integer = np.issubdtype(ref.dtype, np.integer)
                fused[name] = (np.rint(value) if integer else value).astype(ref.dtype)
            self.weights[key] = fused

    def fuse(
        self, server_round: int, uploads: dict[int, Any], num_train: dict[int, int]
    ) -> dict[str, float]:
        self.average(uploads, num_train)
        return {}
