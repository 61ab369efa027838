"""Distillation losses on precomputed targets (registry in the style of torchdistill).

Each registered loss is a callable object ``loss(student, target, *, temperature=1.0)``
returning a scalar averaged over the batch, with a ``target_space`` attribute saying what
the target must be (``"logits"``, ``"probs"`` or ``"features"``). :func:`check_space`
refuses a loss whose target space differs from the payload's: targets are never converted
silently (docs/algorithms.md pitfall 1).

- ``kl``: ``T² · KL(σ_T(target) ‖ σ_T(student))``, batchmean (Hinton et al. 2015,
  arXiv 1503.02531); FD / FedDF-style teachers given as logits.
- ``kl_probs``: ``T² · KL(q ‖ σ_T(student))`` for a teacher distribution ``q`` already formed
  (DS-FL / KnFu probabilities); ``q = 0`` entries contribute 0.
- ``soft_ce``: ``−Σ_c q_c log σ_T(student)_c`` (DS-FL, Itahara et al. arXiv 2008.06180); no
  ``T²`` factor; ``T`` softens the student only and defaults to 1 as in DS-FL (our option).
- ``swing_kl``: ``mean_i T_i² · KL(q_i ‖ σ_{T_i}(student_i))`` with a per-sample temperature
  ``T_i`` (a ``[B]`` tensor, or one float): Swing distillation (Li et al., arXiv 2212.08349,
  reconstructed in docs/algorithms.md §3.2; :mod:`fedkd.privacy.swing`). The ``(1−α)·CE`` half of
  its loss is ``distill(kd_weight=α, ce_weight=1−α)``.
- ``l1``: mean absolute error between logits (FedMD digest, Li & Wang arXiv 1910.03581).
- ``mse``: mean squared error over batch and dims (FedProto, Tan et al. arXiv 2105.00243).

``l1`` and ``mse`` have no temperature: any ``temperature != 1`` raises ConfigError instead
of being ignored (our choice). Inputs are ``[B, D]``; other shapes raise ValueError.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from fedkd.errors import ConfigError
from fedkd.registry import Registry

__all__ = ["LOSSES", "SPACES", "DistillLoss", "check_space"]

SPACES = ("logits", "probs", "features")


class DistillLoss:
    """Base: subclasses set ``name``, ``target_space`` and implement ``_loss``."""

    name: ClassVar[str] = ""
    target_space: ClassVar[str] = ""
    uses_temperature: ClassVar[bool] = True

    def __call__(self, student: Tensor, target: Tensor, *, temperature: float = 1.0) -> Tensor:
        if student.shape != target.shape:
            raise ValueError(
                f"loss '{self.name}': student shape {list(student.shape)} != "
                f"target shape {list(target.shape)}"
            )
        if student.ndim != 2:
            raise ValueError(f"loss '{self.name}': expected [B, D] tensors, got {student.ndim}-D")
        if not self.uses_temperature and temperature != 1.0:
            raise ConfigError(f"loss '{self.name}' has no temperature, got {temperature}")
        if temperature <= 0:
            raise ConfigError(f"loss '{self.name}': temperature must be > 0, got {temperature}")
        return self._loss(student, target.to(student.dtype), float(temperature))

    def _loss(self, student: Tensor, target: Tensor, t: float) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target_space={self.target_space!r})"


LOSSES: Registry[DistillLoss] = Registry("loss")


def _register(cls: type[DistillLoss]) -> type[DistillLoss]:
    LOSSES.register(cls.name)(cls())
    return cls


@_register
class KL(DistillLoss):
    name = "kl"
    target_space = "logits"

    def _loss(self, student: Tensor, target: Tensor, t: float) -> Tensor:
        log_p = F.log_softmax(student / t, dim=-1)
        log_q = F.log_softmax(target / t, dim=-1)
        return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * t * t


@_register
class KLProbs(DistillLoss):
    name = "kl_probs"
    target_space = "probs"

    def _loss(self, student: Tensor, target: Tensor, t: float) -> Tensor:
        # F.kl_div uses xlogy(q, q), so q = 0 entries contribute exactly 0 (no NaN).
        log_p = F.log_softmax(student / t, dim=-1)
        return F.kl_div(log_p, target, reduction="batchmean") * t * t


@_register
class SoftCE(DistillLoss):
    name = "soft_ce"
    target_space = "probs"

    def _loss(self, student: Tensor, target: Tensor, t: float) -> Tensor:
        log_p = F.log_softmax(student / t, dim=-1)
        return -(target * log_p).sum(dim=-1).mean()


@_register
class SwingKL(DistillLoss):
    name = "swing_kl"
    target_space = "probs"

    def __call__(self, student: Tensor, target: Tensor, *, temperature=1.0) -> Tensor:
        if not isinstance(temperature, Tensor):
            return super().__call__(student, target, temperature=temperature)
        t = temperature.to(student.dtype).reshape(-1)
        if t.shape[0] != student.shape[0] or bool((t <= 0).any()):
            raise ValueError(f"loss '{self.name}': need one temperature > 0 per sample")
        if student.shape != target.shape or student.ndim != 2:
            raise ValueError(f"loss '{self.name}': need [B, C] student and target of equal shape")
        return _swing_kl(student, target.to(student.dtype), t)

    def _loss(self, student: Tensor, target: Tensor, t: float) -> Tensor:
        return _swing_kl(student, target, student.new_full((len(student),), t))


def _swing_kl(student: Tensor, q: Tensor, t: Tensor) -> Tensor:
    log_p = F.log_softmax(student / t[:, None], dim=-1)
    kl = (torch.xlogy(q, q) - q * log_p).sum(dim=-1)
    return (t * t * kl).mean()


@_register
class L1(DistillLoss):
    name = "l1"
    target_space = "logits"
    uses_temperature = False

    def _loss(self, student: Tensor, target: Tensor, t: float) -> Tensor:
        return F.l1_loss(student, target)


@_register
class MSE(DistillLoss):
    name = "mse"
    target_space = "features"
    uses_temperature = False

    def _loss(self, student: Tensor, target: Tensor, t: float) -> Tensor:
        return F.mse_loss(student, target)


def check_space(loss_name: str, payload_space: str) -> None:
    """Raise ConfigError unless loss ``loss_name`` takes targets in ``payload_space``."""
    if payload_space not in SPACES:
        raise ConfigError(f"unknown target space '{payload_space}'; known: {', '.join(SPACES)}")
    loss = LOSSES.get(loss_name)
    if loss.target_space != payload_space:
        raise ConfigError(
            f"loss '{loss_name}' needs {loss.target_space} targets but the payload carries "
            f"{payload_space}; pick a loss for {payload_space} (no silent conversion)"
        )
