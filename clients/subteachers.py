"""Sub-teacher release on the client (record-level privacy; fedkd.privacy.subteachers).

When the plan carries ``teachers`` (``fedkd.plan.TeachersSpec``: shards, sigma, seeded; noise from OS entropy
unless ``seeded``, :mod:`fedkd.privacy.noise`), the client keeps one
model per disjoint shard of its training data in ``context.state`` (``teacher_<t>``),
trains each on its shard only, and uploads the noised mean of their probabilities on the
requested public samples instead of its own model's predictions. Its personal model
trains and is evaluated as usual; it is never released.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from fedkd.client.runtime import ClientTensors
from fedkd.errors import PayloadError
from fedkd.knowledge import PublicLogits
from fedkd.models import build_model, spec_for_client
from fedkd.plan import TeachersSpec
from fedkd.privacy.noise import noise_rng
from fedkd.privacy.subteachers import release, shard_of
from fedkd.train import make_optimizer, predict, train_supervised
from fedkd.weights import arrays_to_model, model_to_arrays
from protocol import wire

_STREAM = 13


def load_teachers(context, cfg: dict[str, Any], pid: int, data: ClientTensors, shards: int, device):
    """The client's shard models, restored from ``context.state`` or freshly seeded."""
    spec = spec_for_client(cfg["model"], pid)
    teachers = []
    for t in range(shards):
        torch.manual_seed(cfg["seed"] * 7919 + pid * 131 + t + 1)
        model = build_model(
            spec, data.input_shape, data.num_classes, int(cfg["model"]["feature_dim"])
        )
        key = f"teacher_{t}"
        if key in context.state.array_records:
            arrays_to_model(model, wire.record_to_arrays(context.state.array_records[key]))
        teachers.append(model.to(device))
    return teachers


def save_teachers(context, teachers: list[nn.Module]) -> None:
    for t, model in enumerate(teachers):
        context.state[f"teacher_{t}"] = wire.arrays_to_record(model_to_arrays(model))


def teacher_release(
    teachers: list[nn.Module],
    data: ClientTensors,
    spec: TeachersSpec,
    request_indices: np.ndarray | None,
    client_cfg: dict[str, Any],
    generator: torch.Generator,
    device: torch.device,
    seed: int,
    server_round: int,
    pid: int,
) -> PublicLogits:
    """Train every shard model on its shard, then release their noised mean probabilities."""
    if request_indices is None:
        raise PayloadError("plan asks for a sub-teacher release but no indices were sent")
    shard = torch.from_numpy(shard_of(len(data.train_y), len(teachers), seed * 1_000 + pid))
    for t, model in enumerate(teachers):
        mine = torch.nonzero(shard == t).flatten()
        train_supervised(
            model,
            data.train_x[mine].to(device),
            data.train_y[mine].to(device),
            epochs=int(client_cfg["epochs"]),
            batch_size=int(client_cfg["batch_size"]),
            optimizer=make_optimizer(model.parameters(), client_cfg["optimizer"]),
            generator=generator,
        )
    idx = torch.from_numpy(request_indices.astype(np.int64))
    x = data.public_x[idx].to(device)
    batch = int(client_cfg["eval_batch_size"])
    probs = np.stack([torch.softmax(predict(m, x, batch)[1], 1).cpu().numpy() for m in teachers])
    rng = noise_rng(spec.seeded, [seed, server_round, pid, _STREAM])
    values = release(probs, float(spec.sigma), rng).astype(np.float32)
    return PublicLogits(indices=request_indices.astype(np.int64), values=values, space="probs")
