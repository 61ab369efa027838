"""What the attacker sees: the canary client's uploads on the canaries, saved per round.

With ``split.canaries.count = m > 0`` (``fedkd/data/canaries.py``) the last ``2m``
public samples are canaries (the first ``m`` in client ``split.canaries.client``'s
training data). The server, which is the attacker in ``simulations/leakage.py``'s
threat model (honest-but-curious: it sees every upload as it arrives, i.e. after the
client-side privacy mod), writes that client's released rows on them to
``canary_uploads.npz`` in the run directory: ``rounds [R]``, ``values [R, 2m, C]``
(NaN where a round's subset missed a canary), ``temperatures [R, 2m]`` (NaN when none
were released), ``labels [2m]``, ``members [2m]`` and ``space``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedkd.client.runtime import data_key, federated_data
from fedkd.data.canaries import canary_options


class CanaryLog:
    def __init__(self, client: int, public_index: np.ndarray, labels: np.ndarray):
        self.client, self.public_index, self.labels = client, public_index, labels
        self.rounds: list[int] = []
        self.values: list[np.ndarray] = []
        self.temperatures: list[np.ndarray] = []
        self.space = ""

    @classmethod
    def from_config(cls, cfg: dict[str, Any], num_public: int) -> CanaryLog | None:
        count, client, _ = canary_options(cfg["split"])
        if count == 0:
            return None
        public_index = np.arange(num_public - 2 * count, num_public, dtype=np.int64)
        labels = federated_data(data_key(cfg)).public_y[public_index]
        return cls(client, public_index, labels)

    def record(self, server_round: int, client_id: int, payload: Any, run_dir: str | Path) -> None:
        if client_id != self.client:
            return
        pos = {int(i): r for r, i in enumerate(payload.indices)}
        rows = [pos.get(int(i), -1) for i in self.public_index]
        have = np.array([r >= 0 for r in rows])
        values = np.full((len(rows), payload.values.shape[1]), np.nan)
        values[have] = payload.values[[r for r in rows if r >= 0]]
        temps = np.full(len(rows), np.nan)
        if payload.temperatures is not None:
            temps[have] = payload.temperatures[[r for r in rows if r >= 0]]
        self.rounds.append(server_round)
        self.values.append(values)
        self.temperatures.append(temps)
        self.space = payload.space
        m = len(self.public_index) // 2
        np.savez(
            Path(run_dir) / "canary_uploads.npz",
            rounds=np.array(self.rounds),
            values=np.stack(self.values),
            temperatures=np.stack(self.temperatures),
            labels=self.labels,
            members=np.arange(2 * m) < m,
            space=np.array(self.space),
        )
