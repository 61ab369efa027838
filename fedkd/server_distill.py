"""Server-side ensemble distillation (FedDF; Lin et al., NeurIPS 2020, arXiv 2006.07242).

The server distils the ensemble of the round's client models ("teachers") into a
student (FedDF starts it from the FedAvg of the clients of its architecture) on
unlabelled public data, and keeps the student state that validates best.

Follows the reference code (epfml/federated-learning-public-code,
``codes/FedDF-code/pcode/aggregation/noise_knowledge_transfer.py`` and
``adv_knowledge_transfer.py``, docs/algorithms.md §4.3):

- Teacher = weighted average of the teachers' **logits** (``update_student_scheme=avg_logits``,
  as in the reference README's commands), uniform weights ``1/K`` by default; teachers in eval mode.
- Loss ``KL(σ_T(t) ‖ σ_T(s))`` with ``reduction="batchmean"``, ``T = 1`` by default and
  **no T² factor** (so for ``T != 1`` it is ``fedkd.losses`` ``kl`` divided by ``T²``).
- Adam, lr 1e-3, cosine annealing (``CosineAnnealingLR``) over the step budget, stepped after
  every batch; gradient-norm clipping at 5 (:data:`GRAD_CLIP_NORM`), as in the code.
- Batches of the public set are drawn in a shuffled order that is reshuffled on every pass
  (the reference restarts its shuffled loader on ``StopIteration``); the last batch of a pass may
  be smaller.
- Validation accuracy on a labelled server validation split every ``eval_every`` steps; early
  stopping once ``patience`` steps passed since the best evaluation (checked at evaluations only,
  so the run stops at most ``eval_every - 1`` steps after that); the best state is restored.

Ours:

- Step-budget defaults (``configs/strategy/feddf.yaml``) scaled down for small data:
  ``max_steps=200`` (reference 10 000), ``eval_every=20`` (100), ``patience=100`` (1 000 in
  the reference README, 2 000 in the code), ``batch_size=64`` (128).
- The teachers are frozen, so their ensemble targets are computed once on the whole public set
  (in batches) instead of per batch; the result is the same up to floating-point batching.
- The state before distillation (step 0) is evaluated and competes for "best" (the reference's
  ``return_best_model_on_val`` option), so distillation never returns a student that validates worse
  than the one it was given. Ties keep the earlier state.
- If the budget ends between two evaluations, the final state is evaluated too, so no trained
  steps are silently discarded.
- Teacher weights are normalised to sum to 1; the modules' train/eval modes are restored on exit.
- Data may live on any device: batches are moved with ``.to(device)`` to the student's (or each
  teacher's) device; ensemble targets are kept on the student's device.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GRAD_CLIP_NORM", "DistillReport", "distill_ensemble", "ensemble_logits"]

# Max gradient norm of a student step (reference: ``clip_grad_norm_(student.parameters(), 5)``).
GRAD_CLIP_NORM = 5.0


def _device_of(module: nn.Module, default: torch.device) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else default


@torch.no_grad()
def ensemble_logits(
    teachers: Sequence[nn.Module],
    x: Tensor,
    batch_size: int = 512,
    weights: Sequence[float] | None = None,
) -> Tensor:
    """(Weighted) average of the teachers' logits on ``x``, in eval mode: ``[N, C]``.

    ``weights`` (one per teacher, >= 0, not all 0) are normalised to sum to 1; ``None`` means
    uniform. Each batch is moved to each teacher's device; the result is on ``x.device``.
    """
    if len(teachers) == 0:
        raise ValueError("ensemble_logits needs at least one teacher")
    if len(x) == 0:
        raise ValueError("ensemble_logits called on an empty input")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if weights is None:
        w = [1.0 / len(teachers)] * len(teachers)
    else:
        w = [float(v) for v in weights]
        if len(w) != len(teachers):
            raise ValueError(f"got {len(w)} weights for {len(teachers)} teachers")
        if any(not math.isfinite(v) or v < 0 for v in w) or sum(w) <= 0:
            raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w}")
        total = sum(w)
        w = [v / total for v in w]

    modes = [t.training for t in teachers]
    try:
        out: Tensor | None = None
        for teacher, weight in zip(teachers, w, strict=True):
            teacher.eval()
            device = _device_of(teacher, x.device)
            chunks = [
                teacher(x[start : start + batch_size].to(device))[1].to(x.device)
                for start in range(0, len(x), batch_size)
            ]
            logits = torch.cat(chunks).float() * weight
            out = logits if out is None else out + logits
    finally:
        for teacher, mode in zip(teachers, modes, strict=True):
            teacher.train(mode)
    assert out is not None
    return out


@dataclass
class DistillReport:
    steps: int  # optimizer steps taken
    best_val_acc: float  # validation accuracy of the restored (best) state
    initial_val_acc: float  # before distillation
    stopped_early: bool
    # (step, val acc) at every evaluation, starting with step 0
    history: list[tuple[int, float]] = field(default_factory=list)


def _kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """FedDF's ``KL(σ_T(t) ‖ σ_T(s))``, batchmean, no T² factor."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits.to(student_logits.dtype) / temperature, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)


