"""What a strategy is told before the run: the run's facts and the ``server`` settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunInfo:
    """What the server knows about the run before it starts."""

    num_clients: int
    num_classes: int
    num_public: int
    input_shape: tuple[int, ...]
    feature_dim: int
    cfg: dict[str, Any]
    cfg_json: str


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class ServerSettings:
    """The ``server`` config section (``configs/config.yaml``) as the strategy uses it."""

    fraction_train: float
    min_train_clients: int
    max_payload_bytes: int | None
    max_strikes: int | None
    max_starved_rounds: int | None
    round_timeout: float
    poll_interval: float

    @classmethod
    def from_config(cls, server: Mapping[str, Any]) -> ServerSettings:
        return cls(
            fraction_train=float(server["fraction_train"]),
            min_train_clients=int(server["min_train_clients"]),
            max_payload_bytes=_optional_int(server["max_payload_bytes"]),
            max_strikes=_optional_int(server["max_strikes"]),
            max_starved_rounds=_optional_int(server["max_starved_rounds"]),
            round_timeout=float(server["round_timeout"]),
            poll_interval=float(server["poll_interval"]),
        )
