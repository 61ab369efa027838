"""Noising what a client releases (local DP) or what the server fuses (central DP).

docs/algorithms.md §5.1-5.2. Two places, one vocabulary:

- **Local** (``privacy=gaussian|laplace``, §5.2 B): every client clips and noises its own
  upload before it leaves (:func:`privatize`, applied by ``clients/privacy_mod.py``; the
  payload's kind says which arrays go through which release, ``Payload.privatize``). The
  unit is one client and the server is not trusted; under replace-one the released
  matrix moves by at most ``2S`` (``S`` = the clip bound), so the noise std (Gaussian,
  L2) or scale (Laplace, L1) is ``z · 2S``. Label counts sent beside per-class tables
  (FD logits, FedProto prototypes) leak the label distribution, so they are released
  the same way: as a histogram (L1 norm 1, so replace-one sensitivity 2 in L1 and
  ``sqrt(2)`` in L2) with the same ``z``, then
  rounded to integers on a fixed public scale (``COUNT_SCALE``). Votes (labels) go
  through k-ary randomized response with ``vote_epsilon`` per label (``top_k = 1``),
  accounted through its exact RDP (``dp_accounting.RandomizedResponseDpEvent``).
- **Central** (``privacy=central``, §5.2 A): the server clips each upload to ``S``, sums,
  adds ``N(0, z²S²)`` and divides by a **fixed** denominator (:func:`noisy_mean`);
  client-level DP under add/remove-one-client, trusted server.

:func:`round_event` says what one round costs as a ``dp_accounting`` event, so the
ledger and :func:`calibrate` (target ε over the planned rounds → ``z``) use the library.
Ours: counts are released on a 1/``COUNT_SCALE`` grid; probabilities are clamped at 0 and
renormalised after noise (post-processing); integer weight arrays (BatchNorm's step
counter, which counts the client's batches) are released as zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedkd.errors import ConfigError, PayloadError
from fedkd.knowledge import PAYLOADS, Payload
from fedkd.privacy.accounting import accountant, dp_lib
from fedkd.privacy.mechanisms import (
    clip_rows,
    clip_total,
    gaussian_noise,
    laplace_noise,
    randomized_response,
)
from fedkd.registry import Registry

if TYPE_CHECKING:
    import dp_accounting

COUNT_SCALE = 1000  # released label counts = round(noisy histogram * COUNT_SCALE)
# replace-one sensitivity of a label histogram (non-negative, sums to 1): two one-hot
# histograms are the farthest apart, L1 distance 2, L2 distance sqrt(2)
COUNT_SENSITIVITY = {1: 2.0, 2: math.sqrt(2.0)}


@dataclass(frozen=True)
class NoiseMechanism:
    order: int  # the norm clipping bounds: 2 (Gaussian) or 1 (Laplace)
    sample: Callable[[tuple[int, ...], float, np.random.Generator], np.ndarray]
    event: Callable[[float], dp_accounting.DpEvent]  # noise multiplier -> one release


NOISES: Registry[NoiseMechanism] = Registry("noise mechanism")
NOISES.register("gaussian")(
    NoiseMechanism(2, gaussian_noise, lambda z: dp_lib().GaussianDpEvent(z))
)
NOISES.register("laplace")(NoiseMechanism(1, laplace_noise, lambda b: dp_lib().LaplaceDpEvent(b)))


@dataclass(frozen=True)
class LocalSpec:
    """What the client-side mod does; sent to clients in the plan (``fedkd.plan.PrivacySpec``)."""

    mechanism: str
    noise_multiplier: float  # z: noise std (or Laplace scale) / sensitivity
    clip: float  # S: norm bound of each released matrix (L2 Gaussian, L1 Laplace)
    row_clip: float | None = None  # optional per-row bound, applied first
    vote_epsilon: float | None = None  # votes: randomized-response epsilon per label
    num_classes: int | None = None  # votes: the run's class count (randomized response)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LocalSpec:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def _noisy(values: np.ndarray, spec: LocalSpec, rng: np.random.Generator) -> np.ndarray:
    mech = NOISES.get(spec.mechanism)
    out = np.asarray(values, dtype=np.float64)
    if spec.row_clip is not None:
        out = clip_rows(out, spec.row_clip, mech.order)
    out = clip_total(out, spec.clip, mech.order)
    scale = spec.noise_multiplier * 2.0 * spec.clip  # replace-one sensitivity 2S
    return out + mech.sample(out.shape, scale, rng)


def _noisy_counts(counts: np.ndarray, spec: LocalSpec, rng: np.random.Generator) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    hist = counts / counts.sum() if counts.sum() > 0 else counts
    scale = spec.noise_multiplier * COUNT_SENSITIVITY[NOISES.get(spec.mechanism).order]
    noisy = hist + NOISES.get(spec.mechanism).sample(hist.shape, scale, rng)
    return np.rint(np.clip(noisy, 0.0, None) * COUNT_SCALE).astype(np.int64)


@dataclass(frozen=True)
class LocalRelease:
    """The local mechanism a payload kind noises its arrays through
    (:class:`fedkd.knowledge.Release`): ``spec`` with the client's noise generator."""

    spec: LocalSpec
    rng: np.random.Generator

    def values(self, values: np.ndarray) -> np.ndarray:
        return _noisy(values, self.spec, self.rng)

    def counts(self, counts: np.ndarray) -> np.ndarray:
        return _noisy_counts(counts, self.spec, self.rng)

    def labels(self, labels: np.ndarray) -> np.ndarray:
        if self.spec.vote_epsilon is None or self.spec.num_classes is None:
            raise ConfigError("votes need privacy.vote_epsilon (or a target_epsilon)")
        return randomized_response(labels, self.spec.num_classes, self.spec.vote_epsilon, self.rng)


