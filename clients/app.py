"""The fedkd ClientApp: one Flower message in, one reply out, per round.

The client learns which data it holds from ``context.node_config`` and
everything else from the run config the server sends. Its personal model lives
in ``context.state`` between rounds. Node config keys:

- ``partition-id``: this client's id (0..N-1); with no ``data-path`` it is also
  the partition of the run's dataset the client trains on;
- ``num-partitions``: N, the number of clients in the federation;
- ``data-path`` (optional): the client's own data file or image folder
  (``fedkd/data/local.py``), used instead of a partition; absolute, or relative
  to the SuperNode's working directory;
- ``label-column`` (optional, default ``label``): the label column of a
  ``.csv``/``.parquet`` file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import wire
from clients.privacy_mod import privacy_mod
from clients.round import evaluate_client, round_generator, run_round
from clients.runtime import client_tensors, configure_torch, data_key
from clients.subteachers import load_teachers, save_teachers, teacher_release
from fedkd.errors import ConfigError
from fedkd.knowledge import ModelWeights
from fedkd.models import build_model, spec_for_client
from fedkd.train import resolve_device
from fedkd.weights import arrays_to_model, model_to_arrays

MODEL_STATE = "model"

NODE_CONFIG_HELP = (
    "node config needs 'partition-id' (this client's id) and 'num-partitions' (the number "
    "of clients), and optionally 'data-path' (the client's own data); start the SuperNode "
    "with --node-config \"partition-id=0 num-partitions=N\" (add data-path='/abs/data.npz' "
    "for local data)"
)

app = ClientApp(mods=[privacy_mod])


@dataclass(frozen=True)
class NodeData:
    """Which data this node holds, from its node config."""

    partition_id: int
    num_partitions: int | None
    data_path: str | None  # the client's own data; None: partition ``partition_id``
    label_column: str


def node_data(context: Context) -> NodeData:
    node = context.node_config
    if "partition-id" not in node:
        raise ConfigError(NODE_CONFIG_HELP)
    path = node.get("data-path")
    if path is not None and (not isinstance(path, str) or not path):
        raise ConfigError(f"node config data-path must be a non-empty string (got {path!r})")
    return NodeData(
        partition_id=int(node["partition-id"]),
        num_partitions=int(node["num-partitions"]) if "num-partitions" in node else None,
        data_path=None if path is None else str(Path(path).expanduser().absolute()),
        label_column=str(node.get("label-column", "label")),
    )


def checked_node(context: Context, cfg: dict[str, Any]) -> NodeData:
    """The node's data, checked against the run's number of clients."""
    node = node_data(context)
    parts = node.num_partitions if node.num_partitions is not None else cfg["num_clients"]
    if parts != cfg["num_clients"]:
        raise ConfigError(
            f"node config num-partitions={parts} disagrees with the run's num_clients={cfg['num_clients']}"
        )
    return node


def tensors(node: NodeData, cfg: dict[str, Any]):
    return client_tensors(data_key(cfg), node.partition_id, node.data_path, node.label_column)


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
    node = checked_node(context, cfg)
    pid = node.partition_id
    data = tensors(node, cfg)
    device = resolve_device(cfg["client"]["device"])
    model = load_model(context, cfg, pid, data).to(device)
    return server_round, cfg, plan, pid, data, device, model


@app.train()
def train(message: Message, context: Context) -> Message:
    start = time.perf_counter()
    server_round, cfg, plan, pid, data, device, model = _setup(message, context)
    received = wire.get_payload(message.content)
    request = message.content.array_records.get(wire.REQUEST)
    indices = wire.record_to_arrays(request)["indices"] if request is not None else None
    teachers_spec = plan.get("teachers")
    teachers = (
        load_teachers(context, cfg, pid, data, int(teachers_spec["shards"]), device)
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
    context.state[MODEL_STATE] = wire.arrays_to_record(model_to_arrays(model))
    content = RecordDict()
    if output.payload is not None:
        wire.put_payload(content, output.payload)
    output.metrics.update(partition_id=pid, client_time=time.perf_counter() - start)
    _put_metrics(content, output.metrics)
    return Message(content=content, reply_to=message)


@app.query()
def hello(message: Message, context: Context) -> Message:
    """Start-up handshake: which client this node is, out of how many (``introduce``)."""
    metrics = introduce(context, message.content)
    return Message(content=RecordDict({wire.METRICS: MetricRecord(metrics)}), reply_to=message)


def introduce(context: Context, content: RecordDict) -> dict[str, int]:
    """The node's ``hello`` answer; with the run config in ``content``, its data is loaded now.

    The server sends the run config along (``flwr run`` and deployments do), so a
    missing or malformed local file stops the run at start-up with the client's
    one-line error instead of failing every round.
    """
    node = node_data(context)
    if node.num_partitions is None:
        raise ConfigError(NODE_CONFIG_HELP)
    metrics = {"partition_id": node.partition_id, "num_partitions": node.num_partitions}
    if wire.CONFIG in content.config_records:
        _, cfg, _ = wire.read_config(content)
        cfg["num_clients"] = node.num_partitions  # what the server sets once all have answered
        data = tensors(node, cfg)
        metrics.update(
            num_train=len(data.train_y),
            num_local_test=len(data.test_y),
            local_data=int(node.data_path is not None),
        )
    return metrics


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
