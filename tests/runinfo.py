"""A small RunInfo for strategy unit tests: digits-shaped inputs, few classes and public samples."""

from __future__ import annotations

import json

from fedkd.config import compose
from server.strategies import RunInfo


def info_for(
    *overrides: str, num_clients: int = 3, num_classes: int = 2, num_public: int = 4
) -> RunInfo:
    """The RunInfo a strategy gets for the composed config ``overrides`` (no data loaded)."""
    cfg = compose([f"num_clients={num_clients}", *overrides])
    return RunInfo(
        num_clients=num_clients,
        num_classes=num_classes,
        num_public=num_public,
        input_shape=(1, 8, 8),
        feature_dim=int(cfg["model"]["feature_dim"]),
        cfg=cfg,
        cfg_json=json.dumps(cfg),
    )
