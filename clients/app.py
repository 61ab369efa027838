"""The fedkd ClientApp: one Flower message in, one reply out, per round.

The client learns which data it holds from ``context.node_config``
(``partition-id``, ``num-partitions``) and everything else from the run config
the server sends. Its personal model lives in ``context.state`` between rounds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from clients import attacks, faults, wire
from clients.round import evaluate_client, round_generator, run_round
from clients.runtime import client_tensors, configure_torch, data_key
from fedkd.knowledge import ModelWeights
from fedkd.models import build_model, spec_for_client
from fedkd.train import resolve_device
from fedkd.weights import arrays_to_model, model_to_arrays

MODEL_STATE = "model"

NODE_CONFIG_HELP = (
    "node config needs 'partition-id' and 'num-partitions'; start the SuperNode with "
    '--node-config "partition-id=0 num-partitions=N"'
)

app = ClientApp()


def partition_id(context: Context, cfg: dict[str, Any]) -> int:
    node = context.node_config
    if "partition-id" not in node:
        raise ValueError(NODE_CONFIG_HELP)
    pid = int(node["partition-id"])
    parts = int(node.get("num-partitions", cfg["num_clients"]))
    if parts != cfg["num_clients"]:
        raise ValueError(
            f"node config num-partitions={parts} disagrees with the run's num_clients={cfg['num_clients']}"
        )
    return pid


def load_model(context: Context, cfg: dict[str, Any], pid: int, data) -> torch.nn.Module:
    """The client's personal model: restored from context.state, else freshly seeded."""
    torch.manual_seed(cfg["seed"] * 7919 + pid)
    spec = spec_for_client(cfg["model"], pid)
    model = build_model(spec, data.input_shape, data.num_classes, int(cfg["model"]["feature_dim"]))
    if MODEL_STATE in context.state.array_records:
        arrays_to_model(model, wire.record_to_arrays(context.state.array_records[MODEL_STATE]))
    return model


def _setup(message: Message, context: Context):
    server_round, cfg, plan = wire.read_config(message.content)
    configure_torch(int(cfg["simulation"]["torch_threads"]))
    pid = partition_id(context, cfg)
    data = client_tensors(data_key(cfg), pid)
    device = resolve_device(cfg["client"]["device"])
    model = load_model(context, cfg, pid, data).to(device)
    return server_round, cfg, plan, pid, data, device, model


@app.train()
def train(message: Message, context: Context) -> Message:
    start = time.perf_counter()
    server_round, cfg, _ = wire.read_config(message.content)
    unavailable = faults.before_round(cfg, partition_id(context, cfg), server_round)
    if unavailable is not None:  # what Flower replies for a node that has gone
        return Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=unavailable), reply_to=message)
    server_round, cfg, plan, pid, data, device, model = _setup(message, context)
    received = wire.get_payload(message.content)
    request = message.content.array_records.get(wire.REQUEST)
    indices = wire.record_to_arrays(request)["indices"] if request is not None else None
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
    context.state[MODEL_STATE] = wire.arrays_to_record(model_to_arrays(model))
    content = RecordDict()
    payload = attacks.apply(cfg, pid, server_round, output.payload, context.state, data.num_classes)
    if payload is not None:
        parts = payload.to_arrays(), {"kind": payload.kind, **payload.meta()}
        if faults.fault_of(cfg, pid, server_round) == "bad_payload":
            parts = faults.corrupt(cfg, server_round, payload.kind, *parts)
        wire.put_knowledge(content, *parts)
    output.metrics.update(partition_id=pid, client_time=time.perf_counter() - start)
    _put_metrics(content, output.metrics)
    return Message(content=content, reply_to=message)


@app.query()
def hello(message: Message, context: Context) -> Message:
    """Start-up handshake: which partition this node holds, out of how many."""
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        raise ValueError(NODE_CONFIG_HELP)
    metrics = {
        "partition_id": int(node["partition-id"]),
        "num_partitions": int(node["num-partitions"]),
    }
    return Message(content=RecordDict({wire.METRICS: MetricRecord(metrics)}), reply_to=message)


@app.evaluate()
def evaluate_model(message: Message, context: Context) -> Message:
    """Evaluate received weights (e.g. the final FedAvg model) or the personal model."""
    server_round, cfg, plan, pid, data, device, model = _setup(message, context)
    received = wire.get_payload(message.content)
    if isinstance(received, ModelWeights):
        arrays_to_model(model, received.arrays)
    batch = int(cfg["client"]["eval_batch_size"])
    metrics = {
        "partition_id": pid,
        **evaluate_client(model, data, batch, device, confusion=bool(plan.get("confusion"))),
    }
    content = RecordDict()
    _put_metrics(content, metrics)
    return Message(content=content, reply_to=message)


def _put_metrics(content: RecordDict, metrics: dict[str, Any]) -> None:
    """Scalars into ``metrics``; arrays (the confusion counts) into the separate ``eval`` record."""
    arrays = {k: metrics.pop(k) for k in list(metrics) if isinstance(metrics[k], np.ndarray)}
    if arrays:
        content[wire.EVAL] = wire.arrays_to_record(arrays)
    content[wire.METRICS] = MetricRecord(_clean(metrics))


def _clean(metrics: dict[str, Any]) -> dict[str, float | int]:
    """MetricRecord accepts only int/float; numpy scalars are converted."""
    return {
        k: (int(v) if isinstance(v, (int, np.integer)) else float(v)) for k, v in metrics.items()
    }
