"""The plan: a strategy's instructions to its clients for one round (typed, Flower-free).

A strategy's ``plan(round)`` returns a :class:`Plan`; the server sends ``Plan.to_dict()``
as JSON in the message's ``config`` record (``protocol.wire.make_config``) and the client
rebuilds it with :meth:`Plan.from_dict` (``protocol.wire.read_config``), which refuses an
unknown key, a missing one or a value of the wrong type with a one-line
:class:`~fedkd.errors.PlanError` naming it: a malformed plan gets an error reply, never a
silently ignored instruction. :func:`fedkd.client.round.run_round` executes it.

Order inside a round: load -> [evaluate received] -> distil (before) -> train
(+ regulariser, or the FedKA adaptation) -> [extract, if at after_train] -> distil (after)
-> evaluate -> [extract, if at end].
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Union

from fedkd.errors import ConfigError

NONE = "none"  # ExtractSpec.kind: nothing is uploaded


class PlanError(ConfigError):
    """A plan that does not parse: unknown key, missing key or wrong type (one line)."""


@dataclass(frozen=True)
class DistillSpec:
    """Fit received public-set targets (``PublicLogits``) before or after local training.

    The budget is ``epochs`` passes, or exactly ``steps`` optimiser steps when given
    (:mod:`fedkd.schedule`; 0: none this round). ``optimizer``: None uses
    ``client.optimizer``. ``ce_weight`` adds CE on private batches, ``kd_weight`` scales the
    distillation term; ``loss`` is a :data:`fedkd.losses.LOSSES` name.
    """

    loss: str
    batch_size: int
    when: str = "before"  # "before" | "after" local training
    temperature: float = 1.0
    epochs: int = 1
    steps: int | None = None
    optimizer: dict[str, Any] | None = None
    ce_weight: float = 0.0
    kd_weight: float = 1.0

    def __post_init__(self) -> None:
        _choice("distill.when", self.when, ("before", "after"))

    def takes_steps(self) -> bool:
        """Whether it takes any step this round (a warm-up round takes none)."""
        return (self.epochs if self.steps is None else self.steps) > 0


@dataclass(frozen=True)
class RegulariserSpec:
    """``beta * loss(output(x), table[y])`` added to CE, with ``table`` the received per-class
    payload of ``kind`` (FD: logits, FedProto: prototypes; the kind's ``collects`` says
    which output)."""

    kind: str
    loss: str
    beta: float
    temperature: float = 1.0


@dataclass(frozen=True)
class AdaptSpec:
    """FedKA's adaptation on (private source, public target) batches (``fedkd.adaptation``)."""

    method: str
    batches: int
    batch_size: int
    optimizer: dict[str, Any]
    gamma: float
    mmd_every: int
    mmd_accumulate: str
    kernel_mul: float
    kernel_num: int
    domain_hidden: int
    round_index: int
    num_rounds: int


@dataclass(frozen=True)
class ExtractSpec:
    """What the client uploads: a :data:`fedkd.knowledge.PAYLOADS` kind, or ``none``.

    ``space`` / ``temperature``: public-set values as logits or softmax probabilities;
    ``top_k``: votes per sample; ``at``: after the round (``end``) or right after local
    training (``after_train``); ``swing``: Swing soft targets (``fedkd.privacy.swing``,
    ``SwingSpec`` fields), seeded from the round's generator with ``swing_seeded``.
    """

    kind: str = NONE
    space: str = "logits"
    temperature: float = 1.0
    top_k: int = 1
    at: str = "end"
    swing: dict[str, Any] | None = None
    swing_seeded: bool = False

    def __post_init__(self) -> None:
        _choice("extract.at", self.at, ("end", "after_train"))
        _choice("extract.space", self.space, ("logits", "probs"))


@dataclass(frozen=True)
class PrivacySpec:
    """Local noise the client's privacy mod applies (``fedkd.privacy.release.LocalSpec``
    fields) and whether it is seeded (``fedkd.privacy.noise``)."""

    mechanism: str
    noise_multiplier: float
    clip: float
    row_clip: float | None = None
    vote_epsilon: float | None = None
    num_classes: int | None = None
    seeded: bool = False


@dataclass(frozen=True)
class TeachersSpec:
    """Sub-teacher release (``clients/subteachers.py``): ``shards`` models, noise ``sigma``."""

    shards: int
    sigma: float
    seeded: bool = False


@dataclass(frozen=True)
class Plan:
    """One round's instructions (see the module docstring for the order)."""

    load_weights: bool = False  # replace the model by the received weights (FedAvg, FedDF)
    eval_received: bool = False  # evaluate the received weights before training
    train_epochs: int | None = None  # private epochs instead of client.epochs (FedMD)
    distill: DistillSpec | None = None
    regulariser: RegulariserSpec | None = None
    evaluate_prototypes: bool = False  # nearest-received-prototype accuracy (FedProto)
    adapt: AdaptSpec | None = None  # FedKA instead of plain local training
    confusion: bool = False  # global-test confusion counts (added by the base strategy)
    extract: ExtractSpec = field(default_factory=ExtractSpec)
    privacy: PrivacySpec | None = None  # local DP (added by the base strategy)
    teachers: TeachersSpec | None = None  # sub-teachers (added by the base strategy)

    def to_dict(self) -> dict[str, Any]:
        """The wire form (JSON-ready; ``from_dict`` inverts it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        """The plan ``data`` describes; PlanError naming the first bad key."""
        return _build(cls, data, "plan")

    def with_(self, **changes: Any) -> Plan:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------ parsing
def _choice(where: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PlanError(f"{where} must be one of {', '.join(allowed)} (got {value!r})")


@cache
def _fields(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """(type hints, fields) of a plan class, resolved once per class: ``get_type_hints``
    evaluates every annotation string anew on each call, and a client rebuilds a plan
    per message."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise PlanError(f"{where} must be a mapping (got {type(data).__name__})")
    hints, fields = _fields(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PlanError(f"unknown key {where}.{unknown[0]}; known: {', '.join(sorted(fields))}")
    values = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise PlanError(f"{where}.{name} is missing")
            continue
        values[name] = _value(hints[name], data[name], f"{where}.{name}")
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    base = typing.get_origin(hint) or hint
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base is str:
        ok = isinstance(value, str)
    elif base is dict:
        ok = isinstance(value, Mapping)
        value = dict(value) if ok else value
    else:  # pragma: no cover - every field's type is one of the above
        raise TypeError(f"{where}: unsupported plan field type {hint!r}")
    if not ok:
        raise PlanError(f"{where} must be {base.__name__} (got {value!r})")
    return value
