"""A server-side model trained on the fused targets (DS-FL's server model).

DS-FL (Itahara et al., IEEE TMC 2021, arXiv 2008.06180) keeps a model on the
server that is distilled on the ERA-sharpened targets of every round and reports
its test accuracy as the method's headline metric. :class:`ServerStudent` is that
model: built like client 0's architecture (``model.family[0]``; the paper's server
and clients share one architecture), distilled on the open subset of the round with
the clients' loss and step budget (``strategy.distill``, :mod:`fedkd.schedule`),
and evaluated on the global test set. Ours: the budget and optimiser are the
clients' (the paper does not give the server's), the batch order comes from a
generator seeded by (seed, round), so the model needs no state beyond its weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedkd.losses import LOSSES
from fedkd.models import build_model, spec_for_client
from fedkd.train import distill, evaluate, make_optimizer
from fedkd.weights import arrays_to_model, model_to_arrays


class ServerStudent:
    def __init__(
        self,
        model_cfg: Mapping[str, Any],
        input_shape: tuple[int, ...],
        num_classes: int,
        seed: int,
    ) -> None:
        torch.manual_seed(int(seed) * 7919 + 104_729)  # its own initialisation, not a client's
        self.model = build_model(
            spec_for_client(model_cfg, 0), input_shape, num_classes, int(model_cfg["feature_dim"])
        )
        self.seed = int(seed)

    def fit(
        self,
        x: torch.Tensor,
        targets: np.ndarray,
        *,
        loss: str,
        budget: Mapping[str, Any],
        server_round: int,
    ) -> float:
        """Distil on ``targets [N, C]`` for ``x [N, ...]`` with ``budget`` (steps, batch, optimiser)."""
        steps = int(budget["steps"])
        if steps <= 0:
            return 0.0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + server_round * 10_007 - 1)
        return distill(
            self.model,
            x,
            torch.from_numpy(np.asarray(targets, np.float32)),
            loss_fn=LOSSES.get(loss),
            temperature=1.0,
            epochs=1,
            steps=steps,
            batch_size=int(budget["batch_size"]),
            optimizer=make_optimizer(self.model.parameters(), budget["optimizer"]),
            generator=generator,
        )

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(evaluate(self.model, x, y, 1024)[0])

    def state(self) -> dict[str, np.ndarray]:
        return model_to_arrays(self.model)

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        arrays_to_model(self.model, dict(arrays))
