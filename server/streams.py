"""The strategy's seeded random streams and the clients each round samples.

Every random draw of the server comes from its own stream, one per (round, purpose):
``np.random.default_rng([seed, round, number])`` with the purpose's number from the
strategy class's ``STREAMS`` (``server/traits.py``). Sampling more or fewer clients
therefore never changes which public samples a round uses, and the same seed samples
the same clients. Privacy noise (e.g. GNMax) comes from OS entropy unless
``simulation.seeded_noise`` (``fedkd/privacy/noise.py``; docs/privacy.md).
"""

from __future__ import annotations

import numpy as np

from fedkd.privacy.noise import noise_rng
from fedkd.sampling import sample_clients


class Streams:
    """The run's random streams: ``rng_for(round, purpose)``, its noise twin, sampling."""

    def __init__(self, seed: int, numbers: dict[str, int], seeded_noise: bool) -> None:
        self.seed = seed
        self.numbers = dict(numbers)  # purpose -> stream number (the class's STREAMS)
        self.seeded_noise = seeded_noise

    def rng_for(self, server_round: int, stream: str) -> np.random.Generator:
        """An independent seeded stream per (round, purpose)."""
        return np.random.default_rng([self.seed, server_round, self.numbers[stream]])

    def noise_rng_for(self, server_round: int, stream: str) -> np.random.Generator:
        """Privacy noise: OS entropy unless ``simulation.seeded_noise``, then the stream
        ``rng_for`` would give."""
        return noise_rng(self.seeded_noise, [self.seed, server_round, self.numbers[stream]])

    def sample(
        self, eligible: list[int], server_round: int, fraction: float, minimum: int
    ) -> list[int]:
        """``fraction`` of the ``eligible`` client ids (at least ``minimum``), drawn from
        the round's ``sample`` stream."""
        rng = self.rng_for(server_round, "sample")
        return sample_clients(eligible, fraction, minimum, rng)
