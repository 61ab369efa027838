"""The server's side of privacy: which mechanism, calibrated noise, and the ε ledger.

``privacy=gaussian|laplace`` (local DP): the server calibrates the noise multiplier (or
takes the configured one), sends it in every plan, and the clients' privacy mod
(``clients/privacy_mod.py``) applies it. ``privacy=subteachers`` (record-level): the plan tells each client to release the noised
mean of its shard models (``clients/subteachers.py``). ``privacy=central``: the strategy fuses with
:func:`fedkd.privacy.release.noisy_mean`; only strategies that fuse with a plain mean
(``supports_central``) accept it, never personalised fusion (KnFu). :class:`PrivacyLedger`
is the run's policy: it charges one ``dp_accounting`` event per round a client releases
(local and sub-teachers: each sampled client; central: every client, each fused round)
to the strategy's one :class:`fedkd.privacy.Ledger`, where label voting's GNMax releases
go too, and reports ε at ``delta`` per client (docs/privacy.md "The ledger").
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkd.errors import ConfigError
from fedkd.plan import PrivacySpec, TeachersSpec
from fedkd.privacy import subteachers
from fedkd.privacy.accounting import Ledger, Release
from fedkd.privacy.floor import Floor
from fedkd.privacy.noise import NOT_A_GUARANTEE, noise_rng, seeded_noise
from fedkd.privacy.release import (
    NOISES,
    LocalSpec,
    calibrate,
    epsilon_after,
    noisy_class_mean,
    noisy_mean,
    round_event,
)

log = logging.getLogger("fedkd")

LOCAL = ("gaussian", "laplace")
UNITS = {
    "gaussian": "local: one client's upload, replace-one (untrusted server)",
    "laplace": "local: one client's upload, replace-one (untrusted server)",
    "central": "client-level: add/remove one client (trusted server)",
    "subteachers": "record-level: one training record of a client (disjoint sub-teachers)",
}
KEYS = {
    "name", "noise_multiplier", "target_epsilon", "delta", "clip", "row_clip", "vote_epsilon",
    "denominator", "budget_epsilon", "on_budget", "shards",
}  # fmt: skip


def _number(p: dict[str, Any], key: str, *, positive: bool = True, optional: bool = True) -> None:
    value = p[key]
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"privacy.{key} must be a number (got {value!r})")
    if positive and value <= 0:
        raise ConfigError(f"privacy.{key} must be > 0 (got {value})")


def check_privacy(cfg: dict[str, Any], strategy: type) -> None:
    """One-line ConfigError for a bad privacy section or a strategy that cannot use it, or
    for a plan the run's own clients' floor (``privacy_floor``) would refuse."""
    check_section(cfg, strategy)
    if cfg["privacy_floor"] is not None:
        check_floor(Floor.from_section(cfg["privacy_floor"]), cfg["privacy"], strategy)


def check_section(cfg: dict[str, Any], strategy: type) -> None:
    p = cfg["privacy"]
    name = p["name"]
    if name == "none":
        return
    if name not in UNITS:
        raise ConfigError(f"privacy.name must be none, {', '.join(UNITS)} (got {name!r})")
    if "seeded_noise" in p:
        raise ConfigError(
            "privacy.seeded_noise is not an option: seeded privacy noise is the simulation-only "
            "switch simulation.seeded_noise"
        )
    unknown = set(p) - KEYS
    if unknown:
        raise ConfigError(f"unknown privacy option(s): {', '.join(sorted(unknown))}")
    missing = KEYS - {"shards"} - set(p) | ({"shards"} - set(p) if name == "subteachers" else set())
    if missing:
        raise ConfigError(
            f"privacy section misses {', '.join(sorted(missing))}: start from "
            f"configs/privacy/{name}.yaml"
        )
    for key in ("noise_multiplier", "target_epsilon", "clip", "row_clip", "vote_epsilon"):
        _number(p, key)
    _number(p, "delta", optional=False)
    _number(p, "denominator")
    _number(p, "budget_epsilon")
    if not 0 < p["delta"] < 1:
        raise ConfigError(f"privacy.delta must be in (0, 1) (got {p['delta']})")
    if name != "subteachers":  # client-level: delta below 1 / number of clients
        check_delta("privacy.delta", float(p["delta"]), int(cfg["num_clients"]), "clients")
    if p["clip"] is None:
        raise ConfigError("privacy.clip must be set: noise is only meaningful on bounded uploads")
    if p["noise_multiplier"] is None and p["target_epsilon"] is None:
        raise ConfigError("set privacy.noise_multiplier or privacy.target_epsilon")
    if p["on_budget"] not in ("stop", "warn"):
        raise ConfigError(f"privacy.on_budget must be stop or warn (got {p['on_budget']!r})")
    if name == "subteachers":
        shards = p["shards"]
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 2:
            raise ConfigError(f"privacy.shards must be an int >= 2 (got {shards!r})")
        if strategy.upload_kind != "public_logits" or strategy.upload_space != "probs":
            raise ConfigError(
                f"privacy=subteachers releases probabilities on the public set; strategy "
                f"'{strategy.name}' does not upload them (use dsfl or knfu)"
            )
    if name == "central" and not getattr(strategy, "supports_central", False):
        why = (
            "it fuses personally (a different mix per client), which a noised sum does not cover"
            if getattr(strategy, "personalised", False)
            else "it does not fuse with a plain mean"
        )
        raise ConfigError(
            f"privacy=central cannot protect strategy '{strategy.name}': {why}; "
            "use the client-side mod (privacy=gaussian or privacy=laplace)"
        )


def check_delta(key: str, delta: float, units: int, what: str) -> None:
    """A delta of 1/n or more lets a mechanism publish one of the n units outright."""
    if units > 0 and not delta < 1.0 / units:
        raise ConfigError(
            f"{key}={delta:g} must be below 1/{units} (the {what} it protects); set e.g. "
            f"{key}={min(1e-5, 0.1 / units):.1g}"
        )


def check_record_delta(cfg: dict[str, Any], records: int) -> None:
    """Record-level (sub-teachers) and GNMax deltas, once the data sizes are known.

    ``records``: the largest client's training-set size."""
    p = cfg["privacy"]
    if p["name"] == "subteachers":
        check_delta("privacy.delta", float(p["delta"]), records, "records of a client")
    voting = cfg["strategy"].get("voting")  # vote and fedka only
    if isinstance(voting, dict) and voting["noise"] != "none":
        check_delta(
            "strategy.voting.delta", float(voting["delta"]), int(cfg["num_clients"]), "clients"
        )


