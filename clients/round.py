"""One client round, driven by the strategy's plan; no Flower types here.

The server's strategy sends a *plan* (plain dict) saying how to use the knowledge
it sent and what knowledge to extract, so a new strategy needs no client edit
as long as it uses these building blocks:

``plan = {
    "load_weights": bool,              # replace the model by the received weights (FedAvg)
    "eval_received": bool,             # evaluate the received weights before training
    "distill": None | {"loss", "temperature", "epochs", "batch_size", "optimizer", "when"},
                                       # fit public-set targets, "before" or "after" training
    "regulariser": None | {"loss", "beta", "temperature"},   # per-label teacher (FD)
    "extract": {"kind": "none" | "class_logits" | "public" | "weights",
                "space": "logits" | "probs", "temperature": float},
}``

Order inside a round: load -> [evaluate received] -> distil (before) -> train
(+ regulariser) -> distil (after) -> evaluate -> extract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from clients.runtime import ClientTensors
from fedkd.errors import PayloadError
from fedkd.knowledge import ClassLogits, ModelWeights, PublicLogits
from fedkd.losses import LOSSES, check_space
from fedkd.train import distill, evaluate, make_optimizer, predict, train_supervised
from fedkd.weights import arrays_to_model, model_to_arrays


@dataclass
class RoundOutput:
    payload: Any | None  # a fedkd.knowledge payload, or None
    metrics: dict[str, float | int] = field(default_factory=dict)


def round_generator(seed: int, server_round: int, partition_id: int) -> torch.Generator:
    """A batch-order RNG that depends only on (seed, round, client)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + server_round * 10_007 + partition_id)


def _fd_regulariser(teacher: ClassLogits, spec: dict[str, Any], device: torch.device):
    """FD's online distillation term: beta * D(student(x), teacher[y]) on labels the teacher has."""
    loss_fn = LOSSES.get(spec["loss"])
    check_space(spec["loss"], "logits")
    table = torch.from_numpy(teacher.logits.astype(np.float32)).to(device)
    present = torch.from_numpy(teacher.counts > 0).to(device)
    beta, temperature = float(spec["beta"]), float(spec["temperature"])

    def regulariser(_features: Tensor, logits: Tensor, y: Tensor) -> Tensor:
        mask = present[y]
        if not bool(mask.any()):
            return logits.sum() * 0.0
        return beta * loss_fn(logits[mask], table[y[mask]], temperature=temperature)

    return regulariser


def _distill_public(
    model, data: ClientTensors, teacher: PublicLogits, spec, client_cfg, gen, device
) -> float:
    check_space(spec["loss"], teacher.space)
    indices = torch.from_numpy(teacher.indices.astype(np.int64))
    x = data.public_x[indices].to(device)
    targets = torch.from_numpy(teacher.values.astype(np.float32)).to(device)
    optimizer = make_optimizer(model.parameters(), spec.get("optimizer") or client_cfg["optimizer"])
    return distill(
        model,
        x,
        targets,
        loss_fn=LOSSES.get(spec["loss"]),
        temperature=float(spec.get("temperature", 1.0)),
        epochs=int(spec["epochs"]),
        batch_size=int(spec["batch_size"]),
        optimizer=optimizer,
        generator=gen,
    )


def _evaluate(model, data: ClientTensors, batch: int, device) -> dict[str, float]:
    local_acc, local_loss = evaluate(model, data.test_x.to(device), data.test_y.to(device), batch)
    global_acc, global_loss = evaluate(
        model, data.global_x.to(device), data.global_y.to(device), batch
    )
    return {
        "local_test_acc": local_acc,
        "local_test_loss": local_loss,
        "global_test_acc": global_acc,
        "global_test_loss": global_loss,
    }


def run_round(
    model: nn.Module,
    data: ClientTensors,
    *,
    plan: dict[str, Any],
    client_cfg: dict[str, Any],
    received: Any | None,
    request_indices: np.ndarray | None,
    generator: torch.Generator,
    server_round: int,
    device: torch.device,
) -> RoundOutput:
    """Train/distil/evaluate ``model`` in place and return what to upload."""
    metrics: dict[str, float | int] = {
        "num_train": len(data.train_y),
        "num_local_test": len(data.test_y),
    }
    eval_batch = int(client_cfg["eval_batch_size"])

    if plan.get("load_weights"):
        if not isinstance(received, ModelWeights):
            raise PayloadError("plan asks to load weights but no ModelWeights were sent")
        arrays_to_model(model, received.arrays)
    if plan.get("eval_received"):
        metrics.update(_evaluate(model, data, eval_batch, device))
        metrics["eval_round"] = server_round - 1

    distill_spec = plan.get("distill")
    distill_loss = 0.0
    if (
        distill_spec
        and isinstance(received, PublicLogits)
        and distill_spec.get("when", "before") == "before"
    ):
        distill_loss = _distill_public(
            model, data, received, distill_spec, client_cfg, generator, device
        )

    reg_spec = plan.get("regulariser")
    regulariser = None
    if reg_spec and isinstance(received, ClassLogits):
        regulariser = _fd_regulariser(received, reg_spec, device)
    extract = plan.get("extract", {"kind": "none"})
    result = train_supervised(
        model,
        data.train_x.to(device),
        data.train_y.to(device),
        epochs=int(client_cfg["epochs"]),
        batch_size=int(client_cfg["batch_size"]),
        optimizer=make_optimizer(model.parameters(), client_cfg["optimizer"]),
        generator=generator,
        regulariser=regulariser,
        num_classes=data.num_classes if extract["kind"] == "class_logits" else None,
    )
    if distill_spec and isinstance(received, PublicLogits) and distill_spec.get("when") == "after":
        distill_loss = _distill_public(
            model, data, received, distill_spec, client_cfg, generator, device
        )

    metrics.update(train_loss=result.loss, distill_loss=distill_loss + result.reg_loss)
    if not plan.get("eval_received"):
        metrics.update(_evaluate(model, data, eval_batch, device))
        metrics["eval_round"] = server_round

    return RoundOutput(
        payload=_extract(model, data, extract, result, request_indices, eval_batch, device),
        metrics=metrics,
    )


def _extract(model, data: ClientTensors, spec, result, request_indices, batch, device):
    kind = spec["kind"]
    if kind == "none":
        return None
    if kind == "weights":
        return ModelWeights(model_to_arrays(model))
    if kind == "class_logits":
        counts = result.class_counts
        means = result.class_logit_sums / np.maximum(counts, 1)[:, None]
        return ClassLogits(logits=means.astype(np.float32), counts=counts)
    if kind == "public":
        if request_indices is None:
            raise PayloadError("plan asks for public-set predictions but no indices were sent")
        idx = torch.from_numpy(request_indices.astype(np.int64))
        _, logits = predict(model, data.public_x[idx].to(device), batch)
        space = spec.get("space", "logits")
        values = (
            logits
            if space == "logits"
            else torch.softmax(logits / float(spec.get("temperature", 1.0)), dim=1)
        )
        return PublicLogits(
            indices=request_indices.astype(np.int64),
            values=values.cpu().numpy().astype(np.float32),
            space=space,
        )
    raise PayloadError(f"unknown extract kind '{kind}' in the strategy's plan")
