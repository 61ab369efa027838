"""The privacy ledger: every release as a ``dp-accounting`` event against the units it costs.

Mechanisms (what is released, with which noise: :mod:`fedkd.privacy.mechanisms`,
:mod:`fedkd.privacy.release`, :mod:`fedkd.privacy.subteachers`,
:mod:`fedkd.privacy.label_release`) are kept apart from the accounting, as in Opacus,
and every mechanism is accounted in one place, :class:`Ledger` (docs/algorithms.md §5.3,
§5.4; docs/privacy.md "The ledger"):

- a :class:`Release` is a ``dp_accounting.DpEvent`` (``count`` times), the name of the
  mechanism that released it, and the **accounting units** it costs: client ids (the
  local mod, central noise, sub-teachers: each client that released), or :data:`EVERY`
  unit at once (a GNMax query, where every client is a teacher);
- ``epsilon(unit, delta)`` composes, in one ``dp_accounting.rdp.RdpAccountant``, the
  unit's own releases (each distinct event once, with its total count) and then the
  releases shared by every unit, in the order recorded; ``mechanisms`` restricts it to
  some mechanisms, ``extra`` asks "ε if these releases came next" (a budget check);
- ``state_dict`` / ``load_state_dict`` replay the releases (same ε), and ``sink`` receives
  every release before it counts (an append-only log, ``server/ledger_log.py``).

Composition and the RDP → (ε, δ) conversion (the tighter form of §5.3) are the
library's; nothing here is a hand-written accountant.

:class:`GnmaxRecorder` builds label voting's events on a ledger. Sensitivities (the unit
of privacy is one **teacher**: a client, in fedkd's alignment voting, so ε is
client-level; §4.7 "federated use"):

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

import json
import math
import numbers
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedkd.errors import ConfigError
from fedkd.privacy.mechanisms import non_negative

if TYPE_CHECKING:
    import dp_accounting


def dp_lib():
    """``dp_accounting``, imported on first use: it pulls in scipy.signal (0.6 s), which
    every ClientApp process would otherwise pay at start-up even without privacy."""
    import dp_accounting
    import dp_accounting.rdp  # noqa: F401

    return dp_accounting


__all__ = ["EVERY", "GNMAX", "GnmaxRecorder", "Ledger", "Release", "accountant"]

EVERY = "every"  # the units of a release every client pays (a GNMax query)
GNMAX = "gnmax"  # the mechanism name of label voting's releases


def accountant(orders: Sequence[float] | None = None) -> dp_accounting.rdp.RdpAccountant:
    """The RDP accountant every ε is composed in. Replace-one: the relation under which
    ``dp_accounting`` composes randomized response exactly; the RDP of a Gaussian or
    Laplace event does not depend on it (its multiplier already carries the sensitivity
    of the unit, add/remove for central noise)."""
    lib = dp_lib()
    return lib.rdp.RdpAccountant(orders, neighboring_relation=lib.NeighboringRelation.REPLACE_ONE)


def gaussian_event(noise_multiplier: float) -> dp_accounting.DpEvent:
    """One Gaussian release with multiplier ``z`` (noise std / L2 sensitivity); ``z = 0``
    is a non-private release (ε = ∞)."""
    z = non_negative("noise_multiplier", noise_multiplier)
    return dp_lib().GaussianDpEvent(z) if z > 0 else dp_lib().NonPrivateDpEvent()


# ------------------------------------------------------------------ events as JSON
def encode_event(event: Any) -> dict[str, Any]:
    """A ``dp_accounting.DpEvent`` as JSON: ``{"type": class name, field: value, ...}``,
    nested events encoded the same way."""
    import attr

    if not isinstance(event, dp_lib().DpEvent):
        raise ConfigError(f"a release must be a dp_accounting.DpEvent, got {event!r}")

    def value(v: Any) -> Any:
        if isinstance(v, dp_lib().DpEvent):
            return encode_event(v)
        if isinstance(v, (list, tuple)):
            return [value(x) for x in v]
        if isinstance(v, numbers.Integral):
            return int(v)
        return float(v) if isinstance(v, numbers.Real) else v

    fields = {f.name: value(getattr(event, f.name)) for f in attr.fields(type(event))}
    return {"type": type(event).__name__, **fields}


def decode_event(data: dict[str, Any]) -> Any:
    """The event :func:`encode_event` wrote."""
    lib = dp_lib()
    cls = getattr(lib, str(data.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, lib.DpEvent)):
        raise ConfigError(f"not a dp_accounting event in the ledger: {data!r}")

    def value(v: Any) -> Any:
        if isinstance(v, dict):
            return decode_event(v)
        if isinstance(v, list):
            return [value(x) for x in v]
        return v

    return cls(**{k: value(v) for k, v in data.items() if k != "type"})


def _key(event: Any) -> str:
    return json.dumps(encode_event(event), sort_keys=True)


# ------------------------------------------------------------------ releases
def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
    return value


def _units(units: Iterable[int] | str) -> tuple[int, ...] | str:
    if isinstance(units, str):
        if units != EVERY:
            raise ConfigError(f"release units must be client ids or {EVERY!r}, got {units!r}")
        return EVERY
    out = tuple(units)
    for unit in out:
        if isinstance(unit, bool) or not isinstance(unit, int):
            raise ConfigError(f"release units must be int client ids, got {unit!r}")
    return tuple(int(u) for u in out)


@dataclass(frozen=True)
class Release:
    """``count`` releases of ``event`` by ``mechanism``, costing each of ``units`` (client
    ids; an id listed twice pays twice) or every unit (:data:`EVERY`)."""

    mechanism: str
    event: Any  # dp_accounting.DpEvent
    units: tuple[int, ...] | str
    count: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", _units(self.units))
        _count("count", self.count)

    def to_dict(self) -> dict[str, Any]:
        units = self.units if self.units == EVERY else list(self.units)
        event = encode_event(self.event)
        return {"mechanism": self.mechanism, "units": units, "event": event, "count": self.count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Release:
        return cls(
            mechanism=str(data["mechanism"]),
            event=decode_event(data["event"]),
            units=data["units"],
            count=int(data["count"]),
        )


# ------------------------------------------------------------------ the ledger
class Ledger:
    """Every release of a run, composed per accounting unit (see the module docstring).

    Example: ``Ledger().record(Release("gaussian", GaussianDpEvent(5), [0], 50))`` then
    ``epsilon(0, 1e-5)`` ≈ 7.1, and ``epsilon(1, 1e-5)`` is 0: client 1 released nothing.
    """

    def __init__(self, *, orders: Sequence[float] | None = None) -> None:
        self.orders = None if orders is None else [float(o) for o in orders]
        self.sink: Callable[[dict[str, Any]], None] | None = None  # gets every release first
        self._events: dict[str, Any] = {}  # encoded event -> event
        self._own: dict[int, Counter[tuple[str, str]]] = {}  # unit -> (mechanism, event): count
        self._shared: list[tuple[str, str, int]] = []  # (mechanism, event, count), in order
        self._cache: dict[tuple, tuple[float, float]] = {}

    def record(self, release: Release) -> Ledger:
        """Charge ``release`` (written to ``sink`` first, when one is attached); a release
        of count 0 is not recorded."""
        if release.count:
            if self.sink is not None:  # persisted before it counts (an append-only log)
                self.sink(release.to_dict())
            self._apply(release)
        return self

    def _event_key(self, event: Any) -> str:
        key = _key(event)
        self._events.setdefault(key, event)
        return key

    def _apply(self, release: Release) -> None:
        key = self._event_key(release.event)
        if release.units == EVERY:
            self._shared.append((release.mechanism, key, release.count))
            return
        for unit in release.units:
            self._own.setdefault(unit, Counter())[(release.mechanism, key)] += release.count

    # ---------------------------------------------------------------- queries
    def units(self) -> list[int]:
        """The units that released something of their own, sorted."""
        return sorted(self._own)

    def count(self, unit: int, mechanisms: Iterable[str] | None = None) -> int:
        """How many of its own releases ``unit`` made (of ``mechanisms``; default all)."""
        keep = None if mechanisms is None else set(mechanisms)
        own = self._own.get(unit, Counter())
        return sum(n for (m, _), n in own.items() if keep is None or m in keep)

    def shared_count(self, mechanism: str) -> int:
        """Releases of ``mechanism`` charged to every unit."""
        return sum(n for m, _, n in self._shared if m == mechanism)

    def _composition(
        self, unit: int | str, mechanisms: Iterable[str] | None, extra: Iterable[Release]
    ) -> tuple[tuple[str, int], ...]:
        own = Counter() if unit == EVERY else Counter(self._own.get(unit, Counter()))
        shared = list(self._shared)
        for release in extra:
            key = self._event_key(release.event)
            if release.units == EVERY:
                shared.append((release.mechanism, key, release.count))
            elif unit != EVERY:
                own[(release.mechanism, key)] += release.count * release.units.count(unit)
        keep = None if mechanisms is None else set(mechanisms)
        return tuple(
            [(k, n) for (m, k), n in own.items() if n and (keep is None or m in keep)]
            + [(k, n) for m, k, n in shared if n and (keep is None or m in keep)]
        )

    def epsilon(
        self,
        unit: int | str,
        delta: float,
        *,
        mechanisms: Iterable[str] | None = None,
        extra: Iterable[Release] = (),
    ) -> float:
        """ε at ``delta`` of everything ``unit`` released (a client id, or :data:`EVERY`:
        the releases every unit paid), of ``mechanisms`` only when given, and as if the
        ``extra`` releases came next; 0 when nothing was released."""
        return self.epsilon_and_order(unit, delta, mechanisms=mechanisms, extra=extra)[0]

    def epsilon_and_order(
        self,
        unit: int | str,
        delta: float,
        *,
        mechanisms: Iterable[str] | None = None,
        extra: Iterable[Release] = (),
    ) -> tuple[float, float]:
        """``(ε, optimal RDP order)`` of :meth:`epsilon` (order NaN when nothing composed)."""
        delta = float(delta)
        if not 0.0 < delta < 1.0:
            raise ConfigError(f"delta must be in (0, 1), got {delta}")
        plan = self._composition(unit, mechanisms, extra)
        if not plan:
            return 0.0, math.nan
        cached = self._cache.get((plan, delta))
        if cached is None:
            acc = accountant(self.orders)
            for key, count in plan:
                acc.compose(self._events[key], count)
            eps, order = acc.get_epsilon_and_optimal_order(delta)
            cached = self._cache[(plan, delta)] = (float(eps), float(order))
        return cached

    # ---------------------------------------------------------------- replay
    def releases(self) -> list[Release]:
        """What was recorded, compacted: each unit's own releases per event (with their
        total count), then the shared ones in order. Replaying them gives the same ε."""
        own = [
            Release(m, self._events[k], (unit,), n)
            for unit, counts in self._own.items()
            for (m, k), n in counts.items()
        ]
        return [*own, *(Release(m, self._events[k], EVERY, n) for m, k, n in self._shared)]

    def state_dict(self) -> dict[str, Any]:
        return {"orders": self.orders, "releases": [r.to_dict() for r in self.releases()]}

    def load_state_dict(self, state: dict[str, Any]) -> Ledger:
        """Replace what was recorded by ``state``'s releases, composed again (not sent to
        ``sink``: a replay is not a new release)."""
        orders = state["orders"]
        self.orders = None if orders is None else [float(o) for o in orders]
        self._events, self._own, self._shared, self._cache = {}, {}, [], {}
        for data in state["releases"]:
            self._apply(Release.from_dict(data))
        return self


# ------------------------------------------------------------------ label voting
class GnmaxRecorder:
    """GNMax / Confident-GNMax releases of label voting, recorded on a :class:`Ledger` as
    Gaussian events charged to every unit (mechanism :data:`GNMAX`).

    Example: ``GnmaxRecorder().gnmax(sigma=40, count=286).epsilon(1e-5)`` ≈ 2.64. Recording
    methods return ``self`` so they chain. ``num_queries`` / ``num_answered`` count what
    was recorded through :meth:`gnmax`, :meth:`threshold_check` and
    :meth:`confident_gnmax` (for reports; the ε comes from the ledger alone).
    """

    def __init__(self, ledger: Ledger | None = None, *, votes_per_teacher: int = 1):
        if isinstance(votes_per_teacher, bool) or not isinstance(votes_per_teacher, int):
            raise ConfigError(f"votes_per_teacher must be an int, got {votes_per_teacher!r}")
        if votes_per_teacher < 1:
            raise ConfigError(f"votes_per_teacher must be >= 1, got {votes_per_teacher}")
        self.votes_per_teacher = votes_per_teacher
        self.ledger = Ledger() if ledger is None else ledger
        self.num_queries = 0
        self.num_answered = 0

    @property
    def gnmax_sensitivity(self) -> float:
        """L2 sensitivity of the vote histogram to one teacher: ``√(2k)``."""
        return math.sqrt(2.0 * self.votes_per_teacher)

    def release(self, noise_multiplier: float, count: int = 1) -> Release:
        """``count`` Gaussian releases with multiplier ``noise_multiplier``, every unit pays."""
        return Release(GNMAX, gaussian_event(noise_multiplier), EVERY, _count("count", count))

    def gnmax_release(self, sigma: float, count: int = 1) -> Release:
        """``count`` GNMax answers with noise std ``sigma`` (multiplier ``σ/√(2k)``)."""
        return self.release(non_negative("gnmax sigma", sigma) / self.gnmax_sensitivity, count)

    def gaussian(self, noise_multiplier: float, count: int = 1) -> GnmaxRecorder:
        """Record :meth:`release`."""
        self.ledger.record(self.release(noise_multiplier, count))
        return self

    def gnmax(self, sigma: float, count: int = 1) -> GnmaxRecorder:
        """Record ``count`` GNMax answers with noise std ``sigma``."""
        release = self.gnmax_release(sigma, count)
        self.num_queries += count
        self.num_answered += count
        self.ledger.record(release)
        return self

    def threshold_check(self, sigma1: float, count: int = 1) -> GnmaxRecorder:
        """Record ``count`` Confident-GNMax threshold checks (sensitivity 1, multiplier ``σ₁``)."""
        return self.gaussian(non_negative("threshold sigma1", sigma1), _count("count", count))

    def confident_gnmax(
        self, sigma1: float, sigma2: float, num_queries: int, num_answered: int
    ) -> GnmaxRecorder:
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
        """ε at ``delta`` of every GNMax release so far (0 if none was)."""
        return self.epsilon_and_order(delta)[0]

    def epsilon_and_order(self, delta: float) -> tuple[float, float]:
        """``(ε, optimal RDP order)`` at ``delta``."""
        return self.ledger.epsilon_and_order(EVERY, delta, mechanisms=(GNMAX,))

    def state_dict(self) -> dict[str, Any]:
        """The query counts (the releases are the ledger's state)."""
        return {"num_queries": self.num_queries, "num_answered": self.num_answered}

    def load_state_dict(self, state: dict[str, Any]) -> GnmaxRecorder:
        self.num_queries = int(state["num_queries"])
        self.num_answered = int(state["num_answered"])
        return self
