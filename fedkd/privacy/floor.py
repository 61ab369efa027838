"""A client's own privacy floor: the weakest plan it accepts (ours; docs/algorithms.md §5.2 B).

Under local DP the server is not trusted, yet it writes the plan that says how much noise
a client adds. The floor is the client's answer: its own policy, which a plan must meet or
the client refuses the round (an error reply naming why) and nothing it knows leaves.

- ``mechanisms``: the privacy modes whose release this client accepts: ``gaussian``,
  ``laplace`` (the client-side mod), ``subteachers`` (record-level), ``none`` (the
  client's knowledge leaves un-noised: ``privacy=none`` and ``privacy=central``, where
  the *server* adds the noise). Leave ``none`` out and the knowledge never leaves
  un-noised.
- ``min_noise_multiplier``: the least ``z`` (the mod's noise std or scale over its
  sensitivity ``2 clip``; sub-teachers: ``sigma shards / sqrt(2)``).
- ``max_clip``: the largest clip bound ``S`` of the mod (null: any).
- ``max_vote_epsilon``: the largest randomized-response epsilon per vote (null: any).
- seeded noise: refused unless the caller allows it (only a simulation whose own config
  says ``simulation.seeded_noise=true``, :mod:`fedkd.privacy.noise`).

A plan that extracts nothing releases no knowledge and meets every floor. Where the floor
comes from (node config in a deployment, the run config's ``privacy_floor`` section in a
simulation) is decided by the ClientApp (``clients/privacy_mod.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedkd.errors import ConfigError

MECHANISMS = ("none", "gaussian", "laplace", "subteachers")
# node config key -> floor field (a deployed SuperNode's --node-config)
NODE_KEYS = {
    "privacy-mechanisms": "mechanisms",
    "privacy-min-noise-multiplier": "min_noise_multiplier",
    "privacy-max-clip": "max_clip",
    "privacy-max-vote-epsilon": "max_vote_epsilon",
}


@dataclass(frozen=True)
class Floor:
    mechanisms: tuple[str, ...]
    min_noise_multiplier: float
    max_clip: float | None
    max_vote_epsilon: float | None

    @classmethod
    def from_section(cls, section: Mapping[str, Any], where: str = "privacy_floor") -> Floor:
        """From a ``privacy_floor`` mapping; one-line ConfigError naming ``where.key``."""
        if not isinstance(section, Mapping):
            raise ConfigError(f"{where} must be a mapping (got {section!r})")
        unknown = set(section) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown {where} option(s): {', '.join(sorted(unknown))}")
        missing = set(cls.__dataclass_fields__) - set(section)
        if missing:
            raise ConfigError(f"{where} needs {', '.join(sorted(missing))}")
        mechanisms = section["mechanisms"]
        if isinstance(mechanisms, str):  # node config: "gaussian,laplace"
            mechanisms = [m.strip() for m in mechanisms.split(",") if m.strip()]
        if not isinstance(mechanisms, (list, tuple)) or not mechanisms:
            raise ConfigError(f"{where}.mechanisms must be a non-empty list of {MECHANISMS}")
        bad = [m for m in mechanisms if m not in MECHANISMS]
        if bad:
            raise ConfigError(
                f"{where}.mechanisms: unknown {', '.join(map(str, bad))}; known: {', '.join(MECHANISMS)}"
            )
        z = _number(f"{where}.min_noise_multiplier", section["min_noise_multiplier"], 0.0)
        assert z is not None
        return cls(
            mechanisms=tuple(mechanisms),
            min_noise_multiplier=z,
            max_clip=_number(f"{where}.max_clip", section["max_clip"], None, positive=True),
            max_vote_epsilon=_number(
                f"{where}.max_vote_epsilon", section["max_vote_epsilon"], None, positive=True
            ),
        )

    @classmethod
    def from_node_config(cls, node: Mapping[str, Any], defaults: Mapping[str, Any]) -> Floor:
        """A SuperNode's floor: its node config keys (``NODE_KEYS``) over ``defaults``."""
        section = dict(defaults)
        for key, field in NODE_KEYS.items():
            if key in node:
                value = node[key]
                section[field] = (
                    None if value in ("", "null", "none") and field != "mechanisms" else value
                )
        return cls.from_section(section, where="node config")

    def refusal(self, plan: Mapping[str, Any], *, seeded_allowed: bool) -> str | None:
        """Why ``plan`` is weaker than this floor (one line), or None if it is not."""
        extract = plan.get("extract") or {"kind": "none"}
        kind = extract.get("kind", "none") if isinstance(extract, Mapping) else "none"
        if kind == "none":
            return None  # nothing released
        local, teachers = plan.get("privacy"), plan.get("teachers")
        seeded = any(
            isinstance(part, Mapping) and part.get("seeded") is True for part in (local, teachers)
        ) or (isinstance(extract, Mapping) and extract.get("swing_seeded") is True)
        if seeded and not seeded_allowed:
            return (
                "the plan asks for seeded noise, which anyone knowing the run config can subtract"
            )
        if isinstance(local, Mapping) and local:
            mechanism = str(local.get("mechanism"))
            if mechanism not in ("gaussian", "laplace"):
                return f"the plan's privacy mechanism {mechanism!r} is not one this client knows"
            if mechanism not in self.mechanisms:
                return f"privacy mechanism {mechanism} is not among the client's {list(self.mechanisms)}"
            if kind == "votes":
                eps = _plain(local.get("vote_epsilon"))
                if eps is None or eps <= 0:
                    return (
                        f"the plan's vote_epsilon {local.get('vote_epsilon')!r} is not a number > 0"
                    )
                if self.max_vote_epsilon is not None and eps > self.max_vote_epsilon:
                    return f"vote_epsilon {eps:g} exceeds the client's maximum {self.max_vote_epsilon:g}"
                return None
            z, clip = _plain(local.get("noise_multiplier")), _plain(local.get("clip"))
            if z is None or clip is None or clip <= 0:
                return "the plan's privacy entry has no valid noise_multiplier and clip"
            if z < self.min_noise_multiplier or z <= 0 and "none" not in self.mechanisms:
                return f"noise multiplier {z:g} is below the client's minimum {self.min_noise_multiplier:g}"
            if self.max_clip is not None and clip > self.max_clip:
                return f"clip {clip:g} exceeds the client's maximum {self.max_clip:g}"
            return None
        if isinstance(teachers, Mapping) and teachers:
            if "subteachers" not in self.mechanisms:
                return f"sub-teachers are not among the client's {list(self.mechanisms)}"
            sigma, shards = _plain(teachers.get("sigma")), _plain(teachers.get("shards"))
            if sigma is None or shards is None or shards < 1:
                return "the plan's teachers entry has no valid sigma and shards"
            z = sigma * shards / math.sqrt(2.0)
            if z < self.min_noise_multiplier or z <= 0 and "none" not in self.mechanisms:
                return f"noise multiplier {z:g} is below the client's minimum {self.min_noise_multiplier:g}"
            return None
        if "none" not in self.mechanisms:
            return (
                f"the plan releases the client's {kind} un-noised; the client accepts only "
                f"{list(self.mechanisms)}"
            )
        return None


def _plain(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _number(name: str, value: Any, default: float | None, positive: bool = False) -> float | None:
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{name} must be a number (got {value!r})") from None
    number = _plain(value)
    if number is None or number < 0 or (positive and number == 0):
        raise ConfigError(f"{name} must be a number {'>' if positive else '>='} 0 (got {value!r})")
    return number