def check_floor(floor: Floor, p: dict[str, Any], strategy: type) -> None:
    """A simulation whose own clients' floor (``privacy_floor``) would refuse every plan fails
    now, not in round 1. Only what the config fixes is checked (a calibrated ``z`` is
    checked by each client when the plan arrives)."""
    name = p["name"]
    if getattr(strategy, "upload_kind", None) is None:
        return  # nothing released
    mode = "none" if name in ("none", "central") else name
    if mode not in floor.mechanisms:
        raise ConfigError(
            f"privacy={name} releases what privacy_floor.mechanisms={list(floor.mechanisms)} "
            f"refuses ({mode}); change privacy or privacy_floor.mechanisms"
        )
    if mode == "none":
        return  # no key of a mechanism to check
    z = p["noise_multiplier"]
    if isinstance(z, (int, float)) and z < floor.min_noise_multiplier:
        raise ConfigError(
            f"privacy.noise_multiplier={z} is below privacy_floor.min_noise_multiplier="
            f"{floor.min_noise_multiplier}: every client would refuse the plan"
        )
    clip = p["clip"]
    limit = floor.max_clip
    if mode in LOCAL and limit is not None and isinstance(clip, (int, float)) and clip > limit:
        raise ConfigError(
            f"privacy.clip={clip} exceeds privacy_floor.max_clip={limit}: "
            "every client would refuse the plan"
        )


