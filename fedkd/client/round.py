"""One client round, driven by the strategy's plan; no Flower types here.

The server's strategy sends a :class:`fedkd.plan.Plan` saying how to use the knowledge it
sent and what knowledge to extract, so a new strategy needs no client edit as long as it
uses these building blocks (see ``fedkd/plan.py`` for every field):

- ``load_weights`` / ``eval_received``: replace the model by received ``ModelWeights``
  (FedAvg, FedDF) and evaluate them before training;
- ``distill``: fit received public-set targets before or after training (a budget of
  epochs or of optimiser steps: ``fedkd.schedule``); the round then also reports the
  global-test accuracy after distillation and after local training;
- ``regulariser``: a per-label teacher term added to CE from a received per-class payload
  (FD logits, FedProto prototypes: the payload kind's ``collects`` says which output);
- ``adapt``: FedKA's domain-adversarial + MMD training instead of plain local training;
- ``extract``: the payload kind to upload (``fedkd.knowledge``; the kind extracts itself
  from the round, ``Payload.extract``), at the end or right after training;
- ``confusion``, ``evaluate_prototypes``, ``train_epochs``.

Order inside a round: load -> [evaluate received] -> distil (before) -> train
(+ regulariser, or the FedKA adaptation) -> [extract, if at after_train] -> distil (after) -> evaluate
-> [extract, if at end].
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fedkd.adaptation import ADVERSARIAL, MATCHING, adapt_locally, join_arrays, split_arrays
from fedkd.client.runtime import ClientTensors
from fedkd.confusion import GLOBAL_CONFUSION
from fedkd.domain import DomainHead
from fedkd.errors import PayloadError
from fedkd.knowledge import PAYLOADS, ModelWeights, PerClass, Prototypes, PublicLogits, Source
from fedkd.losses import LOSSES, check_space
from fedkd.plan import NONE, AdaptSpec, DistillSpec, ExtractSpec, Plan, RegulariserSpec
from fedkd.privacy.swing import swing_payload
from fedkd.train import (
    TrainResult,
    confusion_matrix,
    distill,
    evaluate,
    make_optimizer,
    predict,
    train_supervised,
)
from fedkd.weights import arrays_to_model, model_to_arrays


@dataclass
class RoundOutput:
    payload: Any | None  # a fedkd.knowledge payload, or None
    metrics: dict[str, float | int] = field(default_factory=dict)


def round_generator(seed: int, server_round: int, partition_id: int) -> torch.Generator:
    """A batch-order RNG that depends only on (seed, round, client)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + server_round * 10_007 + partition_id)


def _regulariser(received: Any, spec: RegulariserSpec, device: torch.device):
    """``beta * D(output(x), table[y])`` on the labels the received table covers.

    FD (Jeong et al. 2018): the output is the logits and the table the per-label
    teacher logits; FedProto (Tan et al. 2022): the features and the global
    prototypes, with MSE. Which output: the payload kind's ``collects``.
    """
    kind = PAYLOADS.get(spec.kind)
    if not issubclass(kind, PerClass):
        raise PayloadError(
            f"the plan's regulariser needs a per-class payload kind, not {spec.kind}"
        )
    if getattr(received, "kind", None) != spec.kind:
        return None
    space = kind.collects
    check_space(spec.loss, space)
    loss_fn = LOSSES.get(spec.loss)
    table = torch.from_numpy(np.asarray(received.table(), np.float32)).to(device)
    present = torch.from_numpy(np.asarray(received.counts) > 0).to(device)
    beta, temperature = float(spec.beta), float(spec.temperature)
    use_features = space == "features"

    def regulariser(features: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        mask = present[y]
        output = features if use_features else logits
        if not bool(mask.any()):
            return output.sum() * 0.0
        return beta * loss_fn(output[mask], table[y[mask]], temperature=temperature)

    return regulariser


def _distill_public(
    model, data: ClientTensors, teacher: PublicLogits, spec: DistillSpec, client_cfg, gen, device
) -> float:
    check_space(spec.loss, teacher.space)
    steps = spec.steps  # a budget in optimiser steps (fedkd.schedule); else epochs
    if steps is not None and int(steps) <= 0:
        return 0.0
    indices = torch.from_numpy(teacher.indices.astype(np.int64))
    optimizer = make_optimizer(model.parameters(), spec.optimizer or client_cfg["optimizer"])
    ce_weight = float(spec.ce_weight)
    temps = teacher.temperatures if spec.loss == "swing_kl" else None
    return distill(
        model,
        data.public_x[indices].to(device),
        torch.from_numpy(teacher.values.astype(np.float32)).to(device),
        loss_fn=LOSSES.get(spec.loss),
        temperature=float(spec.temperature),
        epochs=int(spec.epochs),
        steps=None if steps is None else int(steps),
        batch_size=int(spec.batch_size),
        optimizer=optimizer,
        generator=gen,
        ce_data=(data.train_x.to(device), data.train_y.to(device)) if ce_weight > 0 else None,
        ce_weight=ce_weight,
        kd_weight=float(spec.kd_weight),
        temperatures=None if temps is None else torch.from_numpy(temps.astype(np.float32)),
    )


def _global_acc(model, data: ClientTensors, batch: int, device) -> float:
    """Global-test accuracy between the round's two steps: a distillation health metric
    (``after_distill_global_acc`` / ``after_train_global_acc``), never used for training."""
    return float(evaluate(model, data.global_x.to(device), data.global_y.to(device), batch)[0])


@torch.no_grad()
def nearest_prototype_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, protos: Prototypes, batch: int
) -> float:
    """FedProto inference: the label of the nearest present global prototype (squared L2)."""
    present = np.flatnonzero(np.asarray(protos.counts) > 0)
    if len(y) == 0 or len(present) == 0:
        return float("nan")
    features, _ = predict(model, x, batch)
    table = torch.from_numpy(np.asarray(protos.prototypes, np.float32)[present]).to(features.device)
    nearest = torch.cdist(features, table).argmin(dim=1).cpu().numpy()
    return float((present[nearest] == y.cpu().numpy()).mean())


