"""The payload interface every knowledge kind implements (see docs/algorithms.md §0).

A payload kind is one frozen dataclass in its own file under ``fedkd/knowledge/``,
registered in :data:`PAYLOADS`. It knows everything the generic paths ask of it:

- the wire: ``to_arrays`` / ``meta`` / ``from_arrays`` (a Flower ``ArrayRecord`` /
  ``ConfigRecord`` pair) and ``score_key`` (the ``[N, C]`` score table a top-k encoding
  may sparsify and a lossy decode renormalises; :mod:`fedkd.encoding`);
- validation: ``validate`` raises a one-line :class:`~fedkd.errors.PayloadError`;
- privacy: ``privatize(release)`` noises its arrays through the mechanism's
  :class:`Release` (:mod:`fedkd.privacy.release`), ``releases`` is how many noisy
  releases one upload is for the ledger, ``label_release`` marks labels released by
  randomized response;
- attacks (:mod:`fedkd.client.attacks`): ``attacks`` names those that apply, and
  ``randomized`` / ``relabelled`` / ``scaled`` / ``claiming`` build the hostile copy;
- faults (:mod:`fedkd.client.faults`): ``with_extra_class`` adds one class to its
  arrays (the ``classes`` bad-payload mode);
- extraction (:mod:`fedkd.client.round`): ``extract(source, spec)`` builds the
  payload from a client's round, ``collects`` says what training must sum per label.

Nothing is ever converted silently: a payload's value space (logits or
probabilities) travels in ``meta`` and dtypes are checked, not cast.

Choices that are ours: the array key names, accepting float32 *or* float64 values and any
integer dtype for indices/counts, the 1e-3 row-sum tolerance for probabilities, and
requiring rows with count 0 to be finite (they are ignored by fusion, not by validation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np

from fedkd.errors import ConfigError, PayloadError
from fedkd.registry import Registry

if TYPE_CHECKING:
    import torch

SPACES = ("logits", "probs")
PROB_TOLERANCE = 1e-3
_FLOATS = (np.float32, np.float64)
ATTACKS = ("random_logits", "label_flip", "scale", "stale", "count_claim")

P = TypeVar("P", bound="Payload")
PAYLOADS: Registry[type[Payload]] = Registry("payload")


# ---------------------------------------------------------------- checks
def check_array(where: str, value: Any, ndim: int | None = None) -> np.ndarray:
    """``value`` as a numpy array (of ``ndim`` dimensions when given), else a PayloadError."""
    if not isinstance(value, np.ndarray):
        raise PayloadError(f"{where}: expected a numpy array, got {type(value).__name__}", "dtype")
    if ndim is not None and value.ndim != ndim:
        raise PayloadError(
            f"{where}: expected {ndim}-D array, got shape {list(value.shape)}", "shape"
        )
    return value


def float_array(where: str, value: Any, ndim: int) -> np.ndarray:
    arr = check_array(where, value, ndim)
    if arr.dtype not in _FLOATS:
        raise PayloadError(f"{where}: dtype must be float32 or float64, got {arr.dtype}", "dtype")
    if not np.all(np.isfinite(arr)):
        raise PayloadError(f"{where}: contains NaN or Inf", "non_finite")
    return arr


def int_array(where: str, value: Any, ndim: int) -> np.ndarray:
    arr = check_array(where, value, ndim)
    if not np.issubdtype(arr.dtype, np.integer):
        raise PayloadError(f"{where}: dtype must be an integer type, got {arr.dtype}", "dtype")
    return arr


def check_indices(kind: str, idx: np.ndarray, num_public: int | None) -> None:
    """Public-set indices: in range and unique."""
    if idx.size and (idx.min() < 0 or (num_public is not None and idx.max() >= num_public)):
        bound = "num_public" if num_public is None else num_public
        raise PayloadError(
            f"{kind}.indices: out of range [0, {bound}): {idx.min()}..{idx.max()}", "index_range"
        )
    if np.unique(idx).size != idx.size:
        raise PayloadError(f"{kind}.indices: contains duplicates", "index_range")


def check_counts(where: str, counts: np.ndarray, num_classes: int) -> None:
    if counts.shape[0] != num_classes:
        raise PayloadError(
            f"{where}: expected {num_classes} classes, got {counts.shape[0]}", "class_count"
        )
    if np.any(counts < 0):
        raise PayloadError(
            f"{where}: counts must be non-negative, got min {counts.min()}", "value_range"
        )


def check_keys(kind: str, what: str, got: Mapping[str, Any], expected: set[str]) -> None:
    missing, extra = expected - set(got), set(got) - expected
    if missing:
        raise PayloadError(f"{kind}: missing {what} key(s) {sorted(missing)}", "malformed")
    if extra:
        raise PayloadError(f"{kind}: unexpected {what} key(s) {sorted(extra)}", "malformed")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row softmax (float64 in, float64 out)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------- what kinds are given
class Release(Protocol):
    """A local privacy mechanism as a kind sees it (:class:`fedkd.privacy.release.LocalRelease`)."""

    def values(self, values: np.ndarray) -> np.ndarray:
        """``values`` clipped and noised (float64), sensitivity ``2S`` under replace-one."""
        ...

    def counts(self, counts: np.ndarray) -> np.ndarray:
        """Label counts released as a noised histogram on a fixed integer scale (int64)."""
        ...

    def labels(self, labels: np.ndarray) -> np.ndarray:
        """Top-1 class labels through k-ary randomized response."""
        ...


@dataclass(frozen=True)
class Source:
    """What a client's round offers a kind to extract from (:mod:`fedkd.client.round`).

    ``model_arrays()``: the client's model (plus FedKA's domain head) as named arrays;
    ``class_means()`` / ``class_counts``: per-label means and counts of what training
    collected (``collects``); ``public_logits()``: the model's logits (a torch tensor) on the
    requested public samples ``request_indices`` (PayloadError when none were sent).
    """

    model_arrays: Callable[[], dict[str, np.ndarray]]
    class_means: Callable[[], np.ndarray]
    class_counts: np.ndarray | None
    public_logits: Callable[[], torch.Tensor]
    request_indices: np.ndarray | None


# ---------------------------------------------------------------- base
@dataclass(frozen=True, eq=False)
class Payload:
    """Common interface; subclasses set ``kind`` and implement the methods they support."""

    kind: ClassVar[str] = ""
    score_key: ClassVar[str | None] = None  # the [N, C] score table (top-k, renormalising)
    collects: ClassVar[str | None] = None  # "logits" | "features": training's per-label sums
    releases: ClassVar[int] = 1  # noisy releases one upload costs (privacy ledger)
    label_release: ClassVar[bool] = False  # released through randomized response (votes)
    attacks: ClassVar[tuple[str, ...]] = ()  # attack kinds that apply (fedkd.client.attacks)

    # ------------------------------------------------------------ the wire
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

    # ------------------------------------------------------------ extraction
    @classmethod
    def extract(cls: type[P], source: Source, spec: Any) -> P:
        """This kind's knowledge from a client's round (``spec``: the plan's ExtractSpec)."""
        raise PayloadError(f"a client cannot extract '{cls.kind}' payloads")

    # ------------------------------------------------------------ privacy
    def privatize(self: P, release: Release) -> P:
        """The payload a client may release through ``release`` (a new object)."""
        raise PayloadError(f"the privacy mod cannot release a '{self.kind}' payload")

    # ------------------------------------------------------------ attacks
    def randomized(self: P, rng: np.random.Generator, magnitude: float, num_classes: int) -> P:
        """``random_logits``: random values of the payload's shape."""
        raise self._cannot("random_logits")

    def relabelled(self: P, pi: np.ndarray) -> P:
        """``label_flip``: the knowledge of class ``c`` filed under ``pi(c)``."""
        raise self._cannot("label_flip")

    def scaled(self: P, factor: float) -> P:
        """``scale``: values multiplied by ``factor``."""
        raise self._cannot("scale")

    def claiming(self: P, count: int) -> P:
        """``count_claim``: honest values, label counts (if any) claim ``count`` samples."""
        return self

    def _cannot(self, attack: str) -> ConfigError:
        return ConfigError(f"attack.kind={attack} cannot attack {self.kind} payloads")

    # ------------------------------------------------------------ faults
    def bounded_arrays(self) -> list[tuple[str, np.ndarray, str]]:
        """``(where, array, Bounds field)`` for each array whose absolute values the server
        bounds (:func:`fedkd.bounds.check_magnitude`); kinds bounded by construction
        (probabilities, labels) return none."""
        return []

    def clip_blocks(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``name -> (rows [R, D], mask [R])`` that robust fusion may clip towards the
        clients' median row (:func:`fedkd.bounds.clip_uploads`); none by default."""
        return {}

    def with_blocks(self: P, blocks: Mapping[str, np.ndarray]) -> P:
        """A copy with the named blocks of :meth:`clip_blocks` replaced by clipped rows."""
        raise self._cannot("clip")

    @classmethod
    def with_extra_class(cls, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Arrays of this kind claiming one class more than the run has (a malformed copy)."""
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class PerClass(Payload):
    """Shared logic for per-class payloads: one ``[C, D]`` value array + ``counts [C]``.

    Training collects the per-label means (``collects``); the table doubles as a per-label
    teacher for the round's regulariser (``table``); a per-class table and its counts are two
    noisy releases.
    """

    value_key: ClassVar[str] = ""
    releases: ClassVar[int] = 2
    attacks: ClassVar[tuple[str, ...]] = ATTACKS

    def table(self) -> np.ndarray:
        """The ``[C, D]`` per-class values."""
        return getattr(self, self.value_key)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {self.value_key: self.table(), "counts": self.counts}

    @classmethod
    def from_arrays(cls: type[P], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> P:
        key = cls.value_key  # type: ignore[attr-defined]
        check_keys(cls.kind, "array", arrays, {key, "counts"})
        check_keys(cls.kind, "meta", meta, set())
        return cls(**{key: arrays[key], "counts": arrays["counts"]})

    def _rebuild(self: P, values: np.ndarray, counts: np.ndarray) -> P:
        return type(self)(**{self.value_key: values, "counts": counts})

    width_of: ClassVar[str] = "num_classes"  # what the table's width must equal

    def validate(
        self,
        *,
        num_classes: int,
        num_public: int | None = None,
        feature_dim: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        width = num_classes if self.width_of == "num_classes" else feature_dim
        self._validate_per_class(num_classes, width, self.width_of)
        self._check_bytes(max_bytes)

    def _validate_per_class(self, num_classes: int, width: int | None, width_name: str) -> None:
        where = f"{self.kind}.{self.value_key}"
        values = float_array(where, self.table(), 2)
        counts = int_array(f"{self.kind}.counts", self.counts, 1)
        if values.shape[0] != num_classes:
            raise PayloadError(
                f"{where}: expected {num_classes} class rows, got {values.shape[0]}", "class_count"
            )
        if width is not None and values.shape[1] != width:
            raise PayloadError(
                f"{where}: expected {width_name}={width}, got {values.shape[1]}", "shape"
            )
        check_counts(f"{self.kind}.counts", counts, num_classes)

    @classmethod
    def extract(cls, source: Source, spec: Any):
        return cls(**{cls.value_key: source.class_means(), "counts": source.class_counts})

    def privatize(self, release: Release):
        return self._rebuild(
            release.values(self.table()).astype(np.float32), release.counts(self.counts)
        )

    def randomized(self, rng, magnitude, num_classes):
        values = self.table()
        return self._rebuild(
            (rng.standard_normal(values.shape) * magnitude).astype(values.dtype), self.counts
        )

    def relabelled(self, pi):
        values = self.table()
        rows, counts = np.empty_like(values), np.empty_like(self.counts)
        rows[pi], counts[pi] = values, self.counts  # class c's knowledge filed under pi(c)
        return self._rebuild(rows, counts)

    def scaled(self, factor):
        values = self.table()
        return self._rebuild((values * factor).astype(values.dtype), self.counts)

    def claiming(self, count):
        return self._rebuild(self.table(), np.where(self.counts > 0, count, 0).astype(np.int64))

    def bounded_arrays(self):
        return [(f"{self.kind}.{self.value_key}", self.table(), self.value_key)]

    def clip_blocks(self):
        return {self.value_key: (self.table(), self.counts > 0)}

    def with_blocks(self, blocks):
        return self._rebuild(blocks[self.value_key].astype(np.float32), self.counts)

    @classmethod
    def with_extra_class(cls, arrays):  # one more class row
        return {k: np.concatenate([v, v[:1]], axis=0) for k, v in arrays.items()}


def decode(kind: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Payload:
    """Rebuild the payload of type ``kind`` from its arrays and meta (not validated)."""
    if kind not in PAYLOADS:
        raise PayloadError(
            f"unknown payload kind '{kind}'; known: {', '.join(PAYLOADS.names())}", "malformed"
        )
    return PAYLOADS.get(kind).from_arrays(arrays, meta)


def kind_of(name: str) -> type[Payload]:
    """The registered payload class called ``name`` (ConfigError listing the known kinds)."""
    return PAYLOADS.get(name)