def _endless_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


@torch.no_grad()
def _accuracy(
    model: nn.Module, x: Tensor, y: Tensor, device: torch.device, batch_size: int
) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        _, logits = model(x[start : start + batch_size].to(device))
        correct += (logits.argmax(dim=1) == y[start : start + batch_size].to(device)).sum().item()
    return correct / len(y)


def distill_ensemble(
    student: nn.Module,
    teachers: Sequence[nn.Module],
    public_x: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    *,
    max_steps: int = 500,
    batch_size: int = 64,
    lr: float = 1e-3,
    temperature: float = 1.0,
    eval_every: int = 50,
    patience: int = 200,
    generator: torch.Generator,
) -> DistillReport:
    """Distil the teachers' logit-averaged ensemble into ``student`` in place (FedDF server step).

    Trains for at most ``max_steps`` Adam steps on batches of ``public_x`` against the ensemble
    logits, evaluates accuracy on ``(val_x, val_y)`` at step 0, every ``eval_every`` steps and at
    the last step, stops once ``patience`` steps passed without a strictly better accuracy, and
    loads the best evaluated state into ``student`` before returning.
    """
    if len(public_x) == 0:
        raise ValueError("distill_ensemble: public_x is empty; FedDF needs unlabelled public data")
    if len(val_y) == 0 or len(val_x) == 0:
        raise ValueError(
            "distill_ensemble: the server validation set is empty; FedDF needs a labelled "
            "validation split to pick the best student"
        )
    if len(val_x) != len(val_y):
        raise ValueError(f"val_x has {len(val_x)} rows but val_y has {len(val_y)}")
    if len(teachers) == 0:
        raise ValueError("distill_ensemble needs at least one teacher")
    for name, value, low in (
        ("max_steps", max_steps, 0),
        ("batch_size", batch_size, 1),
        ("eval_every", eval_every, 1),
        ("patience", patience, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise ValueError("distill_ensemble: the student has no trainable parameters")

    device = params[0].device
    was_training = student.training
    targets = ensemble_logits(teachers, public_x, batch_size=max(batch_size, 512)).to(device)

    def validate() -> float:
        acc = _accuracy(student, val_x, val_y, device, max(batch_size, 512))
        student.train()
        return acc

    initial = validate()
    history = [(0, initial)]
    best_acc, best_step = initial, 0
    best_state = copy.deepcopy(student.state_dict())
    stopped_early = False
    step = 0

    if max_steps > 0:
        optimizer = torch.optim.Adam(params, lr=lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_steps)
        batches = _endless_batches(len(public_x), batch_size, generator)
        student.train()
        while step < max_steps:
            idx = next(batches)
            _, logits = student(public_x[idx].to(device))
            loss = _kl(logits, targets[idx.to(device)], temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, GRAD_CLIP_NORM)
            optimizer.step()
            scheduler.step()
            step += 1
            if step % eval_every == 0 or step == max_steps:
                acc = validate()
                history.append((step, acc))
                if acc > best_acc:
                    best_acc, best_step = acc, step
                    best_state = copy.deepcopy(student.state_dict())
                elif step - best_step >= patience:
                    stopped_early = step < max_steps
                    break

    student.load_state_dict(best_state)
    student.train(was_training)
    return DistillReport(
        steps=step,
        best_val_acc=best_acc,
        initial_val_acc=initial,
        stopped_early=stopped_early,
        history=history,
    )