def evaluate_client(
    model,
    data: ClientTensors,
    batch: int,
    device,
    protos: Prototypes | None = None,
    confusion: bool = False,
) -> dict[str, float | np.ndarray]:
    """Accuracy and loss on the local and global test sets.

    ``confusion``: also the global-test confusion counts under
    ``GLOBAL_CONFUSION`` (an int64 ``[C, C]`` array, not a metric: the
    ClientApp moves it into the reply's ``eval`` record). Off unless the plan
    asks, so ordinary rounds pay no extra pass.
    """
    out: dict[str, float | np.ndarray] = {}
    for name, x, y in (
        ("local_test", data.test_x, data.test_y),
        ("global_test", data.global_x, data.global_y),
    ):
        x, y = x.to(device), y.to(device)
        out[f"{name}_acc"], out[f"{name}_loss"] = evaluate(model, x, y, batch)
        if protos is not None:
            out[f"{name}_proto_acc"] = nearest_prototype_accuracy(model, x, y, protos, batch)
    if confusion:
        out[GLOBAL_CONFUSION] = confusion_matrix(
            model, data.global_x.to(device), data.global_y.to(device), data.num_classes, batch
        )
    return out


def run_round(
    model: nn.Module,
    data: ClientTensors,
    *,
    plan: Plan,
    client_cfg: dict[str, Any],
    received: Any | None,
    request_indices: np.ndarray | None,
    generator: torch.Generator,
    server_round: int,
    device: torch.device,
) -> RoundOutput:
    """Train/distil/evaluate ``model`` in place and return what to upload."""
    if not isinstance(plan, Plan):
        raise TypeError(f"run_round needs a fedkd.plan.Plan (got {type(plan).__name__})")
    metrics: dict[str, float | int] = {
        "num_train": len(data.train_y),
        "num_local_test": len(data.test_y),
    }
    eval_batch = int(client_cfg["eval_batch_size"])
    extract = plan.extract
    payload_kind = None if extract.kind == NONE else PAYLOADS.get(extract.kind)
    distill_spec = plan.distill if isinstance(received, PublicLogits) else None
    protos = received if plan.evaluate_prototypes and isinstance(received, Prototypes) else None

    adapt = plan.adapt
    head_arrays: dict[str, np.ndarray] = {}
    reference_arrays: dict[str, np.ndarray] = {}
    if plan.load_weights:
        if not isinstance(received, ModelWeights):
            raise PayloadError("plan asks to load weights but no ModelWeights were sent")
        model_arrays, head_arrays, reference_arrays = split_arrays(received.arrays)
        arrays_to_model(model, model_arrays if adapt else received.arrays)
    if plan.eval_received:
        metrics.update(
            evaluate_client(model, data, eval_batch, device, confusion=plan.confusion),
            eval_round=server_round - 1,
        )

    distill_loss = 0.0
    health: dict[str, float] = {}  # distillation health (see _global_acc)
    if distill_spec and distill_spec.when == "before":
        distill_loss = _distill_public(
            model, data, received, distill_spec, client_cfg, generator, device
        )
        if distill_spec.takes_steps():
            health["after_distill_global_acc"] = _global_acc(model, data, eval_batch, device)

    reg_spec = plan.regulariser
    head = None
    if adapt:
        result, head, adapt_metrics = _adapt(
            model, data, adapt, head_arrays, reference_arrays, generator, device
        )
        metrics.update(adapt_metrics)
    else:
        result = train_supervised(
            model,
            data.train_x.to(device),
            data.train_y.to(device),
            epochs=int(plan.train_epochs or client_cfg["epochs"]),
            batch_size=int(client_cfg["batch_size"]),
            optimizer=make_optimizer(model.parameters(), client_cfg["optimizer"]),
            generator=generator,
            regulariser=_regulariser(received, reg_spec, device) if reg_spec else None,
            collect=None if payload_kind is None else payload_kind.collects,
            num_classes=data.num_classes,
        )
    payload = None
    if extract.at == "after_train":
        payload = _extract(model, data, extract, result, request_indices, eval_batch, device, head)

    if distill_spec and distill_spec.when == "after":
        if distill_spec.takes_steps():
            health["after_train_global_acc"] = _global_acc(model, data, eval_batch, device)
        distill_loss = _distill_public(
            model, data, received, distill_spec, client_cfg, generator, device
        )

    metrics.update(train_loss=result.loss, distill_loss=distill_loss + result.reg_loss)
    if not plan.eval_received:
        metrics.update(
            evaluate_client(model, data, eval_batch, device, protos, plan.confusion),
            eval_round=server_round,
        )
        if health:  # the round's last step is the other half of the pair
            other = "after_train" if "after_distill_global_acc" in health else "after_distill"
            health[f"{other}_global_acc"] = float(metrics["global_test_acc"])
    metrics.update(health)
    if extract.at == "end":
        payload = _extract(model, data, extract, result, request_indices, eval_batch, device, head)
    if extract.swing and payload is not None:  # Swing soft targets (fedkd.privacy.swing)
        payload = swing_payload(
            payload,
            received,
            extract.swing,
            data.public_canary,
            generator,
            seeded=extract.swing_seeded,
        )
    return RoundOutput(payload=payload, metrics=metrics)