@dataclass
class PrivacyLedger:
    """The run's privacy policy over the run's one :class:`fedkd.privacy.Ledger`: the
    mechanism and what it charges per client (``event``, one round's release), the plan
    entries, central noise parameters and the budget. Label voting's GNMax releases go to
    the same ledger (``shared``: their mechanism names), so a client's ε composes both."""

    name: str
    event: Any
    delta: float
    noise_multiplier: float | None
    local: LocalSpec | None
    central: dict[str, float] | None
    teachers: dict[str, Any] | None
    budget: float | None
    on_budget: str
    seeded: bool
    ledger: Ledger

    def __post_init__(self) -> None:
        self.warned = False
        self.shared: tuple[str, ...] = ()  # mechanisms of the strategy's on this ledger (gnmax)

    def release(self, client_ids) -> Release:
        """Each of ``client_ids`` releases once (one round of the mechanism)."""
        return Release(self.name, self.event, [int(c) for c in client_ids])

    def charge(self, client_ids) -> None:
        """Each of ``client_ids`` releases once; written to the run's log first
        (``server.ledger_log``) when one is attached."""
        self.ledger.record(self.release(client_ids))

    @property
    def rounds(self) -> Counter[int]:
        """Rounds charged per client (this mechanism's releases)."""
        return Counter({c: self.ledger.count(c, (self.name,)) for c in self.ledger.units()})

    def epsilon(self, cid: int) -> float:
        """ε of this mechanism's releases by ``cid``."""
        return self.ledger.epsilon(cid, self.delta, mechanisms=(self.name,))

    def max_epsilon(self) -> float:
        return max((self.epsilon(c) for c in self.ledger.units()), default=0.0)

    def total_epsilon(self, cid: int, extra=()) -> float:
        """ε of everything ``cid`` released (this mechanism and the shared GNMax releases),
        as if the ``extra`` releases came next."""
        return self.ledger.epsilon(cid, self.delta, extra=extra)

    def exhausted(self, client_ids, next_votes=()) -> bool:
        """Would one more release by these clients (and ``next_votes``, the most one more
        GNMax round costs) exceed the budget?"""
        if self.budget is None:
            return False
        return any(
            self.total_epsilon(c, [self.release([c]), *next_votes]) > self.budget
            for c in client_ids
        )

    def summary(self) -> dict[str, Any]:
        units = self.ledger.units()
        total = (
            {"epsilon_total_max": max((self.total_epsilon(c) for c in units), default=0.0)}
            if self.shared
            else {}
        )
        rounds = self.rounds
        return {
            **total,
            "mechanism": self.name,
            "unit": UNITS[self.name],
            "noise_multiplier": self.noise_multiplier,
            # k-ary randomized response on each vote, per label and round (local mod)
            "vote_epsilon": None if self.local is None else self.local.vote_epsilon,
            "delta": self.delta,
            "epsilon_max": self.max_epsilon(),
            "epsilon": {str(c): self.epsilon(c) for c in units},
            "rounds_charged": {str(c): rounds[c] for c in units},
            "seeded_noise": self.seeded,
            "guarantee": NOT_A_GUARANTEE if self.seeded else "noise from OS entropy",
        }

    def plan_entries(self, seeded_noise: bool) -> dict[str, PrivacySpec | TeachersSpec]:
        """What every sampled client's plan carries (``Plan`` fields): the local mod's
        mechanism (``privacy``) or the sub-teachers' release (``teachers``); {} for central
        noise."""
        if self.local is not None:
            return {"privacy": PrivacySpec(**self.local.to_dict(), seeded=seeded_noise)}
        if self.teachers is not None:
            return {"teachers": TeachersSpec(**self.teachers, seeded=seeded_noise)}
        return {}

    def charge_sampled(self, client_ids) -> None:
        """Local and sub-teacher noise: each sampled client releases once when sent its
        plan (central noise is charged when the noised aggregate is fused)."""
        if self.local is not None or self.teachers is not None:
            self.charge(client_ids)

    def allows(self, server_round: int, client_ids, next_votes=()) -> str | None:
        """None when another round may run; the stop reason when it would push a client
        past ``budget_epsilon`` with ``on_budget: stop`` (``warn``: one warning, go on)."""
        if not self.exhausted(client_ids, next_votes):
            return None
        if self.on_budget == "warn":
            if not self.warned:
                log.warning(
                    "round %d: privacy budget epsilon=%g exceeded; going on",
                    server_round,
                    self.budget,
                )
                self.warned = True
            return None
        return f"privacy budget epsilon={self.budget:g} reached before round {server_round}"

    def state_dict(self) -> dict[str, Any]:
        """The policy's own state (the releases are the ledger's)."""
        return {"warned": self.warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warned = bool(state["warned"])

    def rng(self, seed: int, server_round: int) -> np.random.Generator:
        """Central noise: OS entropy; from (seed, round) only with simulation.seeded_noise."""
        return noise_rng(self.seeded, [seed, server_round, 11])

    def mean(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.central
        return noisy_mean(values, c["clip"], c["noise_multiplier"], c["denominator"], rng)

    def class_mean(self, values: np.ndarray, counts: np.ndarray, rng: np.random.Generator):
        """Per-class tables: noised sums over noised per-class weights (``noisy_class_mean``)."""
        c = self.central
        return noisy_class_mean(values, counts, c["clip"], c["noise_multiplier"], rng)


def central_or(
    ledger: PrivacyLedger | None,
    seed: int,
    server_round: int,
    values: np.ndarray,
    plain: Callable[[], Any],
    counts: np.ndarray | None = None,
) -> Any:
    """The clients' fused mean: ``plain()`` (the configured reducer), or under
    ``privacy=central`` the clipped, noised mean over clients (axis 0) with a fixed
    denominator, or, given per-class holder ``counts``, ``(mean, present)`` of per-class
    tables ``[K, C, D]`` over noised counts (``noisy_class_mean``)."""
    if ledger is None or ledger.central is None:
        return plain()
    rng = ledger.rng(seed, server_round)
    if counts is None:
        return ledger.mean(values, rng)
    mean, present, _ = ledger.class_mean(values, counts, rng)
    return mean, present


GNMAX_UNIT = (
    "client-level: one client's votes (each client is one GNMax teacher, replace-one); "
    "the server that counts the raw votes is trusted"
)


def vote_recorder(strategy: Any):
    """The strategy's GNMax recorder (``vote``, ``fedka`` with noisy voting), or None."""
    voting = getattr(strategy, "voting", None)
    return None if voting is None or not voting.private else voting.recorder


def privacy_summary(strategy: Any) -> dict[str, Any]:
    """``summary.json["privacy"]``: the privacy group's mechanism and, under a distinct name,
    label voting's GNMax (``gnmax``, its own unit and delta); {} with neither."""
    out = {} if strategy.privacy is None else strategy.privacy.summary()
    votes = vote_recorder(strategy)
    if votes is not None:
        voting = strategy.voting
        seeded = bool(getattr(strategy, "seeded_noise", False))
        out["gnmax"] = {
            "mechanism": voting.noise,
            "unit": GNMAX_UNIT,
            "epsilon": voting.epsilon(),
            "delta": voting.delta,
            "queries": votes.num_queries,
            "answered": votes.num_answered,
            "seeded_noise": seeded,
            "guarantee": NOT_A_GUARANTEE if seeded else "noise from OS entropy",
        }
    not_protected = getattr(strategy, "not_protected", None)
    if out and not_protected:
        out["not_protected"] = not_protected
    return {"privacy": out} if out else {}


def build_ledger(
    cfg: dict[str, Any], kind: str | None, rows: int, num_classes: int, ledger: Ledger | None = None
) -> PrivacyLedger | None:
    """The run's privacy policy (None without privacy) over ``ledger`` (the run's one
    ledger; a new one when None); calibrates ``z`` (or ``vote_epsilon``)."""
    p = cfg["privacy"]
    name = p["name"]
    if name == "none" or kind is None:
        return None
    rounds = int(cfg["num_rounds"])
    delta = float(p["delta"])
    mechanism = "gaussian" if name in ("central", "subteachers") else name
    NOISES.get(mechanism)
    z, vote_eps = p["noise_multiplier"], p["vote_epsilon"]
    teachers = None
    if name == "subteachers":
        if z is None:
            z = calibrate(
                lambda v: subteachers.round_event(v, rows),
                rounds,
                float(p["target_epsilon"]),
                delta,
            )
        event = subteachers.round_event(float(z), rows)
        shards = int(p["shards"])
        teachers = {"shards": shards, "sigma": subteachers.sigma_for(float(z), shards)}
    elif kind == "votes":
        if vote_eps is None:
            vote_eps = calibrate(
                lambda e: round_event(mechanism, 1.0, "votes", rows, e, num_classes),
                rounds,
                float(p["target_epsilon"]),
                delta,
            )
        z = None
    elif z is None:
        z = calibrate(
            lambda v: round_event(mechanism, v, kind, rows, None),
            rounds,
            float(p["target_epsilon"]),
            delta,
        )
    if teachers is None:
        event = round_event(mechanism, float(z or 0.0), kind, rows, vote_eps, num_classes)
    local = central = None
    if name in LOCAL:
        local = LocalSpec(
            mechanism=name,
            noise_multiplier=float(z or 0.0),
            clip=float(p["clip"]),
            row_clip=p["row_clip"],
            vote_epsilon=vote_eps,
            num_classes=num_classes,
        )
    elif name == "central":
        expected = max(1, round(float(cfg["server"]["fraction_train"]) * int(cfg["num_clients"])))
        central = {
            "clip": float(p["clip"]),
            "noise_multiplier": float(z),
            "denominator": float(p["denominator"] or expected),
        }
    policy = PrivacyLedger(
        name=name,
        event=event,
        delta=delta,
        noise_multiplier=None if z is None else float(z),
        local=local,
        central=central,
        teachers=teachers,
        budget=p["budget_epsilon"],
        on_budget=p["on_budget"],
        seeded=seeded_noise(cfg),
        ledger=Ledger() if ledger is None else ledger,
    )
    log.info(
        "privacy %s: noise multiplier %s, vote epsilon %s, epsilon after %d rounds %.3g at delta %g",
        name, policy.noise_multiplier, vote_eps, rounds, epsilon_after(event, rounds, delta), delta,
    )  # fmt: skip
    if policy.seeded:
        log.warning("privacy %s: %s", name, NOT_A_GUARANTEE)
    return policy
