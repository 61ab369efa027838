"""Typed knowledge payloads exchanged between clients and server (see docs/algorithms.md §0).

Each payload is a frozen dataclass that converts to and from a flat
``dict[str, np.ndarray]`` plus small scalar ``meta`` (what a Flower ``ArrayRecord`` /
``ConfigRecord`` pair carries) and validates itself with a one-line
:class:`~fedkd.errors.PayloadError` naming what is wrong. Nothing is ever converted
silently: a payload's value space (logits or probabilities) travels in ``meta`` and
dtypes are checked, not cast (pitfall 1).

- :class:`PublicLogits`: values on indexed public samples (FedMD logits; DS-FL / KnFu
  probabilities).
- :class:`ClassLogits`: FD per-label mean logits + label counts (Jeong et al. 2018).
- :class:`Prototypes`: FedProto per-class mean features + counts (Tan et al. 2022).
- :class:`ModelWeights`: named parameter arrays for weight-sharing baselines (FedAvg).

Choices that are ours: the array key names, accepting float32 *or* float64 values and any
integer dtype for indices/counts, the 1e-3 row-sum tolerance for probabilities, and
requiring rows with count 0 to be finite (they are ignored by fusion, not by validation).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from fedkd.errors import PayloadError
from fedkd.registry import Registry

__all__ = [
    "PAYLOADS",
    "ClassLogits",
    "ModelWeights",
    "Payload",
    "Prototypes",
    "PublicLogits",
    "decode",
]

SPACES = ("logits", "probs")
PROB_TOLERANCE = 1e-3
_FLOATS = (np.float32, np.float64)

P = TypeVar("P", bound="Payload")
PAYLOADS: Registry[type[Payload]] = Registry("payload")


# ---------------------------------------------------------------- checks
def _array(where: str, value: Any) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise PayloadError(f"{where}: expected a numpy array, got {type(value).__name__}", "dtype")
    return value


def _float_array(where: str, value: Any, ndim: int) -> np.ndarray:
    arr = _array(where, value)
    if arr.ndim != ndim:
        raise PayloadError(
            f"{where}: expected {ndim}-D array, got shape {list(arr.shape)}", "shape"
        )
    if arr.dtype not in _FLOATS:
        raise PayloadError(f"{where}: dtype must be float32 or float64, got {arr.dtype}", "dtype")
    if not np.all(np.isfinite(arr)):
        raise PayloadError(f"{where}: contains NaN or Inf", "non_finite")
    return arr


def _int_array(where: str, value: Any, ndim: int) -> np.ndarray:
    arr = _array(where, value)
    if arr.ndim != ndim:
        raise PayloadError(
            f"{where}: expected {ndim}-D array, got shape {list(arr.shape)}", "shape"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise PayloadError(f"{where}: dtype must be an integer type, got {arr.dtype}", "dtype")
    return arr


def _check_indices(kind: str, idx: np.ndarray, num_public: int | None) -> None:
    """Public-set indices: in range and unique."""
    if idx.size and (idx.min() < 0 or (num_public is not None and idx.max() >= num_public)):
        bound = "num_public" if num_public is None else num_public
        raise PayloadError(
            f"{kind}.indices: out of range [0, {bound}): {idx.min()}..{idx.max()}", "index_range"
        )
    if np.unique(idx).size != idx.size:
        raise PayloadError(f"{kind}.indices: contains duplicates", "index_range")


def _check_counts(where: str, counts: np.ndarray, num_classes: int) -> None:
    if counts.shape[0] != num_classes:
        raise PayloadError(
            f"{where}: expected {num_classes} classes, got {counts.shape[0]}", "class_count"
        )
    if np.any(counts < 0):
        raise PayloadError(
            f"{where}: counts must be non-negative, got min {counts.min()}", "value_range"
        )


def _check_keys(kind: str, what: str, got: Mapping[str, Any], expected: set[str]) -> None:
    missing, extra = expected - set(got), set(got) - expected
    if missing:
        raise PayloadError(f"{kind}: missing {what} key(s) {sorted(missing)}", "malformed")
    if extra:
        raise PayloadError(f"{kind}: unexpected {what} key(s) {sorted(extra)}", "malformed")


# ---------------------------------------------------------------- base
@dataclass(frozen=True, eq=False)
class Payload:
    """Common interface; subclasses set ``kind`` and implement the abstract methods."""

    kind: ClassVar[str] = ""

    def to_arrays(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def meta(self) -> dict[str, str | int | float]:
        return {}

    @classmethod
    def from_arrays(cls: type[P], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> P:
        raise NotImplementedError

    def validate(
        self,
        *,
        num_classes: int,
        num_public: int | None = None,
        feature_dim: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of array data this payload puts on the wire (meta excluded)."""
        return int(sum(a.nbytes for a in self.to_arrays().values()))

    def _check_bytes(self, max_bytes: int | None) -> None:
        if max_bytes is not None and self.nbytes > max_bytes:
            raise PayloadError(
                f"{self.kind}: {self.nbytes} bytes exceeds max_bytes={max_bytes}", "too_large"
            )


