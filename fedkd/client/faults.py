"""Fault injection: clients that crash, hang, drop out, straggle or send broken payloads.

Driven by the ``faults`` section of the run config that the server sends with
every message, and executed inside the ClientApp, so each fault is a real
failure for Flower: an exception becomes Flower's error reply, a hang is a
ClientApp that sleeps past ``server.round_timeout`` (the server stops waiting,
the reply never counts), a dropout is the error reply Flower gives for a node
that has gone (``NODE_UNAVAILABLE``). Faults apply to training messages only.

``faults.<kind>`` = ``{clients: [ids], fraction: f, rounds: null | [r, ...], ...}``:
the explicit ``clients`` plus ``round(f * num_clients)`` clients drawn with a
generator seeded by ``faults.seed`` (null: the run's seed) among the clients
that have no fault yet (kinds are assigned in :data:`FAULT_KINDS` order, so the
sets are disjoint); ``rounds: null`` means every round.

- ``dropout``: unavailable in ``rounds``, back (with its state) afterwards;
- ``hang``: sleeps ``seconds`` (null: ``server.round_timeout + 5``), then raises;
- ``crash``: raises :class:`InjectedFault`;
- ``slow``: sleeps ``seconds`` (< the round timeout), then works normally;
- ``bad_payload``: works, then sends a malformed payload (``mode``, below).

No fault changes a client's model: a failing client raises or answers before
it trains, so a run with faults stays reproducible.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

from fedkd.errors import ConfigError
from fedkd.knowledge import PAYLOADS, ClassLogits, Prototypes

FAULT_KINDS = ("dropout", "hang", "crash", "slow", "bad_payload")  # assignment order
COMMON_KEYS = {"clients", "fraction", "rounds"}
EXTRA_KEYS = {"hang": {"seconds"}, "slow": {"seconds"}, "bad_payload": {"mode"}}
# bad_payload modes and the reason the server should reject them for
BAD_MODES = {
    "nan": "non_finite",
    "inf": "non_finite",
    "dtype": "dtype",
    "shape": "shape",
    "classes": "class_count",
    "indices": "index_range",  # public-set payloads only
    "kind": "wrong_kind",
    "oversize": "too_large",  # needs server.max_payload_bytes
}
CYCLE = ("nan", "dtype", "shape", "classes", "kind")  # mode "cycle": one per round
MARK = "injected fault"  # in every injected exception; the launcher keeps them off the console


class InjectedFault(RuntimeError):
    """What a client configured to fail raises."""


def _section(cfg: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return cfg["faults"][kind]


def faults_seed(cfg: Mapping[str, Any]) -> int:
    seed = cfg["faults"]["seed"]
    return int(cfg["seed"] if seed is None else seed)


def assignments(cfg: Mapping[str, Any]) -> dict[str, list[int]]:
    """Fault kind -> the clients that have it (disjoint, seeded; empty kinds left out).

    Every client asks this twice per round: cached per faults section, number of
    clients and seed (with 10,000 clients the set arithmetic was 17 % of a worker), and
    a run without faults (no kind names a client or a fraction) answers before the
    cache's key is even written (that key was 1 % of a small client's round).
    """
    if not any(
        _section(cfg, kind)["clients"] or float(_section(cfg, kind)["fraction"])
        for kind in FAULT_KINDS
    ):
        return {}
    key = json.dumps([cfg["faults"], int(cfg["num_clients"]), faults_seed(cfg)], sort_keys=True)
    return {kind: list(ids) for kind, ids in _assignments(key).items()}


@lru_cache(maxsize=8)
def _assignments(key: str) -> dict[str, tuple[int, ...]]:
    faults, num_clients, seed = json.loads(key)
    cfg = {"faults": faults, "num_clients": num_clients, "seed": seed}
    taken: set[int] = set()
    out: dict[str, tuple[int, ...]] = {}
    explicit = {k: [int(c) for c in _section(cfg, k)["clients"]] for k in FAULT_KINDS}
    for ids in explicit.values():
        taken.update(ids)
    for index, kind in enumerate(FAULT_KINDS):
        chosen = set(explicit[kind])
        count = int(round(float(_section(cfg, kind)["fraction"]) * num_clients))
        free = sorted(set(range(num_clients)) - taken) if count > 0 else []
        if free:
            rng = np.random.default_rng([seed, 7_000 + index])
            drawn = rng.choice(free, size=min(count, len(free)), replace=False)
            chosen.update(int(c) for c in drawn)
            taken.update(chosen)
        if chosen:
            out[kind] = tuple(sorted(chosen))
    return out


def fault_of(cfg: Mapping[str, Any], client_id: int, server_round: int) -> str | None:
    """The fault client ``client_id`` has in ``server_round``, if any."""
    for kind, ids in assignments(cfg).items():
        rounds = _section(cfg, kind)["rounds"]
        if client_id in ids and (rounds is None or server_round in rounds):
            return kind
    return None


def hang_seconds(cfg: Mapping[str, Any]) -> float:
    seconds = _section(cfg, "hang")["seconds"]
    return float(cfg["server"]["round_timeout"]) + 5.0 if seconds is None else float(seconds)


def before_round(cfg: Mapping[str, Any], client_id: int, server_round: int) -> str | None:
    """Apply the client's fault before it does anything: sleep, raise, or return the reason
    of a NODE_UNAVAILABLE reply (dropout); None: go on with the round."""
    kind = fault_of(cfg, client_id, server_round)
    if kind == "dropout":
        return f"{MARK}: node unavailable (faults.dropout, round {server_round})"
    if kind == "hang":
        time.sleep(hang_seconds(cfg))
        raise InjectedFault(
            f"{MARK}: hung past the round timeout (faults.hang, round {server_round})"
        )
    if kind == "crash":
        raise InjectedFault(f"{MARK}: crashed (faults.crash, round {server_round})")
    if kind == "slow":
        time.sleep(float(_section(cfg, "slow")["seconds"] or 0.0))
    return None


def bad_mode(cfg: Mapping[str, Any], server_round: int) -> str:
    mode = str(_section(cfg, "bad_payload")["mode"])
    return CYCLE[(server_round - 1) % len(CYCLE)] if mode == "cycle" else mode


def corrupt(
    cfg: Mapping[str, Any], server_round: int, kind: str, arrays: dict[str, np.ndarray], meta: dict
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A malformed copy of a payload's arrays and meta (``faults.bad_payload.mode``)."""
    mode = bad_mode(cfg, server_round)
    arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}
    meta = dict(meta)
    floats = [k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating)]
    value_key = floats[0] if floats else next(iter(arrays))
    if mode in ("nan", "inf"):
        arrays[value_key] = arrays[value_key].astype(np.float32)
        arrays[value_key].flat[0] = np.nan if mode == "nan" else np.inf
    elif mode == "dtype":
        arrays[value_key] = arrays[value_key].astype(np.float16)
    elif mode == "shape":
        arrays[value_key] = arrays[value_key][..., None]
    elif mode == "classes":  # the kind knows where its class axis is
        arrays = PAYLOADS.get(kind).with_extra_class(arrays)
    elif mode == "indices":
        arrays["indices"] = arrays["indices"] + 1_000_000
    elif mode == "kind":  # a well-formed payload of another kind
        decoy = Prototypes if kind == ClassLogits.kind else ClassLogits
        table = arrays[value_key]
        wrong = decoy(table, np.ones(len(table), np.int64))
        arrays, meta = wrong.to_arrays(), {"kind": wrong.kind}
    elif mode == "oversize":
        limit = int(cfg["server"]["max_payload_bytes"])
        arrays["padding"] = np.zeros(limit + 1, np.uint8)
    return arrays, meta


