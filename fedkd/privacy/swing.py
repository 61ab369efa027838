"""Swing-style adaptive temperature and soft-target noise (docs/algorithms.md §3.2).

Swing Distillation (Li et al., arXiv 2212.08349) gives every position its own KD
temperature, set by how likely it carries private information, and noises the soft
targets. Only the abstract is public, so this is the reconstruction of §3.2
``[PROPOSED]``, adapted to classification:

1. a per-sample privacy score ``π ∈ [0, 1]`` from the :data:`SCORES` registry:
   ``oracle`` (1 on inserted canaries, 0 elsewhere) or ``memorisation``:
   ``π = sigmoid(γ·(ℓ_ref(x) − ℓ_T(x)) − b)`` with ``ℓ`` the CE loss of the teacher's
   predicted label ``ŷ = argmax z`` (public samples have no labels). **Our choice of
   reference:** the global knowledge the client last received, where it covers the
   sample (a client far more confident than the federation's consensus suggests it
   memorised the sample), else the uniform distribution (``ℓ_ref = log C``: what a
   freshly initialised model gives in expectation). Defaults ``γ = 2, b = 2`` (ours);
2. ``T = T_lo + (T_hi − T_lo)·π`` (defaults 2 and 20);
3. ``q = Π_Δ(σ_T(z) + ξ)``: Laplace ``b = 2/ε`` (Δ₁ = 2, the simplex's L1 diameter) or
   Gaussian ``σ = √2/ε`` (Δ₂ = √2; this ``σ`` is ours: no δ), then clamp at 0 and
   renormalise (post-processing); optionally only where ``π > noise_threshold``;
4. the student loss ``(1−α)·CE + α·T²·KL(q ‖ σ_T(z_s))`` with α = 0.5 (the
   ``swing_kl`` loss of :mod:`fedkd.losses` and ``distill(kd_weight=α, ce_weight=1−α)``).

**ε here is a "noise scale ε", not a DP guarantee**: a soft label's sensitivity to one
training example is unbounded (§3.2 step 5). Real DP needs the client-side mod
(``privacy=gaussian|laplace``, which clips and noises the whole upload afterwards) or
sub-teachers (§5.2 C). With ``score=memorisation`` the released temperatures depend on
the private data too: they are an un-noised side channel, so with the client-side mod
they must be withheld (``release_temperatures=false``; students then use ``t_lo``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from fedkd.errors import ConfigError
from fedkd.knowledge import PublicLogits
from fedkd.privacy.noise import noise_rng
from fedkd.registry import Registry

NOISE_KINDS = ("laplace", "gaussian", "none")


@dataclass(frozen=True)
class SwingSpec:
    """The ``swing`` config section (``configs/swing/adaptive.yaml``); travels in the plan."""

    score: str = "memorisation"
    t_lo: float = 2.0
    t_hi: float = 20.0
    alpha: float = 0.5
    noise: str = "laplace"
    epsilon: float | None = 1.0  # noise scale ε (not DP); null: no noise
    gamma: float = 2.0
    bias: float = 2.0
    noise_threshold: float | None = None  # noise only where π > this; null: everywhere
    release_temperatures: bool = True

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> SwingSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(section) - known - {"name"}
        if unknown:
            raise ConfigError(f"unknown swing option(s): {', '.join(sorted(unknown))}")
        spec = cls(**{k: v for k, v in section.items() if k in known})
        spec.check()
        return spec

    def check(self) -> None:
        SCORES.get(self.score)
        if not 1.0 <= self.t_lo <= self.t_hi:
            raise ConfigError(f"swing needs 1 <= t_lo <= t_hi (got {self.t_lo}, {self.t_hi})")
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"swing.alpha must be in (0, 1] (got {self.alpha})")
        if self.noise not in NOISE_KINDS:
            raise ConfigError(f"swing.noise must be one of {NOISE_KINDS} (got {self.noise!r})")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"swing.epsilon must be > 0 or null (got {self.epsilon})")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------- privacy scores
Score = Callable[..., np.ndarray]  # (logits [N, C], *, reference, canary, gamma, bias) -> π [N]
SCORES: Registry[Score] = Registry("swing privacy score")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@SCORES.register("oracle")
def oracle_score(logits: np.ndarray, *, canary: np.ndarray | None = None, **_: Any) -> np.ndarray:
    """1 on inserted canaries, 0 elsewhere (an upper bound; unit tests)."""
    n = len(logits)
    return np.zeros(n) if canary is None else np.asarray(canary, dtype=np.float64).reshape(n)


@SCORES.register("memorisation")
def memorisation_score(
    logits: np.ndarray,
    *,
    reference: np.ndarray | None = None,
    gamma: float = 2.0,
    bias: float = 2.0,
    **_: Any,
) -> np.ndarray:
    """``sigmoid(γ·(ℓ_ref − ℓ_T) − b)`` on the teacher's predicted label.

    ``reference``: probabilities ``[N, C]`` of the reference model (rows of NaN: none),
    or None; where missing, ``ℓ_ref = log C`` (uniform).
    """
    logp = _log_softmax(logits)
    n, c = logp.shape
    yhat = logp.argmax(axis=1)
    loss_t = -logp[np.arange(n), yhat]
    loss_ref = np.full(n, math.log(c))
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        have = np.isfinite(ref).all(axis=1)
        picked = np.clip(ref[np.arange(n), yhat], 1e-12, 1.0)
        loss_ref = np.where(have, -np.log(picked), loss_ref)
    return 1.0 / (1.0 + np.exp(-(gamma * (loss_ref - loss_t) - bias)))


# ------------------------------------------------------- temperature and noise
def swing_temperatures(pi: np.ndarray, t_lo: float = 2.0, t_hi: float = 20.0) -> np.ndarray:
    """``T = T_lo + (T_hi − T_lo)·π``."""
    return t_lo + (t_hi - t_lo) * np.clip(np.asarray(pi, dtype=np.float64), 0.0, 1.0)


def tempered_softmax(logits: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """``σ_{T_i}(z_i)`` row by row."""
    t = np.asarray(temperatures, dtype=np.float64).reshape(-1, 1)
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / t))


def to_simplex(values: np.ndarray) -> np.ndarray:
    """Clamp at 0 and renormalise rows; an all-zero row becomes uniform."""
    values = np.clip(values, 0.0, None)
    sums = values.sum(axis=1, keepdims=True)
    return np.where(sums > 0, values / np.where(sums > 0, sums, 1.0), 1.0 / values.shape[1])


def noisy_soft_targets(
    probs: np.ndarray,
    epsilon: float | None,
    noise: str,
    rng: np.random.Generator,
    where: np.ndarray | None = None,
) -> np.ndarray:
    """``Π_Δ(p + ξ)``; Laplace ``b = 2/ε`` or Gaussian ``σ = √2/ε`` (noise scale ε, not DP).

    ``where`` (bool ``[N]``): noise only those rows. Always returns rows on the simplex.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if epsilon is None or noise == "none":
        return to_simplex(probs)
    if noise == "laplace":
        xi = rng.laplace(0.0, 2.0 / epsilon, size=probs.shape)
    elif noise == "gaussian":
        xi = rng.normal(0.0, math.sqrt(2.0) / epsilon, size=probs.shape)
    else:
        raise ConfigError(f"swing.noise must be one of {NOISE_KINDS} (got {noise!r})")
    if where is not None:
        xi = xi * np.asarray(where, dtype=bool)[:, None]
    return to_simplex(probs + xi)