def privatize(payload: Payload, spec: LocalSpec, rng: np.random.Generator) -> Payload:
    """The payload a client may release under ``spec`` (a new object; ``payload`` is kept):
    the payload's kind says which of its arrays are noised how (``Payload.privatize``)."""
    if not isinstance(payload, Payload):
        raise PayloadError(f"the privacy mod cannot release a '{type(payload).__name__}' payload")
    return payload.privatize(LocalRelease(spec, rng))


# ------------------------------------------------------------------ central (§5.2 A)
def noisy_mean(
    values: np.ndarray,
    clip: float,
    noise_multiplier: float,
    denominator: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``(Σ_k clip(v_k, S) + N(0, z²S²)) / m`` over the first axis of ``values [K, ...]``.

    Each upload is clipped to L2 norm ``S`` as a whole; ``m`` is fixed in advance (the
    expected cohort), never the realised count, so the sensitivity stays ``S`` under
    add/remove-one-client.
    """
    values = np.asarray(values, dtype=np.float64)
    if denominator <= 0:
        raise ConfigError(f"central noise needs a denominator > 0 (got {denominator})")
    total = sum(clip_total(v, clip) for v in values)
    return (total + gaussian_noise(values.shape[1:], noise_multiplier * clip, rng)) / denominator


def noisy_class_mean(
    values: np.ndarray,
    counts: np.ndarray,
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Central noise for per-class tables: ``(mean [C, D], present [C], noisy weight [C])``.

    ``values [K, C, D]`` (FD logits, prototypes), ``counts [K, C]`` (a row counts where
    ``counts > 0``). A class held by ``k`` of ``K`` clients must be averaged over those
    ``k``, not the cohort (a fixed denominator would scale it by ``k/K``), yet ``k`` is
    private. So both are released with noise (ours): client ``k`` holding ``c_k`` classes
    contributes ``u_k = present_k / sqrt(c_k)`` (unit L2 norm) and its table clipped to
    ``S`` as a whole, times ``u_k``; then

        mean_c = (sum_k u_kc v_kc + N(0, (z S)^2)) / max(sum_k u_kc + N(0, z^2), 1/sqrt(C))

    Adding or removing one client moves the sums by at most ``S`` and the weights by at
    most 1 (L2): two Gaussian releases with multiplier ``z`` (the ledger charges a
    per-class table twice). The mean is weighted by ``1/sqrt(c_k)`` (ours). A class is
    ``present`` where its noisy weight reaches ``1/(2 sqrt(C))`` (half the smallest weight
    one client can give), a data-independent threshold: post-processing.
    """
    values = np.asarray(values, dtype=np.float64)
    present = np.asarray(counts) > 0
    if values.ndim != 3 or present.shape != values.shape[:2]:
        raise ValueError(f"expected values [K, C, D] and counts [K, C], got {values.shape}")
    num_classes = values.shape[1]
    held = present.sum(axis=1, keepdims=True)
    weights = np.where(present, 1.0 / np.sqrt(np.maximum(held, 1)), 0.0)  # [K, C]
    masked = np.where(present[..., None], values, 0.0)
    clipped = np.stack([clip_total(v, clip) for v in masked]) if len(masked) else masked
    sums = (weights[..., None] * clipped).sum(axis=0)
    sums = sums + gaussian_noise(sums.shape, noise_multiplier * clip, rng)
    noisy_weight = weights.sum(axis=0) + gaussian_noise((num_classes,), noise_multiplier, rng)
    floor = 1.0 / math.sqrt(num_classes)
    mean = sums / np.maximum(noisy_weight, floor)[:, None]
    return mean, noisy_weight >= floor / 2.0, noisy_weight


# ------------------------------------------------------------------------ accounting
def rr_noise_parameter(epsilon: float, num_classes: int) -> float:
    """``dp_accounting``'s randomized-response ``p`` (output uniform over all ``k`` buckets with
    probability ``p``) of :func:`~fedkd.privacy.mechanisms.randomized_response`, which keeps a
    label with probability ``e^ε / (e^ε + k - 1)``: ``p / k = 1 / (e^ε + k - 1)``."""
    return num_classes / (math.exp(epsilon) + num_classes - 1)


def round_event(
    mechanism: str,
    noise_multiplier: float,
    kind: str,
    rows: int,
    vote_epsilon: float | None,
    num_classes: int | None = None,
) -> dp_accounting.DpEvent:
    """What one client's release costs in one round, as a ``dp_accounting`` event.

    The kind says how many releases one upload is (``Payload.releases``: a per-class table
    plus its counts is two); labels (``Payload.label_release``, votes) are ``rows`` k-ary randomized
    responses (ε per label), composed through their exact RDP
    (``RandomizedResponseDpEvent``, replace-one).
    """
    payload = PAYLOADS.get(kind)
    if payload.label_release:
        if vote_epsilon is None:
            raise ConfigError("votes need privacy.vote_epsilon (or a target_epsilon)")
        if num_classes is None or num_classes < 2:
            raise ConfigError(f"votes need the number of classes (got {num_classes})")
        one = dp_lib().RandomizedResponseDpEvent(
            rr_noise_parameter(vote_epsilon, num_classes), num_classes
        )
        return dp_lib().SelfComposedDpEvent(one, rows)
    if noise_multiplier <= 0:
        return dp_lib().NonPrivateDpEvent()
    one = NOISES.get(mechanism).event(noise_multiplier)
    releases = payload.releases
    return one if releases == 1 else dp_lib().ComposedDpEvent([one] * releases)


def epsilon_after(event: dp_accounting.DpEvent, rounds: int, delta: float) -> float:
    """ε at ``delta`` after ``rounds`` compositions of ``event`` (RDP accountant)."""
    if rounds <= 0:
        return 0.0
    acc = accountant()
    acc.compose(event, rounds)
    return float(acc.get_epsilon(delta))


def calibrate(
    make_event: Callable[[float], dp_accounting.DpEvent],
    rounds: int,
    target_epsilon: float,
    delta: float,
) -> float:
    """The parameter of ``make_event`` giving ε = ``target_epsilon`` after ``rounds`` rounds
    (``dp_accounting.calibrate_dp_mechanism``)."""
    if not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise ConfigError(f"privacy.target_epsilon must be > 0 (got {target_epsilon})")
    return float(
        dp_lib().calibrate_dp_mechanism(
            accountant,
            lambda p: dp_lib().SelfComposedDpEvent(make_event(p), rounds),
            target_epsilon,
            delta,
        )
    )
