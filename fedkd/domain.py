"""Domain-adaptation pieces for FedKA (Sun, Chong, Ochiai, arXiv 2203.11635; docs/algorithms.md §2).

- :func:`grad_reverse`: gradient reversal layer (GRL; Ganin & Lempitsky 2015, arXiv
  1409.7495): identity forward, gradient times ``-λ`` backward.
- :func:`dann_lambda`: the DANN ramp ``λ_p = 2 / (1 + exp(-γ p)) - 1``. FedKA's notebook
  uses ``γ = 5`` (the default here); classic DANN uses 10.
- :func:`mk_mmd`: the biased multi-kernel MMD² of FedKA's embedding matching, as in the
  official notebook's ``MMD_loss``: Gaussian kernels ``exp(-‖x - y‖² / b_i)`` with
  ``b_i = h · kernel_mul^(i - kernel_num // 2)``, ``i = 0 .. kernel_num - 1``, where ``h``
  is the mean pairwise squared distance over the concatenated batch excluding the
  diagonal; the kernels are **summed** (not averaged) and the statistic is
  ``mean(K_ss + K_tt - K_st - K_ts)``. Like the notebook (``L2_distance.data``), ``h`` is
  treated as a constant: no gradient flows through the bandwidth.
- :class:`DomainHead`: FedKA's domain classifier ("disentangler"):
  FC → BN → ReLU → FC 2.

Choices that are ours: squared distances use the Gram form ``‖x‖² + ‖y‖² - 2 x·y`` clamped
at 0 after centring the batch (memory ``O(B²)`` instead of the notebook's ``O(B² d)``; on
identical inputs the result is 0 up to float rounding, ~1e-8 in float32); ``h`` is floored at the dtype's ``tiny`` so a batch of identical points gives
MMD² = 0 instead of NaN; :class:`DomainHead` returns logits (use ``cross_entropy``) where
the notebook ends in ``LogSoftmax`` + ``NLLLoss``, and applies the GRL itself when given
``grl_lambda``; :func:`dann_lambda` refuses negative progress.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from fedkd.errors import ConfigError

__all__ = ["DomainHead", "dann_lambda", "grad_reverse", "mk_mmd"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, lambda_: float) -> Tensor:
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output.neg() * ctx.lambda_, None


def grad_reverse(x: Tensor, lambda_: float = 1.0) -> Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by ``-lambda_``."""
    lambda_ = float(lambda_)
    if not math.isfinite(lambda_):
        raise ConfigError(f"grad_reverse: lambda_ must be finite, got {lambda_}")
    return _GradReverse.apply(x, lambda_)


def dann_lambda(progress: float, gamma: float = 5.0) -> float:
    """DANN schedule ``2 / (1 + exp(-gamma * progress)) - 1``: 0 at the start, -> 1.

    ``progress`` is FedKA's ``p = (i + r·L) / (R·L)`` (batch ``i`` of ``L`` in round ``r``
    of ``R``), in ``[0, 1)`` during training.
    """
    progress, gamma = float(progress), float(gamma)
    if not math.isfinite(progress) or progress < 0:
        raise ConfigError(f"dann_lambda: progress must be finite and >= 0, got {progress}")
    if not math.isfinite(gamma) or gamma <= 0:
        raise ConfigError(f"dann_lambda: gamma must be finite and > 0, got {gamma}")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def _sq_dists(total: Tensor) -> Tensor:
    # Distances are shift-invariant; centring first reduces cancellation in the Gram form.
    total = total - total.mean(dim=0, keepdim=True)
    sq = (total * total).sum(dim=1)
    d = sq[:, None] + sq[None, :] - 2.0 * (total @ total.T)
    d = d.clamp_min(0.0)
    return d * (1.0 - torch.eye(total.shape[0], dtype=d.dtype, device=d.device))


def mk_mmd(source: Tensor, target: Tensor, kernel_mul: float = 2.0, kernel_num: int = 5) -> Tensor:
    """Biased multi-kernel MMD² between ``source [B, d]`` and ``target [B, d]`` (scalar).

    Equal batch sizes are required (the statistic pairs ``K_st`` with ``K_ts``
    elementwise). Differentiable in both inputs; detach one side to freeze it (FedKA
    matches client features to the frozen global extractor's target features).
    """
    if source.ndim != 2 or target.ndim != 2:
        raise ValueError(
            f"mk_mmd: expected [B, d] tensors, got {list(source.shape)} and {list(target.shape)}"
        )
    if source.shape != target.shape:
        raise ValueError(
            f"mk_mmd: source {list(source.shape)} and target {list(target.shape)} must match"
        )
    if source.shape[0] < 1:
        raise ValueError("mk_mmd: empty batch")
    if isinstance(kernel_num, bool) or not isinstance(kernel_num, int) or kernel_num < 1:
        raise ConfigError(f"mk_mmd: kernel_num must be an int >= 1, got {kernel_num!r}")
    kernel_mul = float(kernel_mul)
    if not math.isfinite(kernel_mul) or kernel_mul <= 0:
        raise ConfigError(f"mk_mmd: kernel_mul must be finite and > 0, got {kernel_mul}")
    b = source.shape[0]
    total = torch.cat([source, target.to(source.dtype)], dim=0)
    dists = _sq_dists(total)
    n = total.shape[0]
    with torch.no_grad():
        h = (dists.sum() / (n * n - n)).clamp_min(torch.finfo(dists.dtype).tiny)
    kernels = sum(
        torch.exp(-dists / (h * kernel_mul ** (i - kernel_num // 2))) for i in range(kernel_num)
    )
    k_ss, k_tt = kernels[:b, :b], kernels[b:, b:]
    k_st, k_ts = kernels[:b, b:], kernels[b:, :b]
    return torch.mean(k_ss + k_tt - k_st - k_ts)


class DomainHead(nn.Module):
    """Domain classifier: ``Linear(feature_dim, hidden) → BN → ReLU → Linear(hidden, 2)``.

    FedKA's "disentangler" (source = 0, target = 1), 800 → 100 → 2 in the Digit-Five model.
    Returns logits. With ``grl_lambda`` set, the features first pass through
    :func:`grad_reverse`, so minimising the domain loss trains the head while pushing the
    feature extractor towards domain-invariant features.
    """

    def __init__(self, feature_dim: int, hidden: int = 100, num_domains: int = 2) -> None:
        super().__init__()
        for name, value in (("feature_dim", feature_dim), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DomainHead: {name} must be an int >= 1, got {value!r}")
        if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 2:
            raise ConfigError(f"DomainHead: num_domains must be an int >= 2, got {num_domains!r}")
        self.net = nn.Sequential(
            nn.Linear(feature_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_domains),
        )

    def forward(self, features: Tensor, grl_lambda: float | None = None) -> Tensor:
        if grl_lambda is not None:
            features = grad_reverse(features, grl_lambda)
        return self.net(features.flatten(1))
