"""Plain PyTorch loops: local training, distillation, evaluation, prediction.

nanoGPT-style: no trainer classes, no callbacks. Every loop draws its batch
order from an explicit ``torch.Generator`` so a client's round is reproducible
given (seed, round, client) no matter which process runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fedkd import optim
from fedkd.confusion import counts_from_labels
from fedkd.errors import ConfigError
from fedkd.optim import Optimizer
from fedkd.registry import Registry

# torch's update kernels without torch.optim's classes, which import torch._dynamo (fedkd/optim.py)
OPTIMIZERS: Registry[Callable[..., Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("sgd")(optim.SGD)
OPTIMIZERS.register("adam")(optim.Adam)
OPTIMIZERS.register("adamw")(optim.AdamW)

# A regulariser added to the supervised loss: (features, logits, labels) -> scalar.
Regulariser = Callable[[Tensor, Tensor, Tensor], Tensor]


def make_optimizer(params: Any, cfg: Mapping[str, Any]) -> Optimizer:
    """Build an optimizer from ``{name: sgd, lr: 0.05, ...}``; null options are left out."""
    options = {k: v for k, v in cfg.items() if k != "name" and v is not None}
    try:
        return OPTIMIZERS.get(cfg["name"])(params, **options)
    except TypeError as err:
        raise ConfigError(f"optimizer '{cfg['name']}': {err}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("client.device is 'cuda' but torch sees no CUDA device")
    return torch.device(name)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _budget(
    n: int, batch_size: int, generator: torch.Generator, epochs: int, steps: int | None
) -> Iterator[Tensor]:
    """Batch indices for ``epochs`` passes, or for exactly ``steps`` batches when given."""
    if steps is None:
        for _ in range(epochs):
            yield from _batches(n, batch_size, generator)
        return
    left = steps
    while left > 0:
        for idx in _batches(n, batch_size, generator):
            yield idx
            left -= 1
            if left == 0:
                return


@dataclass
class TrainResult:
    loss: float  # mean supervised (cross-entropy) loss over the round
    reg_loss: float  # mean regulariser loss (0 without one)
    class_sums: np.ndarray | None = None  # [C, D] per-label sum of logits or features
    class_counts: np.ndarray | None = None  # [C] samples seen per label

    def class_means(self) -> np.ndarray:
        """Per-label means of what was collected; rows of unseen labels are 0."""
        if self.class_sums is None or self.class_counts is None:
            raise ValueError("nothing was collected during training")
        return (self.class_sums / np.maximum(self.class_counts, 1)[:, None]).astype(np.float32)


def train_supervised(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    batch_size: int,
    optimizer: Optimizer,
    generator: torch.Generator,
    regulariser: Regulariser | None = None,
    collect: str | None = None,
    num_classes: int | None = None,
) -> TrainResult:
    """Cross-entropy training, optionally plus a regulariser (FD, FedProto).

    ``collect="logits"`` (FD, Jeong et al. 2018) or ``"features"`` (FedProto,
    Tan et al. 2022; the payload kind's ``collects``) accumulates per-label sums of
    the logits or features of the *training* forward passes, as both reference
    codes do, instead of running a separate pass.
    """
    if collect not in (None, "logits", "features"):
        raise ValueError(f"collect must be None, 'logits' or 'features' (got {collect!r})")
    if collect is not None and num_classes is None:
        raise ValueError("collect needs num_classes")
    model.train()
    ce = nn.CrossEntropyLoss()
    total, total_reg, steps = 0.0, 0.0, 0
    sums: Tensor | None = None
    counts = torch.zeros(num_classes) if collect is not None else None
    for _ in range(epochs):
        for idx in _batches(len(y), batch_size, generator):
            xb, yb = x[idx], y[idx]
            features, logits = model(xb)
            loss = ce(logits, yb)
            reg = regulariser(features, logits, yb) if regulariser is not None else None
            optimizer.zero_grad(set_to_none=True)
            (loss + reg if reg is not None else loss).backward()
            optimizer.step()
            total += loss.item()
            total_reg += reg.item() if reg is not None else 0.0
            steps += 1
            if counts is not None:
                values = (logits if collect == "logits" else features).detach().float().cpu()
                if sums is None:
                    sums = torch.zeros(num_classes, values.shape[1])
                sums.index_add_(0, yb.cpu(), values)
                counts += torch.bincount(yb.cpu(), minlength=num_classes)
    return TrainResult(
        loss=total / max(steps, 1),
        reg_loss=total_reg / max(steps, 1),
        class_sums=None if sums is None else sums.numpy(),
        class_counts=None if counts is None else counts.numpy().astype(np.int64),
    )


def distill(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    *,
    loss_fn: Callable[..., Tensor],
    temperature: float,
    epochs: int,
    batch_size: int,
    optimizer: Optimizer,
    generator: torch.Generator,
    ce_data: tuple[Tensor, Tensor] | None = None,
    ce_weight: float = 0.0,
    kd_weight: float = 1.0,
    temperatures: Tensor | None = None,
    steps: int | None = None,
) -> float:
    """Fit the model's logits to precomputed targets on public inputs; mean loss.

    The budget is ``epochs`` passes over ``x``, or, when ``steps`` is given, exactly
    ``steps`` optimiser steps (passes in a fresh shuffled order until the count is
    reached; ``steps = 0`` leaves the model untouched). Budgets in steps keep the
    amount of distillation independent of the public set's size.

    With ``ce_weight > 0`` every step also adds ``ce_weight * CE`` on a random
    batch of ``ce_data`` (KnFu's optional guard against forgetting; Swing's
    ``(1−α)·CE``). The distillation term is scaled by ``kd_weight``; per-sample
    ``temperatures [N]`` (Swing) replace ``temperature`` when given.
    """
    if len(x) == 0 or (steps is not None and steps <= 0):
        return 0.0
    model.train()
    total, taken = 0.0, 0
    use_ce = ce_data is not None and ce_weight > 0 and len(ce_data[1]) > 0
    for idx in _budget(len(x), batch_size, generator, epochs, steps):
        _, logits = model(x[idx])
        t = temperature if temperatures is None else temperatures[idx]
        loss = kd_weight * loss_fn(logits, targets[idx], temperature=t)
        if use_ce:
            pick = torch.randint(
                len(ce_data[1]), (min(batch_size, len(ce_data[1])),), generator=generator
            )
            _, private_logits = model(ce_data[0][pick])
            loss = loss + ce_weight * nn.functional.cross_entropy(private_logits, ce_data[1][pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item()
        taken += 1
    return total / max(taken, 1)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Features and logits in eval mode, batched."""
    model.eval()
    feats, logits = [], []
    for start in range(0, len(x), batch_size):
        f, z = model(x[start : start + batch_size])
        feats.append(f)
        logits.append(z)
    if not feats:
        raise ValueError("predict() called on an empty input")
    return torch.cat(feats), torch.cat(logits)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of the model's head on (x, y)."""
    if len(y) == 0:
        return float("nan"), float("nan")
    _, logits = predict(model, x, batch_size)
    loss = nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=1) == y).float().mean().item()
    return acc, loss


@torch.no_grad()
def confusion_matrix(
    model: nn.Module, x: Tensor, y: Tensor, num_classes: int, batch_size: int
) -> np.ndarray:
    """int64 ``[C, C]`` counts of the model's head on ``(x, y)``: rows true, columns predicted."""
    if len(y) == 0:
        return np.zeros((num_classes, num_classes), np.int64)
    _, logits = predict(model, x, batch_size)
    return counts_from_labels(y.cpu().numpy(), logits.argmax(dim=1).cpu().numpy(), num_classes)
