"""``fedavg``: FedAvg (McMahan et al. 2017, arXiv 1602.05629), the weight-sharing reference.

Clients load the global weights, train locally, upload their weights; the server
averages them (weighted by training samples by default). It needs identical
models on every client and refuses heterogeneous model families.

Our choices: each round's reply evaluates the *received* global model (so the
numbers describe the FedAvg model, not a locally fine-tuned one), reported at
the round that produced it; one evaluate exchange after the last round
measures the final global model. Round 0 is the shared initial model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedkd.errors import ConfigError, PayloadError
from fedkd.fusion import REDUCERS
from fedkd.knowledge import ModelWeights
from fedkd.models import build_model, is_homogeneous, spec_for_client
from fedkd.weights import model_to_arrays
from server.strategies.base import FedkdStrategy
from server.strategies.registry import STRATEGIES


@STRATEGIES.register("fedavg")
class FedAvg(FedkdStrategy):
    name = "fedavg"
    upload_kind = "model_weights"
    final_evaluation = True

    @classmethod
    def check_config(cls, cfg: dict[str, Any]) -> None:
        if not is_homogeneous(cfg["model"], int(cfg["num_clients"])):
            raise ConfigError(
                "strategy 'fedavg' averages weights and needs identical models on every client, "
                f"but model.family has {len(cfg['model']['family'])} different specs (use model=mlp)"
            )

    def setup(self) -> None:
        torch.manual_seed(int(self.cfg["seed"]) * 7919)
        spec = spec_for_client(self.cfg["model"], 0)
        model = build_model(
            spec, self.info.input_shape, self.info.num_classes, self.info.feature_dim
        )
        self.global_weights = model_to_arrays(model)

    def plan(self, server_round: int) -> dict[str, Any]:
        return {"load_weights": True, "eval_received": True, "extract": {"kind": "weights"}}

    def payload_for(self, server_round: int, client_id: int) -> ModelWeights:
        return ModelWeights(self.global_weights)

    def check_upload(self, server_round: int, payload: ModelWeights) -> None:
        for key, ref in self.global_weights.items():
            got = payload.arrays.get(key)
            if got is None or got.shape != ref.shape:
                raise PayloadError(f"weights '{key}' missing or of the wrong shape")

    def fuse(
        self, server_round: int, uploads: dict[int, Any], num_train: dict[int, int]
    ) -> dict[str, float]:
        ids = sorted(uploads)
        weights = (
            np.array([num_train[i] for i in ids], dtype=np.float64)
            if self.params.get("weighted", True)
            else None
        )
        mean = REDUCERS.get("mean")
        fused = {}
        for key, ref in self.global_weights.items():
            stacked = np.stack([uploads[i].arrays[key] for i in ids]).astype(np.float64)
            value = mean(stacked, weights)
            fused[key] = (
                np.rint(value).astype(ref.dtype)
                if np.issubdtype(ref.dtype, np.integer)
                else value.astype(ref.dtype)
            )
        self.global_weights = fused
        return {}
