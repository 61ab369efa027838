"""Hostile clients: well-formed knowledge that lies (the ``attack`` section of the run config).

An attacker trains like everyone else and evaluates its own model honestly;
only the knowledge it uploads is replaced, on the client side, so the server
sees exactly what a hostile client would send. Which clients attack is a
seeded choice (``attack.fraction`` of the clients, plus ``attack.clients``);
``summary.json`` lists them under ``attackers`` and reports the honest
clients' accuracies (``honest_*``).

- ``random_logits``: random values of the payload's shape, ``N(0, magnitude^2)``
  (logits, prototypes, weights; probabilities are the softmax of such logits,
  votes random class ids); seeded by (seed, round, client);
- ``label_flip``: knowledge computed as if the labels were permuted by one
  seeded derangement ``pi`` shared by all attackers (a coordinated attack):
  per-class payloads report class ``c``'s row (and count) as class ``pi(c)``,
  public-set predictions give class ``c``'s score to ``pi(c)``, votes are mapped
  through ``pi``;
- ``scale``: logits, prototypes or weights multiplied by ``factor``
  (probabilities: ``softmax(factor * log p)``, which stays a distribution and
  inverts it for a negative factor);
- ``count_claim``: honest values, but the reply claims ``num_train =
  attack.count`` (default 2^62) training samples and, in per-class payloads, that
  many samples of each class it has, to take over count-weighted fusion (FedAvg;
  ``weighted: true`` in fd and fedproto);
Each payload kind implements the attacks that apply to it (``Payload.attacks``,
``randomized`` / ``relabelled`` / ``scaled`` / ``claiming`` in ``fedkd/knowledge/``).

- ``stale``: the knowledge the client uploaded the first time it was asked,
  re-sent every later round (kept in the client's state; for strategies that
  ask for a fresh public subset each round the server then rejects it for its
  indices).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedkd.client.faults import check_selection
from fedkd.errors import ConfigError
from fedkd.knowledge import PAYLOADS
from fedkd.knowledge.base import ATTACKS

if TYPE_CHECKING:
    from collections.abc import MutableMapping

KINDS = ("none", *ATTACKS)
KEYS = {"kind", "fraction", "clients", "seed", "magnitude", "factor", "count"}
STALE = "attack_stale"  # the key under which a stale attacker's first upload is kept


def _attack(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    return cfg["attack"]


def attack_seed(cfg: Mapping[str, Any]) -> int:
    seed = _attack(cfg)["seed"]
    return int(cfg["seed"] if seed is None else seed)


def attackers(cfg: Mapping[str, Any]) -> list[int]:
    """The attacking clients: ``attack.clients`` plus a seeded ``attack.fraction`` of the rest."""
    attack = _attack(cfg)
    if attack["kind"] == "none":
        return []
    num_clients = int(cfg["num_clients"])
    chosen = {int(c) for c in attack["clients"]}
    count = int(round(float(attack["fraction"]) * num_clients))
    free = sorted(set(range(num_clients)) - chosen)
    if count > 0 and free:
        rng = np.random.default_rng([attack_seed(cfg), 0xA77AC])
        chosen.update(int(c) for c in rng.choice(free, size=min(count, len(free)), replace=False))
    return sorted(chosen)


def permutation(cfg: Mapping[str, Any], num_classes: int) -> np.ndarray:
    """``pi``: a seeded derangement of the classes (no class keeps its label)."""
    rng = np.random.default_rng([attack_seed(cfg), 0xF11B])
    while True:
        pi = rng.permutation(num_classes)
        if num_classes < 2 or not np.any(pi == np.arange(num_classes)):
            return pi


def apply(
    cfg: Mapping[str, Any],
    client_id: int,
    server_round: int,
    payload: Any,
    state: MutableMapping[str, Any],
    num_classes: int,
) -> Any:
    """The payload an attacking client sends instead of ``payload`` (others: unchanged)."""
    kind = _attack(cfg)["kind"]
    if payload is None or kind == "none" or client_id not in attackers(cfg):
        return payload
    if kind not in payload.attacks:
        raise ConfigError(f"attack.kind={kind} cannot attack {payload.kind} payloads")
    if kind == "stale":
        return _stale(payload, state)
    if kind == "count_claim":  # honest values; its label counts and num_train (claim_count) lie
        return payload.claiming(int(_attack(cfg)["count"]))
    if kind == "random_logits":
        rng = np.random.default_rng([attack_seed(cfg), server_round, client_id, 0xBAD])
        return payload.randomized(rng, float(_attack(cfg)["magnitude"]), num_classes)
    if kind == "label_flip":
        return payload.relabelled(permutation(cfg, num_classes))
    return payload.scaled(float(_attack(cfg)["factor"]))


def targets(kind: str) -> list[str]:
    """The payload kinds attack ``kind`` applies to (each kind's ``Payload.attacks``)."""
    return [name for name in PAYLOADS.names() if kind in PAYLOADS.get(name).attacks]


def claim_count(cfg: Mapping[str, Any], client_id: int, metrics: dict[str, Any]) -> None:
    """``count_claim``: an attacker's reply claims ``attack.count`` training samples."""
    attack = _attack(cfg)
    if attack["kind"] == "count_claim" and client_id in attackers(cfg):
        metrics["num_train"] = int(attack["count"])


def _stale(payload: Any, state: MutableMapping[str, Any]) -> Any:
    """The first upload, kept in ``state`` (the client adapter persists it), re-sent."""
    if STALE in state:
        return state[STALE]
    state[STALE] = payload
    return payload


def check_attack(cfg: Mapping[str, Any], upload_kind: str | None, strategy: str) -> None:
    """One-line ConfigError for a bad ``attack`` section; runs before Ray starts."""
    attack = cfg["attack"]
    if not isinstance(attack, Mapping):
        raise ConfigError(f"attack must be a mapping (got {attack!r})")
    unknown = set(attack) - KEYS
    if unknown:
        raise ConfigError(f"unknown option(s) attack.{', '.join(sorted(unknown))}")
    missing = KEYS - set(attack)
    if missing:
        raise ConfigError(
            f"attack has no {', '.join(sorted(missing))}; configs/config.yaml sets every one"
        )
    kind = attack["kind"]
    if kind not in KINDS:
        raise ConfigError(f"attack.kind must be one of {', '.join(KINDS)} (got {kind!r})")
    check_selection(attack, "attack", int(cfg["num_clients"]))
    seed = attack["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"attack.seed must be null or an integer >= 0 (got {seed!r})")
    for key in ("magnitude", "factor"):
        value = attack[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ConfigError(f"attack.{key} must be a finite number (got {value!r})")
    count = attack["count"]
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2**63:
        raise ConfigError(f"attack.count must be an integer in [0, 2^63) (got {count!r})")
    if float(attack["magnitude"]) <= 0:
        raise ConfigError(f"attack.magnitude must be > 0 (got {attack['magnitude']})")
    if kind != "none" and upload_kind not in targets(kind):
        raise ConfigError(
            f"attack.kind={kind} cannot attack strategy '{strategy}', which uploads "
            f"{upload_kind or 'nothing'} (it attacks {', '.join(targets(kind))})"
        )
