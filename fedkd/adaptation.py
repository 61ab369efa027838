"""FedKA's training loops (Sun, Chong, Ochiai, arXiv 2203.11635; docs/algorithms.md §2.3).

- :func:`adapt_locally`: a client's round, steps 1-2 of §2.3. Phase 1 draws
  ``batches`` source batches, each paired with a target batch, and minimises
  ``CE(class(φ(x_s)), y_s)`` plus, for the adversarial methods, the domain loss
  ``CE(dom(GRL(φ(x_s))), 0) + CE(dom(GRL(φ(x_t))), 1)``. Phase 2 (MMD methods) draws
  another ``batches`` pairs and steps every ``mmd_every`` batches on
  ``λ_p · MK-MMD²(φ_k(x_s), φ_g(x_t)) / mmd_every``, where ``φ_g`` is the frozen global
  extractor the server sent.
- :func:`finetune_on_votes`: the server's step 4: Adam steps on
  ``λ_p · CE(global(x_t), ŷ_vote)`` over ``batches`` target batches.

The ramp is ``λ_p = dann_lambda(p, γ)`` with ``p = (i + r·L) / (R·L)``: batch ``i`` of
``L`` in round ``r`` (0-based) of ``R``. The GRL and both losses use it.

``method`` selects the official notebook's ablations: ``source`` (method 0: CE only,
i.e. source-only FedAvg), ``dann`` (1: f-DANN, adversarial only), ``fedka`` (2:
adversarial + MMD), ``mmd`` (3: MMD only).

``mmd_accumulate``: ``sum`` (default, the evident intent) sums the ``mmd_every``
batches' losses before each step; ``official`` reproduces the notebook's
``mmd_loss_total =+ mmd_loss*alpha`` (an assignment), so each step uses only the last
batch's loss divided by ``mmd_every``.

Choices that are ours: batches are drawn without replacement from a seeded permutation
that is renewed when it runs out (the notebook iterates shuffled data loaders); the
optimizer is created afresh each round (client Adam state is not kept between rounds,
the server's neither); a final partial MMD accumulation (``batches`` not a multiple of
``mmd_every``) still gets its step; the domain head returns logits and is trained with
``cross_entropy`` (the notebook's LogSoftmax + NLL).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedkd.domain import DomainHead, dann_lambda, mk_mmd
from fedkd.errors import ConfigError
from fedkd.strategy_options import FEDKA_METHODS, FEDKA_MMD_ACCUMULATE, FEDKA_RAMP_ON
from fedkd.train import make_optimizer

METHODS = FEDKA_METHODS
ADVERSARIAL = ("dann", "fedka")
MATCHING = ("fedka", "mmd")
MMD_ACCUMULATE = FEDKA_MMD_ACCUMULATE
RAMP_ON = FEDKA_RAMP_ON

# Weight-array name prefixes inside one ModelWeights payload (see split_arrays)
HEAD_PREFIX = "domain_head."
REFERENCE_PREFIX = "reference."


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"FedKA method must be one of {', '.join(METHODS)} (got {method!r})")
    return method


def split_arrays(
    arrays: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(model, domain head, reference extractor)`` arrays of one FedKA weights payload.

    The server sends one flat dict: the model's arrays as they are, the domain head's
    under ``domain_head.``, and, only when clients load different weights from the
    extractor they match (``broadcast: fedavg``), the reference model's under
    ``reference.``.
    """
    model, head, reference = {}, {}, {}
    for name, value in arrays.items():
        if name.startswith(HEAD_PREFIX):
            head[name[len(HEAD_PREFIX) :]] = value
        elif name.startswith(REFERENCE_PREFIX):
            reference[name[len(REFERENCE_PREFIX) :]] = value
        else:
            model[name] = value
    return model, head, reference


