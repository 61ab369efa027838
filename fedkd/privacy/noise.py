"""Where privacy noise comes from: OS entropy, or (simulations only) the run's seed.

Every mechanism that noises a release draws from :func:`noise_rng`: the client-side mod
(Gaussian, Laplace, randomized response), central noise, sub-teachers, GNMax and
Confident-GNMax, and Swing. By default the generator is seeded from OS entropy
(``numpy.random.SeedSequence()``, 128 bits), so nobody can regenerate the noise, the
server included.

``simulation.seeded_noise=true`` draws the noise from ``(seed, round[, client], stream)``
instead, so two simulations of the same config release the same noise. **A seeded run's
epsilon is not a guarantee**: the run config, seed included, travels to every client, so
whoever knows it can regenerate the noise and subtract it (docs/leakage.md measures what
that gives an attacker). Deployments refuse it (``server.app`` and every deployed client,
:mod:`clients.floor`). Ours: numpy's PCG64 seeded from OS entropy, not a cryptographic
generator (as Opacus without ``secure_mode``).

Everything else stays reproducible whatever this switch says: batch order, client
sampling, public subsets and data splits have their own seeded streams.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SWITCH = "simulation.seeded_noise"
NOT_A_GUARANTEE = (
    "seeded noise (simulation.seeded_noise=true): anyone who knows the run config can "
    "regenerate and subtract it, so this epsilon is not a guarantee"
)


def seeded_noise(cfg: Mapping[str, Any]) -> bool:
    """The run's switch; a config without it (e.g. one a server sent) means OS entropy."""
    return (cfg.get("simulation") or {}).get("seeded_noise") is True


def noise_rng(seeded: bool, key: Sequence[int]) -> np.random.Generator:
    """A generator for privacy noise: from ``key`` when ``seeded``, else from OS entropy."""
    if seeded:
        return np.random.default_rng([int(k) for k in key])
    return np.random.default_rng()