# ---------------------------------------------------------------- payloads
@PAYLOADS.register("public_logits")
@dataclass(frozen=True, eq=False)
class PublicLogits(Payload):
    """Values ``[N, C]`` on public samples ``indices [N]``; ``space`` is logits or probs.

    ``temperatures [N]`` (optional, > 0): per-sample distillation temperatures (Swing,
    :mod:`fedkd.privacy.swing`); absent for every other method.
    """

    kind: ClassVar[str] = "public_logits"
    indices: np.ndarray
    values: np.ndarray
    space: str
    temperatures: np.ndarray | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {"indices": self.indices, "values": self.values}
        if self.temperatures is not None:
            arrays["temperatures"] = self.temperatures
        return arrays

    def meta(self) -> dict[str, str | int | float]:
        return {"space": self.space}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> PublicLogits:
        expected = {"indices", "values"} | ({"temperatures"} & set(arrays))
        _check_keys(cls.kind, "array", arrays, expected)
        _check_keys(cls.kind, "meta", meta, {"space"})
        if meta["space"] not in SPACES:
            raise PayloadError(
                f"{cls.kind}: space must be one of {SPACES}, got {meta['space']!r}", "malformed"
            )
        return cls(
            indices=arrays["indices"],
            values=arrays["values"],
            space=str(meta["space"]),
            temperatures=arrays.get("temperatures"),
        )

    def validate(
        self,
        *,
        num_classes: int,
        num_public: int | None = None,
        feature_dim: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        k = self.kind
        if self.space not in SPACES:
            raise PayloadError(
                f"{k}: space must be one of {SPACES}, got {self.space!r}", "malformed"
            )
        idx = _int_array(f"{k}.indices", self.indices, 1)
        values = _float_array(f"{k}.values", self.values, 2)
        if values.shape[0] != idx.shape[0]:
            raise PayloadError(
                f"{k}: {values.shape[0]} value rows but {idx.shape[0]} indices", "shape"
            )
        if values.shape[1] != num_classes:
            raise PayloadError(
                f"{k}.values: expected {num_classes} classes, got {values.shape[1]}", "class_count"
            )
        _check_indices(k, idx, num_public)
        if self.temperatures is not None:
            temps = _float_array(f"{k}.temperatures", self.temperatures, 1)
            if temps.shape[0] != idx.shape[0]:
                raise PayloadError(
                    f"{k}: {temps.shape[0]} temperatures but {idx.shape[0]} indices", "shape"
                )
            if temps.size and temps.min() <= 0:
                raise PayloadError(
                    f"{k}.temperatures: must be > 0, got min {temps.min()}", "value_range"
                )
        if self.space == "probs":
            if values.size and (values.min() < 0 or values.max() > 1):
                raise PayloadError(f"{k}.values: probabilities outside [0, 1]", "value_range")
            err = np.abs(values.sum(axis=1) - 1.0)
            if err.size and err.max() > PROB_TOLERANCE:
                raise PayloadError(
                    f"{k}.values: probability rows must sum to 1 (max error {err.max():.3g})",
                    "value_range",
                )
        self._check_bytes(max_bytes)


@PAYLOADS.register("votes")
@dataclass(frozen=True, eq=False)
class Votes(Payload):
    """Class votes ``[N, k]`` (top-k, best first; -1 = abstain) on public samples ``indices [N]``.

    Alignment voting (FedKA-style federated voting, PATE teachers): a client
    reveals only labels, not scores.
    """

    kind: ClassVar[str] = "votes"
    indices: np.ndarray
    votes: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"indices": self.indices, "votes": self.votes}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Votes:
        _check_keys(cls.kind, "array", arrays, {"indices", "votes"})
        _check_keys(cls.kind, "meta", meta, set())
        return cls(indices=arrays["indices"], votes=arrays["votes"])

    def validate(
        self,
        *,
        num_classes: int,
        num_public: int | None = None,
        feature_dim: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        k = self.kind
        idx = _int_array(f"{k}.indices", self.indices, 1)
        votes = _int_array(f"{k}.votes", self.votes, 2)
        if votes.shape[0] != idx.shape[0]:
            raise PayloadError(
                f"{k}: {votes.shape[0]} vote rows but {idx.shape[0]} indices", "shape"
            )
        if votes.size and (votes.min() < -1 or votes.max() >= num_classes):
            raise PayloadError(
                f"{k}.votes: class ids must be in [-1, {num_classes}), got {votes.min()}..{votes.max()}",
                "value_range",
            )
        _check_indices(k, idx, num_public)
        self._check_bytes(max_bytes)


@dataclass(frozen=True, eq=False)
class _PerClass(Payload):
    """Shared logic for per-class payloads: one ``[C, D]`` value array + ``counts [C]``."""

    _value_key: ClassVar[str] = ""

    def _values(self) -> np.ndarray:
        return getattr(self, self._value_key)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {self._value_key: self._values(), "counts": self.counts}

    @classmethod
    def from_arrays(cls: type[P], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> P:
        key = cls._value_key  # type: ignore[attr-defined]
        _check_keys(cls.kind, "array", arrays, {key, "counts"})
        _check_keys(cls.kind, "meta", meta, set())
        return cls(**{key: arrays[key], "counts": arrays["counts"]})

    def _validate_per_class(self, num_classes: int, width: int | None, width_name: str) -> None:
        where = f"{self.kind}.{self._value_key}"
        values = _float_array(where, self._values(), 2)
        counts = _int_array(f"{self.kind}.counts", self.counts, 1)
        if values.shape[0] != num_classes:
            raise PayloadError(
                f"{where}: expected {num_classes} class rows, got {values.shape[0]}", "class_count"
            )
        if width is not None and values.shape[1] != width:
            raise PayloadError(
                f"{where}: expected {width_name}={width}, got {values.shape[1]}", "shape"
            )
        _check_counts(f"{self.kind}.counts", counts, num_classes)


@PAYLOADS.register("class_logits")
@dataclass(frozen=True, eq=False)
class ClassLogits(_PerClass):
    """FD per-label mean logits ``[C, C]`` (row ℓ = mean logits of samples labelled ℓ)."""

    kind: ClassVar[str] = "class_logits"
    _value_key: ClassVar[str] = "logits"
    logits: np.ndarray
    counts: np.ndarray

    def validate(
        self,
        *,
        num_classes: int,
        num_public: int | None = None,
        feature_dim: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self._validate_per_class(num_classes, num_classes, "num_classes")
        self._check_bytes(max_bytes)


@PAYLOADS.register("prototypes")
@dataclass(frozen=True, eq=False)
class Prototypes(_PerClass):
    """FedProto per-class mean features ``[C, d]``; rows with count 0 are ignored."""

    kind: ClassVar[str] = "prototypes"
    _value_key: ClassVar[str] = "prototypes"
    prototypes: np.ndarray
    counts: np.ndarray

    def validate(
        self,
        *,
        num_classes: int,
        num_public: int | None = None,
        feature_dim: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self._validate_per_class(num_classes, feature_dim, "feature_dim")
        self._check_bytes(max_bytes)


@PAYLOADS.register("model_weights")
@dataclass(frozen=True, eq=False)
class ModelWeights(Payload):
    """Named model arrays (FedAvg-style baselines); dtype (float or int), finiteness and size
    are checked here, names and shapes against the architecture by the strategy."""

    kind: ClassVar[str] = "model_weights"
    arrays: dict[str, np.ndarray]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return dict(self.arrays)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> ModelWeights:
        _check_keys(cls.kind, "meta", meta, set())
        return cls(arrays=dict(arrays))

    def validate(
        self,
        *,
        num_classes: int,
        num_public: int | None = None,
        feature_dim: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        if not self.arrays:
            raise PayloadError(f"{self.kind}: no arrays", "shape")
        for name, value in self.arrays.items():
            arr = _array(f"{self.kind}.{name}", value)
            if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                raise PayloadError(
                    f"{self.kind}.{name}: dtype must be a float or integer type, got {arr.dtype}",
                    "dtype",
                )
            if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
                raise PayloadError(f"{self.kind}.{name}: contains NaN or Inf", "non_finite")
        self._check_bytes(max_bytes)


def decode(kind: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Payload:
    """Rebuild the payload of type ``kind`` from its arrays and meta (not validated)."""
    if kind not in PAYLOADS:
        raise PayloadError(
            f"unknown payload kind '{kind}'; known: {', '.join(PAYLOADS.names())}", "malformed"
        )
    return PAYLOADS.get(kind).from_arrays(arrays, meta)