def check_faults(cfg: Mapping[str, Any]) -> None:
    """One-line ConfigError for any bad ``faults`` option; runs before Ray starts."""
    faults = cfg["faults"]
    if not isinstance(faults, Mapping):
        raise ConfigError(f"faults must be a mapping (got {faults!r})")
    unknown = set(faults) - {"seed", *FAULT_KINDS}
    if unknown:
        raise ConfigError(
            f"unknown faults kind(s) {', '.join(sorted(unknown))}; known: {', '.join(FAULT_KINDS)}"
        )
    missing = {"seed", *FAULT_KINDS} - set(faults)
    if missing:
        raise ConfigError(
            f"faults has no {', '.join(sorted(missing))}; configs/config.yaml sets every one"
        )
    seed = faults["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"faults.seed must be null or an integer >= 0 (got {seed!r})")
    num_clients = int(cfg["num_clients"])
    timeout = float(cfg["server"]["round_timeout"])
    total = 0.0
    for kind in FAULT_KINDS:
        section = faults[kind]
        where = f"faults.{kind}"
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where} must be a mapping (got {section!r})")
        keys = COMMON_KEYS | EXTRA_KEYS.get(kind, set())
        extra = set(section) - keys
        if extra:
            raise ConfigError(f"unknown option(s) {where}.{', '.join(sorted(extra))}")
        missing = keys - set(section)
        if missing:
            raise ConfigError(
                f"{where} has no {', '.join(sorted(missing))}; configs/config.yaml sets every one"
            )
        check_selection(section, where, num_clients)
        total += float(section["fraction"])
        rounds = section["rounds"]
        if rounds is not None and (
            isinstance(rounds, (str, bytes))
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in rounds)
        ):
            raise ConfigError(
                f"{where}.rounds must be null or a list of rounds >= 1 (got {rounds!r})"
            )
        seconds = section.get("seconds")  # hang and slow only
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0
        ):
            raise ConfigError(f"{where}.seconds must be a number >= 0 (got {seconds!r})")
    if total > 1.0 + 1e-9:
        raise ConfigError(f"the faults.*.fraction values add up to {total:g} > 1")
    hang = faults["hang"]["seconds"]
    if hang is not None and float(hang) <= timeout:
        raise ConfigError(
            f"faults.hang.seconds={hang} must exceed server.round_timeout={timeout:g} "
            "(a shorter sleep is faults.slow)"
        )
    slow = faults["slow"]["seconds"]
    if slow is not None and float(slow) >= timeout:
        raise ConfigError(
            f"faults.slow.seconds={slow} must be below server.round_timeout={timeout:g} "
            "(a longer sleep is faults.hang)"
        )
    mode = faults["bad_payload"]["mode"]
    if mode not in (*BAD_MODES, "cycle"):
        raise ConfigError(
            f"faults.bad_payload.mode must be one of {', '.join([*BAD_MODES, 'cycle'])} "
            f"(got {mode!r})"
        )
    if mode == "oversize" and cfg["server"]["max_payload_bytes"] is None:
        raise ConfigError("faults.bad_payload.mode=oversize needs server.max_payload_bytes")


def check_selection(section: Mapping[str, Any], where: str, num_clients: int) -> None:
    """``clients`` (ids in range) and ``fraction`` (in [0, 1]) of a fault or attack section."""
    fraction = section["fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ConfigError(f"{where}.fraction must be a number in [0, 1] (got {fraction!r})")
    if not 0.0 <= float(fraction) <= 1.0:
        raise ConfigError(f"{where}.fraction must be in [0, 1] (got {fraction})")
    clients = section["clients"]
    if isinstance(clients, (str, bytes)) or not all(
        isinstance(c, int) and not isinstance(c, bool) and 0 <= c < num_clients for c in clients
    ):
        raise ConfigError(
            f"{where}.clients must be a list of client ids in 0..{num_clients - 1} (got {clients!r})"
        )
