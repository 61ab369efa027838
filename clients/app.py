"""The fedkd ClientApp: one Flower message in, one reply out, per round.

The client learns which data it holds from ``context.node_config``
(``partition-id``, ``num-partitions``) and everything else from the run config
the server sends. Its personal model lives in ``context.state`` between rounds;
``query.save_state`` / ``query.restore_state`` write it to and read it from a
checkpoint file (``server/checkpoint.py``). Faults (``clients/faults.py``) and
attacks (``clients/attacks.py``) configured in the run config happen here too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from clients import attacks, faults, wire
from clients.round import evaluate_client, round_generator, run_round
from clients.runtime import client_tensors, configure_torch, data_key
from fedkd import checkpoint as ckpt_io
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


@app.query("save_state")
def save_state(message: Message, context: Context) -> Message:
    """Checkpoint: write this client's ``context.state`` for the server's round, atomically."""
    spec = message.content.config_records[wire.CHECKPOINT]
    folder, server_round, keep = Path(str(spec["dir"])), int(spec["round"]), int(spec["keep"])
    pid = int(context.node_config["partition-id"])
    tree = {"client": pid, "round": server_round, "state": state_tree(context.state)}
    size = ckpt_io.save(ckpt_io.client_file(folder, pid, server_round), tree)
    for old in ckpt_io.client_rounds(folder, pid):  # files no checkpoint needs any more
        if old not in (server_round, keep):
            ckpt_io.client_file(folder, pid, old).unlink(missing_ok=True)
    metrics = MetricRecord({"saved_bytes": size})
    return Message(content=RecordDict({wire.METRICS: metrics}), reply_to=message)


@app.query("restore_state")
def restore_state(message: Message, context: Context) -> Message:
    """Resume: load the state this client saved for the checkpoint's round."""
    spec = message.content.config_records[wire.CHECKPOINT]
    pid = int(context.node_config["partition-id"])
    path = ckpt_io.client_file(str(spec["dir"]), pid, int(spec["round"]))
    tree = ckpt_io.load(path)
    if not isinstance(tree, dict) or tree.get("client") != pid:
        raise ValueError(f"{path} does not hold client {pid}'s state")
    for name in list(context.state.keys()):
        del context.state[name]
    for name, arrays in tree["state"]["arrays"].items():
        context.state[name] = wire.arrays_to_record(arrays)
    for name, values in tree["state"]["configs"].items():
        context.state[name] = ConfigRecord(values)
    for name, values in tree["state"]["metrics"].items():
        context.state[name] = MetricRecord(values)
    return Message(content=RecordDict({wire.METRICS: MetricRecord({})}), reply_to=message)


def state_tree(state: RecordDict) -> dict[str, Any]:
    """A client's ``context.state`` as plain arrays and values (its checkpoint)."""
    return {
        "arrays": {k: wire.record_to_arrays(r) for k, r in state.array_records.items()},
        "configs": {k: dict(r) for k, r in state.config_records.items()},
        "metrics": {k: dict(r) for k, r in state.metric_records.items()},
    }


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
