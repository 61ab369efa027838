"""Releasing labels from client votes: consensus threshold, optional PATE noise, ε ledger.

The vote counting and the consensus rule are pure functions in :mod:`fedkd.fusion.vote`;
this stateful release (it accumulates the GNMax privacy cost of every query) lives with
the other privacy mechanisms.

One object serves both alignment-voting strategies (``vote``: heterogeneous clients
distil on the released labels; ``fedka``: the global model is fine-tuned on them), so
the threshold, the noise and the privacy accounting are the same code
(docs/algorithms.md §2.3 step 4, §2.5, §4.7):

- ``noise: none``: the plurality label (ties to the lowest class id) where the share of
  voters agreeing reaches ``threshold`` (FedKA: ``threshold = 0``, every sample).
- ``noise: gnmax``: GNMax, ``argmax_j (n_j + N(0, σ²))`` for every sample that got a vote;
  ``threshold`` must be 0 (a threshold on the raw counts would leak; use confident GNMax).
- ``noise: confident_gnmax``: answer only where ``max_j n_j + N(0, σ₁²) >= T``, with
  ``T = confident_threshold × number of voters``, then GNMax with ``σ₂``.

Each client is one teacher, so ε is **client-level**: every query is recorded by
:class:`fedkd.privacy.GnmaxRecorder` on the run's privacy ledger
(:class:`fedkd.privacy.Ledger`, dp-accounting) as a release every client pays, and
reported at ``delta``. With few
clients the noise must stay small for the votes to be usable, which costs a large ε
(§2.5): that is the honest number, not a bug.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkd.errors import ConfigError
from fedkd.fusion.vote import consensus, plurality
from fedkd.privacy.accounting import GnmaxRecorder, Ledger, Release
from fedkd.privacy.mechanisms import confident_gnmax, gnmax, non_negative

NOISES = ("none", "gnmax", "confident_gnmax")


@dataclass(frozen=True)
class VoteRelease:
    labels: np.ndarray  # [N] int64, -1 where not answered
    answered: np.ndarray  # [N] bool
    agreement: np.ndarray  # [N] noise-free share of voters on the plurality label (diagnostics)


class LabelVoting:
    """Turns vote histograms into released labels; records their GNMax cost on ``ledger``
    (the run's privacy ledger; a ledger of its own when None)."""

    def __init__(
        self,
        *,
        threshold: float = 0.0,
        noise: str = "none",
        sigma: float = 1.0,
        sigma1: float = 1.0,
        sigma2: float = 1.0,
        confident_threshold: float = 0.5,
        delta: float = 1e-5,
        votes_per_teacher: int = 1,
        ledger: Ledger | None = None,
    ) -> None:
        self.threshold = _fraction("voting.threshold", threshold)
        if noise not in NOISES:
            raise ConfigError(f"voting.noise must be one of {', '.join(NOISES)} (got {noise!r})")
        if noise == "gnmax" and self.threshold > 0:
            raise ConfigError(
                "voting.threshold must be 0 with noise=gnmax (a threshold on raw counts leaks); "
                "use noise=confident_gnmax"
            )
        self.noise = noise
        self.sigma, self.sigma1, self.sigma2 = (
            non_negative(f"voting.{name}", value)
            for name, value in (("sigma", sigma), ("sigma1", sigma1), ("sigma2", sigma2))
        )
        self.confident_threshold = _fraction("voting.confident_threshold", confident_threshold)
        self.delta = float(delta)
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"voting.delta must be in (0, 1) (got {delta})")
        self.recorder = GnmaxRecorder(ledger, votes_per_teacher=votes_per_teacher)

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any], votes_per_teacher: int = 1, ledger: Ledger | None = None
    ) -> LabelVoting:
        known = {
            "threshold", "noise", "sigma", "sigma1", "sigma2", "confident_threshold", "delta",
        }  # fmt: skip
        unknown = set(cfg) - known
        if unknown:
            raise ConfigError(
                f"unknown strategy.voting option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**dict(cfg), votes_per_teacher=votes_per_teacher, ledger=ledger)

    @property
    def private(self) -> bool:
        return self.noise != "none"

    def release(
        self,
        counts: np.ndarray,
        num_voters: int,
        rng: np.random.Generator,
        tiebreak: np.ndarray | None = None,
    ) -> VoteRelease:
        """Labels for the rows of ``counts [N, C]`` given by ``num_voters`` clients.

        ``tiebreak [N, C]`` (top-k votes: the first-choice counts) orders classes with
        equal counts in the noise-free release; the noisy ones break ties by their noise.
        """
        counts = np.asarray(counts)
        _, agreement = plurality(counts, num_voters)
        if self.noise == "none":
            labels, answered = consensus(counts, self.threshold, num_voters, tiebreak)
        elif self.noise == "gnmax":
            answered = counts.sum(axis=1) > 0
            labels = np.where(answered, gnmax(counts, self.sigma, rng), -1)
            self.recorder.gnmax(self.sigma, int(answered.sum()))
        else:
            labels, answered = confident_gnmax(
                counts, self.confident_threshold * num_voters, self.sigma1, self.sigma2, rng
            )
            self.recorder.confident_gnmax(
                self.sigma1, self.sigma2, len(counts), int(answered.sum())
            )
        return VoteRelease(
            labels=np.asarray(labels, np.int64),
            answered=np.asarray(answered, bool),
            agreement=agreement,
        )

    def round_bound(self, num_queries: int) -> list[Release]:
        """The releases the most one more release of ``num_queries`` samples can cost
        (every query answered): what a budget check must assume."""
        recorder = self.recorder
        if self.noise == "gnmax":
            return [recorder.gnmax_release(self.sigma, num_queries)]
        if self.noise == "confident_gnmax":
            return [
                recorder.release(self.sigma1, num_queries),
                recorder.gnmax_release(self.sigma2, num_queries),
            ]
        return []

    def epsilon(self) -> float:
        """Client-level ε at ``delta`` over every release so far; ∞ without noise."""
        return self.recorder.epsilon(self.delta) if self.private else math.inf


def _fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1] (got {value})")
    return value
