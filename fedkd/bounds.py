"""Magnitude bounds on uploaded knowledge, sample-count weight caps, norm clipping.

Validation (:mod:`fedkd.knowledge`) accepts any finite float32 value, but finite
is not harmless: one fedproto upload of 1e30 prototypes averages into a global
prototype of 1e29, which turns every honest model NaN the round after. The
``bounds`` section of the run config limits what a reply may hold and how much
one reply can weigh:

- **absolute bounds** per payload kind (:func:`check_magnitude`, reason
  ``value_range``): ``bounds.logits`` for logits (``class_logits``, and
  ``public_logits`` in logit space; probabilities are already in [0, 1]),
  ``bounds.prototypes`` for prototypes, ``bounds.weights`` for floating model
  arrays; integer arrays (label counts, integer model buffers) at most
  ``bounds.max_count``;
- **sample-count weights** (:func:`cap_weights`, :func:`cap_uploads`): a client can
  claim any ``num_train`` (and any label count) up to ``bounds.max_count`` (more is
  rejected), so the weight fusion gives it is capped at ``bounds.weight_cap`` times
  the round's median claim (label counts: their total per client);
- **norm clipping** before fusion (:func:`clip_to_median`, ``bounds.clip``, off
  by default): each upload row's distance to the round's coordinate-wise median is
  clipped to ``clip`` times the median of those distances.

Absolute bounds guard the process (no overflow, no NaN on the honest clients);
the robust reducers (``strategy.reducer``) and clipping limit the influence of
attackers that stay inside them. Choices that are ours: the default values
(``configs/config.yaml``), bounding per element rather than per row, clipping
towards the coordinate-wise median (the median-distance rule follows norm-bounding
defences such as Sun et al. 2019, arXiv 1911.07963, but the exact form is ours), and
leaving a row unclipped when the median distance is 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedkd.errors import ConfigError, PayloadError
from fedkd.knowledge import Payload
from fedkd.knowledge.base import PerClass

KEYS = ("logits", "prototypes", "weights", "max_count", "weight_cap", "clip")


@dataclass(frozen=True)
class Bounds:
    """The ``bounds`` config section; None disables a bound."""

    logits: float | None = None
    prototypes: float | None = None
    weights: float | None = None
    max_count: int = 2**53
    weight_cap: float | None = None
    clip: float | None = None

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> Bounds:
        """ConfigError naming the key for a bad value (runs before Ray starts); None: no
        bounds (what a test of another part passes)."""
        if section is None:
            return cls()
        section = dict(section)
        unknown = sorted(set(section) - set(KEYS))
        if unknown:
            raise ConfigError(f"bounds: unknown key(s) {unknown}; known: {', '.join(KEYS)}")
        missing = [key for key in KEYS if key not in section]
        if missing:
            raise ConfigError(
                f"bounds: missing key(s) {missing}; configs/config.yaml sets every one "
                f"(null: no bound)"
            )
        values: dict[str, Any] = {}
        for key in ("logits", "prototypes", "weights", "weight_cap", "clip"):
            value = section[key]
            if value is None:
                values[key] = None
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"bounds.{key} must be null or a number > 0 (got {value!r})")
            values[key] = float(value)
        if values["weight_cap"] is not None and values["weight_cap"] < 1:
            raise ConfigError(f"bounds.weight_cap must be >= 1 (got {values['weight_cap']})")
        count = section["max_count"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 2**53:
            raise ConfigError(f"bounds.max_count must be an integer in [1, 2^53] (got {count!r})")
        return cls(**values, max_count=count)


def _check_abs(where: str, array: np.ndarray, bound: float | None) -> None:
    if bound is None or array.size == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        peak = float(np.max(np.abs(array.astype(np.float64))))
    if not peak <= bound:
        raise PayloadError(
            f"{where}: |value| up to {peak:.3g} exceeds bounds limit {bound:g}", "value_range"
        )


def check_magnitude(payload: Payload, bounds: Bounds) -> None:
    """PayloadError ``value_range`` when a validated payload holds values beyond ``bounds``:
    each array the payload's kind names in ``bounded_arrays`` against its ``Bounds`` field,
    and label counts against ``max_count``."""
    for where, array, field in payload.bounded_arrays():
        _check_abs(where, array, getattr(bounds, field))
    counts = getattr(payload, "counts", None)
    if isinstance(counts, np.ndarray) and counts.size and counts.max() > bounds.max_count:
        raise PayloadError(
            f"{payload.kind}.counts: {counts.max()} exceeds bounds.max_count={bounds.max_count}",
            "value_range",
        )


def cap_weights(num_train: Mapping[int, int], cap: float | None) -> dict[int, int]:
    """Each client's sample count capped at ``cap`` times the median count (None: as is).

    ``{0: 100, 1: 120, 2: 10**9}`` with ``cap=4``: median 120, so client 2 weighs 480.
    """
    out = {cid: int(n) for cid, n in num_train.items()}
    if cap is None or not out:
        return out
    limit = cap * float(np.median(list(out.values())))
    return {cid: int(min(n, max(limit, 1.0))) for cid, n in out.items()}


def cap_class_counts(counts: np.ndarray, cap: float | None) -> np.ndarray:
    """Label counts ``[K, C]`` whose total per client is capped at ``cap`` times the median
    total (None: as is), the same rule as :func:`cap_weights`: a client over it has all its
    counts scaled down (rounded down, but a non-zero count stays >= 1, so who has a class
    is unchanged).

    ``[[10, 0], [20, 5], [10**7, 5]]`` with ``cap=4``: totals 10, 25 and 10^7 + 5, median
    25, limit 100; the third client's counts become ``[99, 1]``.
    """
    out = np.array(counts, dtype=np.int64, copy=True)
    totals = out.sum(axis=1)
    if cap is None or not (totals > 0).any():
        return out
    limit = max(1.0, cap * float(np.median(totals[totals > 0])))
    for k in np.flatnonzero(totals > limit):
        scaled = np.floor(out[k] * (limit / float(totals[k]))).astype(np.int64)
        out[k] = np.where(out[k] > 0, np.maximum(scaled, 1), 0)
    return out


def cap_uploads(uploads: Mapping[int, Payload], cap: float | None) -> dict[int, Payload]:
    """Per-class payloads with their label counts capped (:func:`cap_class_counts`): the
    weights of ``weighted: true`` in fd and fedproto. Other payloads are returned as they are."""
    uploads = dict(uploads)
    ids = sorted(uploads)
    if cap is None or not ids or not all(isinstance(uploads[i], PerClass) for i in ids):
        return uploads
    capped = cap_class_counts(np.stack([uploads[i].counts for i in ids]), cap)
    return {cid: dataclasses.replace(uploads[cid], counts=capped[k]) for k, cid in enumerate(ids)}


def clip_to_median(values: np.ndarray, mask: np.ndarray, factor: float) -> np.ndarray:
    """Rows ``values[k, r]`` (``[K, R, D]``) clipped towards the coordinate-wise median row.

    For each row ``r``, over the clients with ``mask[k, r]``: ``m`` = coordinate-wise
    median of their rows, ``d_k = ||values[k, r] - m||``; a row with ``d_k > factor *
    median_k(d_k)`` becomes ``m + (values[k, r] - m) * factor * median(d) / d_k``. Rows
    whose median distance is 0, and masked-out rows, are returned unchanged.
    """
    out = np.array(values, dtype=np.float64, copy=True)
    for r in range(out.shape[1]):
        rows = np.flatnonzero(mask[:, r])
        if len(rows) < 3:  # with two rows the median is their mean: both equally far
            continue
        block = out[rows, r]
        centre = np.median(block, axis=0)
        dist = np.linalg.norm(block - centre, axis=1)
        limit = factor * float(np.median(dist))
        if limit <= 0:
            continue
        scale = np.where(dist > limit, limit / np.where(dist > 0, dist, 1.0), 1.0)
        out[rows, r] = centre + (block - centre) * scale[:, None]
    return out


def clip_uploads(uploads: Mapping[int, Payload], factor: float | None) -> dict[int, Payload]:
    """The round's uploads with their rows clipped (:func:`clip_to_median`); None: as is.

    Each kind names its clippable blocks (``Payload.clip_blocks``): class rows of
    ``class_logits`` / ``prototypes`` (clients with count 0 left out), sample rows of
    ``public_logits`` in logit space, and whole floating arrays of ``model_weights`` (each
    name on its own, where every client has it with one shape); probabilities and votes
    are bounded already and returned unchanged.
    """
    uploads = dict(uploads)
    if factor is None or len(uploads) < 3:
        return uploads
    ids = sorted(uploads)
    blocks = {cid: uploads[cid].clip_blocks() for cid in ids}
    clipped: dict[int, dict[str, np.ndarray]] = {cid: {} for cid in ids}
    for name in blocks[ids[0]]:
        if not all(name in blocks[i] for i in ids):
            continue  # another architecture group
        if len({blocks[i][name][0].shape for i in ids}) != 1:
            continue  # shapes of different groups
        stacked = np.stack([blocks[i][name][0] for i in ids]).astype(np.float64)
        mask = np.stack([blocks[i][name][1] for i in ids])
        rows = clip_to_median(stacked, mask, factor)
        for k, cid in enumerate(ids):
            clipped[cid][name] = rows[k]
    if not blocks[ids[0]]:
        return uploads
    return {cid: uploads[cid].with_blocks(clipped[cid]) for cid in ids}
