"""When and how much a client distils: budgets in optimiser steps, warm-up and ramp.

A public-set method's ``strategy.distill`` section (``configs/strategy/<name>.yaml``)
gives the budget of one round as a number of optimiser steps with its own optimiser,
so the amount of distillation does not depend on the public set's size nor on local
training's optimiser. Two options keep early, noisy knowledge out of the clients:

- ``start_round``: the first round whose clients distil. Knowledge of the rounds
  before is still uploaded, fused and measured (distillation health), only not used.
  It plays the part of FedMD's "train to convergence before collaboration" phase and
  of the warm-up DS-FL's reimplementations use; the name and the mechanism are ours.
- ``ramp_rounds``: over this many rounds from ``start_round`` the round's step
  budget grows linearly to ``steps`` (``ceil(steps * j / ramp_rounds)`` in the j-th
  distilling round). Ours: a ramp on the loss weight would be a no-op with Adam, which
  normalises the gradient's scale, so the ramp is on the number of steps.

See ``docs/methods.md`` for each method's budget and where it differs from its paper.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fedkd.errors import ConfigError

KEYS = ("steps", "batch_size", "optimizer", "start_round", "ramp_rounds")


def transfer_steps(server_round: int, steps: int, start_round: int, ramp_rounds: int) -> int:
    """Optimiser steps of distillation in ``server_round`` (0 before ``start_round``)."""
    if server_round < start_round or steps <= 0:
        return 0
    if ramp_rounds <= 0:
        return steps
    done = server_round - start_round + 1  # distilling rounds so far, this one included
    return min(steps, math.ceil(steps * done / ramp_rounds))


def _int(section: Mapping[str, Any], key: str, where: str, minimum: int) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}.{key} must be an int >= {minimum} (got {value!r})")
    return value


def check_budget(section: Any, where: str) -> None:
    """One-line ConfigError naming the key if a ``distill`` section is unusable."""
    if not isinstance(section, Mapping):
        raise ConfigError(
            f"{where} must be a mapping with keys {', '.join(KEYS)} (got {section!r})"
        )
    unknown = sorted(set(section) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} in {where}; known: {', '.join(KEYS)}"
        )
    missing = [k for k in KEYS if k not in section]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}")
    _int(section, "steps", where, 0)
    _int(section, "batch_size", where, 1)
    _int(section, "start_round", where, 1)
    _int(section, "ramp_rounds", where, 0)
    optimizer = section["optimizer"]
    if not isinstance(optimizer, Mapping) or "name" not in optimizer:
        raise ConfigError(
            f"{where}.optimizer must be a mapping with a 'name', e.g. {{name: adam, lr: 0.001}} "
            f"(got {optimizer!r})"
        )


def round_budget(section: Mapping[str, Any], server_round: int) -> dict[str, Any]:
    """The plan's distillation entries for ``server_round``: steps, batch size, optimiser."""
    return {
        "steps": transfer_steps(
            server_round,
            int(section["steps"]),
            int(section["start_round"]),
            int(section["ramp_rounds"]),
        ),
        "batch_size": int(section["batch_size"]),
        "optimizer": dict(section["optimizer"]),
    }