def swing_release(
    payload: PublicLogits,
    spec: SwingSpec,
    rng: np.random.Generator,
    *,
    reference: np.ndarray | None = None,
    canary: np.ndarray | None = None,
) -> PublicLogits:
    """The client's logits on public samples -> Swing soft targets ``q`` (+ temperatures)."""
    if payload.space != "logits":
        raise ConfigError("swing needs the client's logits on the public set (extract space)")
    pi = SCORES.get(spec.score)(
        payload.values, reference=reference, canary=canary, gamma=spec.gamma, bias=spec.bias
    )
    temps = swing_temperatures(pi, spec.t_lo, spec.t_hi)
    where = None if spec.noise_threshold is None else pi > spec.noise_threshold
    q = noisy_soft_targets(
        tempered_softmax(payload.values, temps), spec.epsilon, spec.noise, rng, where
    )
    return replace(
        payload,
        values=q.astype(np.float32),
        space="probs",
        temperatures=temps.astype(np.float32) if spec.release_temperatures else None,
    )


def reference_on(received: Any, indices: np.ndarray) -> np.ndarray | None:
    """Received global probabilities aligned to ``indices`` (NaN rows where not covered)."""
    if not isinstance(received, PublicLogits) or received.space != "probs":
        return None
    out = np.full((len(indices), received.values.shape[1]), np.nan)
    pos = {int(i): r for r, i in enumerate(received.indices)}
    for row, i in enumerate(indices):
        if int(i) in pos:
            out[row] = received.values[pos[int(i)]]
    return out


def swing_payload(
    payload: Any,
    received: Any,
    spec: Mapping[str, Any],
    canary,
    generator,
    *,
    seeded: bool = False,
) -> Any:
    """The client round's hook: Swing soft targets from the extracted public-set logits.

    ``canary``: the client's bool mask over the public set (oracle score) or None;
    ``generator``: the round's ``torch.Generator``. One draw is taken from it whatever
    ``seeded`` says (so the batch order after it stays the same); the noise comes from OS
    entropy, or with ``seeded`` (``simulation.seeded_noise``, :mod:`fedkd.privacy.noise`)
    from that draw, i.e. from (seed, round, client).
    """
    import torch  # the rest of this module is numpy only

    swing = SwingSpec(**spec)
    draw = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = noise_rng(seeded, [draw])
    mask = None if canary is None else canary.numpy()[payload.indices]
    return swing_release(
        payload, swing, rng, reference=reference_on(received, payload.indices), canary=mask
    )