def join_arrays(
    model: Mapping[str, Any],
    head: Mapping[str, Any] | None = None,
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The inverse of :func:`split_arrays`."""
    out = dict(model)
    out.update({HEAD_PREFIX + k: v for k, v in (head or {}).items()})
    out.update({REFERENCE_PREFIX + k: v for k, v in (reference or {}).items()})
    return out


def ramp(step: int, steps_per_round: int, round_index: int, num_rounds: int, gamma: float) -> float:
    """FedKA's ``λ_p`` at batch ``step`` of round ``round_index`` (0-based) of ``num_rounds``."""
    progress = (step + round_index * steps_per_round) / (num_rounds * steps_per_round)
    return dann_lambda(progress, gamma)


def batch_stream(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless index batches of ``min(batch_size, n)``: seeded permutations, renewed when used up."""
    if n < 1:
        raise ConfigError("cannot draw batches from an empty set")
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


@dataclass
class AdaptReport:
    ce_loss: float  # mean source cross-entropy (phase 1)
    domain_loss: float  # mean domain-classification loss (0 unless adversarial)
    domain_acc: float  # domain head accuracy on source+target batches (nan unless adversarial)
    mmd_loss: float  # mean ramped MK-MMD² (0 unless MMD)


def adapt_locally(
    model: nn.Module,
    source_x: Tensor,
    source_y: Tensor,
    target_x: Tensor,
    *,
    method: str,
    head: DomainHead | None,
    reference: nn.Module | None,
    batches: int,
    batch_size: int,
    optimizer: Mapping[str, Any],
    round_index: int,
    num_rounds: int,
    generator: torch.Generator,
    gamma: float = 5.0,
    mmd_every: int = 8,
    mmd_accumulate: str = "sum",
    kernel_mul: float = 2.0,
    kernel_num: int = 5,
) -> AdaptReport:
    """One client round of FedKA (or an ablation); trains ``model`` (and ``head``) in place."""
    check_method(method)
    if method in ADVERSARIAL and head is None:
        raise ConfigError(f"method {method!r} needs a domain head")
    if method in MATCHING and reference is None:
        raise ConfigError(f"method {method!r} needs the global reference model")
    if mmd_accumulate not in MMD_ACCUMULATE:
        raise ConfigError(f"mmd_accumulate must be 'sum' or 'official' (got {mmd_accumulate!r})")
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    opt = make_optimizer(params, optimizer)
    sources = batch_stream(len(source_y), batch_size, generator)
    targets = batch_stream(len(target_x), batch_size, generator)
    model.train()
    if head is not None:
        head.train()

    ce_total = dom_total = 0.0
    dom_hits = dom_seen = 0
    for i in range(batches):
        s, t = next(sources), next(targets)
        lam = ramp(i, batches, round_index, num_rounds, gamma)
        features_s, logits_s = model(source_x[s])
        loss = F.cross_entropy(logits_s, source_y[s])
        ce_total += float(loss.detach())
        if method in ADVERSARIAL:
            features_t, _ = model(target_x[t])
            dom_s, dom_t = head(features_s, grl_lambda=lam), head(features_t, grl_lambda=lam)
            zeros = torch.zeros(len(s), dtype=torch.long, device=dom_s.device)
            ones = torch.ones(len(t), dtype=torch.long, device=dom_t.device)
            dom_loss = F.cross_entropy(dom_s, zeros) + F.cross_entropy(dom_t, ones)
            loss = loss + dom_loss
            dom_total += float(dom_loss.detach())
            dom_hits += int((dom_s.argmax(1) == 0).sum()) + int((dom_t.argmax(1) == 1).sum())
            dom_seen += len(s) + len(t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    mmd_total = 0.0
    if method in MATCHING:
        mmd_total = _match_embeddings(
            model, reference, source_x, target_x, sources, targets, opt,
            batches=batches, round_index=round_index, num_rounds=num_rounds, gamma=gamma,
            mmd_every=mmd_every, accumulate=mmd_accumulate,
            kernel_mul=kernel_mul, kernel_num=kernel_num,
        )  # fmt: skip
    return AdaptReport(
        ce_loss=ce_total / max(batches, 1),
        domain_loss=dom_total / max(batches, 1),
        domain_acc=dom_hits / dom_seen if dom_seen else float("nan"),
        mmd_loss=mmd_total / max(batches, 1),
    )


def _match_embeddings(
    model, reference, source_x, target_x, sources, targets, opt, *,
    batches, round_index, num_rounds, gamma, mmd_every, accumulate, kernel_mul, kernel_num,
) -> float:  # fmt: skip
    """Phase 2: ``λ_p · MK-MMD²(φ_k(x_s), φ_g(x_t))`` with an optimizer step every ``mmd_every``."""
    reference.eval()
    total = 0.0
    pending: Tensor | None = None
    opt.zero_grad(set_to_none=True)
    for i in range(batches):
        s, t = next(sources), next(targets)
        lam = ramp(i, batches, round_index, num_rounds, gamma)
        features_s, _ = model(source_x[s])
        with torch.no_grad():
            features_t, _ = reference(target_x[t])
        n = min(len(s), len(t))
        mmd = lam * mk_mmd(
            features_s[:n].flatten(1), features_t[:n].flatten(1), kernel_mul, kernel_num
        )
        total += float(mmd.detach())
        # official: `mmd_loss_total =+ mmd_loss*alpha` keeps only the last batch's loss
        pending = mmd if accumulate == "official" or pending is None else pending + mmd
        if (i + 1) % mmd_every == 0 or i == batches - 1:
            (pending / mmd_every).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            pending = None
    return total


def finetune_on_votes(
    model: nn.Module,
    target_x: Tensor,
    labels: Tensor,
    *,
    batches: int,
    batch_size: int,
    optimizer: Mapping[str, Any],
    round_index: int,
    num_rounds: int,
    generator: torch.Generator,
    gamma: float = 5.0,
    ramp_on: str = "loss",
) -> float:
    """FedKA step 4: ``λ_p``-weighted CE on the pseudo-labelled target samples (labels >= 0).

    ``ramp_on: loss`` is the notebook's ``λ_p · NLL``; with Adam that scaling cancels
    out (Adam is invariant to the scale of the loss), so the "adoption rate" has no
    effect. ``ramp_on: lr`` (ours) multiplies the learning rate by ``λ_p`` instead, so
    early rounds, whose votes come from barely trained models, move the global model
    less. Samples without a pseudo-label (``-1``: below the consensus threshold or not
    answered by Confident-GNMax) are left out. Returns the mean ramped loss (0 if no
    sample has a label).
    """
    if ramp_on not in RAMP_ON:
        raise ConfigError(f"ramp_on must be 'loss' or 'lr' (got {ramp_on!r})")
    keep = torch.nonzero(labels >= 0).flatten()
    if len(keep) == 0 or batches < 1:
        return 0.0
    x, y = target_x[keep], labels[keep]
    opt = make_optimizer(model.parameters(), optimizer)
    base_lrs = [group["lr"] for group in opt.param_groups]
    stream = batch_stream(len(y), batch_size, generator)
    model.train()
    total = 0.0
    for i in range(batches):
        b = next(stream)
        lam = ramp(i, batches, round_index, num_rounds, gamma)
        _, logits = model(x[b])
        loss = lam * F.cross_entropy(logits, y[b])
        if ramp_on == "lr":
            for group, lr in zip(opt.param_groups, base_lrs, strict=True):
                group["lr"] = lr * lam
            loss = loss / lam if lam > 0 else loss * 0.0
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * (lam if ramp_on == "lr" else 1.0)
    return total / batches