def _adapt(
    model, data: ClientTensors, spec: AdaptSpec, head_arrays, reference_arrays, generator, device
):
    """FedKA's client round on (private source, public target) batches; see fedkd.adaptation."""
    method = spec.method
    head = reference = None
    if method in ADVERSARIAL:
        if not head_arrays:
            raise PayloadError(f"FedKA method {method!r} needs the domain head's weights")
        head = DomainHead(int(model.feature_dim), int(spec.domain_hidden)).to(device)
        arrays_to_model(head, head_arrays)
    if method in MATCHING:  # the global extractor: the loaded model unless sent separately
        reference = copy.deepcopy(model)
        if reference_arrays:
            arrays_to_model(reference, reference_arrays)
    report = adapt_locally(
        model,
        data.train_x.to(device),
        data.train_y.to(device),
        data.public_x.to(device),
        method=method,
        head=head,
        reference=reference,
        batches=int(spec.batches),
        batch_size=int(spec.batch_size),
        optimizer=spec.optimizer,
        round_index=int(spec.round_index),
        num_rounds=int(spec.num_rounds),
        generator=generator,
        gamma=float(spec.gamma),
        mmd_every=int(spec.mmd_every),
        mmd_accumulate=spec.mmd_accumulate,
        kernel_mul=float(spec.kernel_mul),
        kernel_num=int(spec.kernel_num),
    )
    result = TrainResult(loss=report.ce_loss, reg_loss=report.domain_loss + report.mmd_loss)
    metrics = {"domain_loss": report.domain_loss, "mmd_loss": report.mmd_loss}
    if head is not None:
        metrics["domain_acc"] = report.domain_acc
    return result, head, metrics


def _extract(
    model,
    data: ClientTensors,
    spec: ExtractSpec,
    result: TrainResult,
    request_indices,
    batch,
    device,
    head=None,
):
    """The payload the plan's ``extract`` names, built by its kind (``Payload.extract``)."""
    if spec.kind == NONE:
        return None

    def model_arrays() -> dict[str, np.ndarray]:
        arrays = model_to_arrays(model)
        return join_arrays(arrays, model_to_arrays(head)) if head is not None else arrays

    def public_logits() -> Tensor:
        if request_indices is None:
            raise PayloadError("plan asks for public-set predictions but no indices were sent")
        idx = torch.from_numpy(request_indices.astype(np.int64))
        return predict(model, data.public_x[idx].to(device), batch)[1]

    source = Source(
        model_arrays=model_arrays,
        class_means=result.class_means,
        class_counts=result.class_counts,
        public_logits=public_logits,
        request_indices=request_indices,
    )
    return PAYLOADS.get(spec.kind).extract(source, spec)
