"""Privacy ledger for vote releases: data-independent PATE costs composed by ``dp-accounting``.

:class:`RdpLedger` wraps ``dp_accounting.rdp.RdpAccountant`` (Google ``dp-accounting``,
docs/algorithms.md §5.4). Each release is recorded as a ``dp_accounting.GaussianDpEvent`` whose
noise multiplier is the noise std divided by the L2 sensitivity of the noised quantity;
composition and the RDP → (ε, δ) conversion (the tighter form of §5.3) are the library's.
Nothing here is a hand-written accountant.

Sensitivities (the unit of privacy is one **teacher**: a client, in fedkd's alignment
voting, so ε is client-level; §4.7 "federated use"):

- **GNMax answer** (Papernot et al. 2018, arXiv 1802.08908): the vote histogram has L2
  sensitivity ``√2``: a teacher that switches its vote moves one count down and one up by 1.
  Noise multiplier ``σ/√2``, RDP ``α/σ²`` per answer, which is ``rdp_data_independent_gaussian``
  in ``tensorflow/privacy research/pate_2018/core.py``. We use ``√2`` (replace-one) rather
  than 1 (add/remove: a teacher starts or stops voting) because it bounds both, matches
  PATE's data-independent bound, and is the choice that reproduces §5.3's worked example
  (σ = 40, 286 queries → ε ≈ 2.64 at δ = 1e-5; sensitivity 1 would give ≈ 1.80). With
  top-k votes (``votes_per_teacher = k``) a teacher can move ``k`` counts down and ``k``
  up, so the sensitivity is ``√(2k)`` (our extension).
- **Confident-GNMax threshold check**: ``max_j n_j`` moves by at most 1 when one teacher
  changes (each count moves by at most 1, also with top-k votes since a teacher gives a
  class at most one vote), so the sensitivity is 1, the noise multiplier is ``σ₁`` and the
  RDP is ``α/(2σ₁²)`` per query: PATE's ``compute_rdp_data_independent_threshold``, which
  writes it as the GNMax bound at ``√2·σ₁``. Every query pays it; answered queries also
  pay a GNMax answer at ``σ₂``.

Only the data-independent bounds are implemented. PATE's data-dependent bounds are tighter
but their ε is itself data-dependent and needs smooth-sensitivity sanitisation before it
may be released (§4.7). ``σ = 0`` is recorded as a non-private release (ε = ∞).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from fedkd.errors import ConfigError


def dp_lib():
    """``dp_accounting``, imported on first use: it pulls in scipy.signal (0.6 s), which
    every ClientApp process would otherwise pay at start-up even without privacy."""
    import dp_accounting
    import dp_accounting.rdp  # noqa: F401

    return dp_accounting


__all__ = ["RdpLedger"]


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
    return value


def _sigma(name: str, sigma: float) -> float:
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma < 0:
        raise ConfigError(f"{name} must be finite and >= 0, got {sigma}")
    return sigma


class RdpLedger:
    """Composes per-query GNMax / Confident-GNMax costs and reports ε(δ).

    Example: ``RdpLedger().gnmax(sigma=40, count=286).epsilon(1e-5)`` ≈ 2.64. Recording
    methods return ``self`` so they chain. ``num_queries`` / ``num_answered`` count what
    was recorded through :meth:`gnmax`, :meth:`threshold_check` and
    :meth:`confident_gnmax` (for reports; the ε comes from the accountant alone).
    """

    def __init__(self, *, votes_per_teacher: int = 1, orders: Sequence[float] | None = None):
        if isinstance(votes_per_teacher, bool) or not isinstance(votes_per_teacher, int):
            raise ConfigError(f"votes_per_teacher must be an int, got {votes_per_teacher!r}")
        if votes_per_teacher < 1:
            raise ConfigError(f"votes_per_teacher must be >= 1, got {votes_per_teacher}")
        self.votes_per_teacher = votes_per_teacher
        self.orders = None if orders is None else [float(o) for o in orders]
        self.accountant = dp_lib().rdp.RdpAccountant(orders)
        self.num_queries = 0
        self.num_answered = 0
        self.events: list[
            list[float]
        ] = []  # [noise multiplier (0: non-private), count] as composed
        self.sink: Callable[[dict], None] | None = None  # called with every composition

    @property
    def gnmax_sensitivity(self) -> float:
        """L2 sensitivity of the vote histogram to one teacher: ``√(2k)``."""
        return math.sqrt(2.0 * self.votes_per_teacher)

    def gaussian(self, noise_multiplier: float, count: int = 1) -> RdpLedger:
        """Record ``count`` Gaussian releases with noise std / L2 sensitivity = ``noise_multiplier``."""
        z = _sigma("noise_multiplier", noise_multiplier)
        count = _count("count", count)
        if count:
            if self.sink is not None:  # persisted before it counts (an append-only log)
                self.sink({"noise_multiplier": z, "count": count})
            event = dp_lib().GaussianDpEvent(z) if z > 0 else dp_lib().NonPrivateDpEvent()
            self.accountant.compose(event, count)
            self.events.append([z, count])
        return self

    def state_dict(self) -> dict:
        """What was composed so far (for checkpoints); ``load_state_dict`` replays it."""
        return {
            "votes_per_teacher": self.votes_per_teacher,
            "orders": self.orders,
            "num_queries": self.num_queries,
            "num_answered": self.num_answered,
            "events": [list(e) for e in self.events],
        }

    def load_state_dict(self, state: dict) -> RdpLedger:
        """Rebuild the accountant by composing the recorded events again (same ε)."""
        fresh = RdpLedger(votes_per_teacher=int(state["votes_per_teacher"]), orders=state["orders"])
        for z, count in state["events"]:
            fresh.gaussian(float(z), int(count))
        fresh.num_queries, fresh.num_answered = (
            int(state["num_queries"]),
            int(state["num_answered"]),
        )
        sink = self.sink
        self.__dict__.update(fresh.__dict__)
        self.sink = sink  # the replay is not a new release
        return self

    def gnmax(self, sigma: float, count: int = 1) -> RdpLedger:
        """Record ``count`` GNMax answers with noise std ``sigma`` (multiplier ``σ/√(2k)``)."""
        sigma = _sigma("gnmax sigma", sigma)
        count = _count("count", count)
        self.num_queries += count
        self.num_answered += count
        return self.gaussian(sigma / self.gnmax_sensitivity, count)

    def threshold_check(self, sigma1: float, count: int = 1) -> RdpLedger:
        """Record ``count`` Confident-GNMax threshold checks (sensitivity 1, multiplier ``σ₁``)."""
        sigma1 = _sigma("threshold sigma1", sigma1)
        return self.gaussian(sigma1, _count("count", count))

    def confident_gnmax(
        self, sigma1: float, sigma2: float, num_queries: int, num_answered: int
    ) -> RdpLedger:
        """Record a Confident-GNMax batch: every query's check, every answer's GNMax."""
        num_queries = _count("num_queries", num_queries)
        num_answered = _count("num_answered", num_answered)
        if num_answered > num_queries:
            raise ConfigError(f"num_answered {num_answered} > num_queries {num_queries}")
        self.threshold_check(sigma1, num_queries)
        self.gnmax(sigma2, num_answered)
        self.num_queries += num_queries - num_answered  # gnmax() counted the answered ones
        return self

    def epsilon(self, delta: float) -> float:
        """ε at ``delta`` for everything recorded so far (0 if nothing was)."""
        return self.epsilon_and_order(delta)[0]

    def epsilon_and_order(self, delta: float) -> tuple[float, float]:
        """``(ε, optimal RDP order)`` at ``delta``."""
        delta = float(delta)
        if not 0.0 < delta < 1.0:
            raise ConfigError(f"delta must be in (0, 1), got {delta}")
        eps, order = self.accountant.get_epsilon_and_optimal_order(delta)
        return float(eps), float(order)
