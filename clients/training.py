"""The ClientApp's torch side: the client's model, its round and its evaluation.

``clients.app`` imports this module at a client's first ``train`` or ``evaluate``
message, not at its own import: the simulation's launcher imports ``clients.app`` for
the ClientApp object only and never loads torch for it (docs/performance.md, "A
launcher without torch"). The Ray workers import it while they warm up.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict

from clients.app import MODEL_STATE, _put_metrics, checked_node, tensors
from clients.subteachers import load_teachers, save_teachers, teacher_release
from fedkd.client import attacks, faults
from fedkd.client.round import evaluate_client, round_generator, run_round
from fedkd.client.runtime import configure_torch
from fedkd.knowledge import ModelWeights
from fedkd.models import build_model, spec_for_client
from fedkd.train import resolve_device
from fedkd.weights import arrays_to_model, load_packed, packed_state
from protocol import wire


def load_model(context: Context, cfg: dict[str, Any], pid: int, data) -> torch.nn.Module:
    """The client's personal model: restored from context.state, else freshly seeded.

    A restored model is loaded into this process's one module of that architecture
    (``_skeleton``): every parameter and buffer is overwritten (``load_packed``
    checks the layout), so building and initialising a new module each round, a tenth
    of a small client's round, buys nothing.
    """
    spec = spec_for_client(cfg["model"], pid)
    feature_dim = int(cfg["model"]["feature_dim"])
    state = wire.get_record(context.state, MODEL_STATE, ArrayRecord)
    if state is None:
        # every draw of the client's computation has its own seeded generator; the
        # global RNG only initialises new modules
        torch.manual_seed(cfg["seed"] * 7919 + pid)
        return build_model(spec, data.input_shape, data.num_classes, feature_dim)
    key = json.dumps(spec, sort_keys=True)
    model = _skeleton(key, tuple(data.input_shape), data.num_classes, feature_dim)
    load_packed(model, wire.record_to_arrays(state))
    return model


@lru_cache(maxsize=16)
def _skeleton(spec_json: str, input_shape, num_classes: int, feature_dim: int) -> torch.nn.Module:
    """One module per architecture and process, reused for every client that has one."""
    return build_model(json.loads(spec_json), input_shape, num_classes, feature_dim)


@lru_cache(maxsize=4)
def _device(name: str) -> torch.device:
    """``resolve_device`` once per name and process (a torch.device per message was 0.4 %
    of a small client's round); a refused name raises for every message."""
    return resolve_device(name)


def setup(message: Message, context: Context):
    server_round, cfg, plan = wire.read_config(message.content)
    configure_torch(int(cfg["simulation"]["torch_threads"]))
    node = checked_node(context, cfg)
    pid = node.partition_id
    data = tensors(node, cfg)
    device = _device(str(cfg["client"]["device"]))
    model = load_model(context, cfg, pid, data)
    if device.type != "cpu":
        model = model.to(device)
    return server_round, cfg, plan, pid, data, device, model


def train(message: Message, context: Context, start: float) -> Message:
    """The body of the ClientApp's ``train`` once the client answers (``clients.app.train``);
    ``start``: when the message arrived (the reply's ``client_time``)."""
    server_round, cfg, plan, pid, data, device, model = setup(message, context)
    received = wire.get_payload(message.content)
    request = wire.get_record(message.content, wire.REQUEST, ArrayRecord)
    indices = wire.record_to_arrays(request)["indices"] if request is not None else None
    teachers_spec = plan.teachers
    teachers = (
        load_teachers(context, cfg, pid, data, int(teachers_spec.shards), device)
        if teachers_spec
        else None
    )
    output = run_round(
        model,
        data,
        plan=plan,
        client_cfg=cfg["client"],
        received=received,
        request_indices=indices,
        generator=round_generator(int(cfg["seed"]), server_round, pid),
        server_round=server_round,
        device=device,
    )
    if teachers is not None:  # record-level privacy: release the shard models' noised mean
        output.payload = teacher_release(
            teachers, data, teachers_spec, indices, cfg["client"],
            round_generator(int(cfg["seed"]), server_round, pid), device,
            int(cfg["seed"]), server_round, pid,
        )  # fmt: skip
        save_teachers(context, teachers)
    context.state[MODEL_STATE] = wire.arrays_to_record(packed_state(model))
    content = RecordDict()
    payload = attacks.apply(
        cfg, pid, server_round, output.payload, wire.PayloadStore(context.state), data.num_classes
    )
    if payload is not None:
        parts = payload.to_arrays(), {"kind": payload.kind, **payload.meta()}
        if faults.fault_of(cfg, pid, server_round) == "bad_payload":  # sent raw, as corrupted
            wire.put_knowledge(content, *faults.corrupt(cfg, server_round, payload.kind, *parts))
        else:
            wire.put_knowledge(content, *parts, encoding=cfg["knowledge"])
    output.metrics.update(partition_id=pid, client_time=time.perf_counter() - start)
    attacks.claim_count(cfg, pid, output.metrics)
    _put_metrics(content, output.metrics)
    return Message(content=content, reply_to=message)


def evaluate(message: Message, context: Context) -> Message:
    """The body of the ClientApp's ``evaluate`` (``clients.app.evaluate_model``)."""
    server_round, cfg, plan, pid, data, device, model = setup(message, context)
    received = wire.get_payload(message.content)
    if isinstance(received, ModelWeights):
        arrays_to_model(model, received.arrays)
    batch = int(cfg["client"]["eval_batch_size"])
    metrics = {
        "partition_id": pid,
        **evaluate_client(model, data, batch, device, confusion=plan.confusion),
    }
    content = RecordDict()
    _put_metrics(content, metrics)
    return Message(content=content, reply_to=message)
