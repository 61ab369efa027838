"""The fedkd ClientApp: one Flower message in, one reply out, per round.

The client learns which data it holds from ``context.node_config`` and
everything else from the run config the server sends. Its personal model lives
in ``context.state`` between rounds; ``query.save_state`` /
``query.restore_state`` write it to and read it from a checkpoint file
(``server/checkpoint.py``). Faults (``fedkd/client/faults.py``) and attacks
(``fedkd/client/attacks.py``) configured in the run config happen here too. The model,
the round and the evaluation are in ``clients/training.py``, imported with torch at the
first ``train`` or ``evaluate`` message (importing this module loads no torch). Node
config keys:

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
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from clients.privacy_mod import privacy_mod
from fedkd import checkpoint as ckpt_io
from fedkd.client import faults
from fedkd.client.runtime import client_tensors, data_key
from fedkd.errors import ConfigError, DataError
from protocol import wire

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


@app.train()
def train(message: Message, context: Context) -> Message:
    start = time.perf_counter()
    server_round, cfg, _ = wire.read_config(message.content)
    unavailable = faults.before_round(cfg, checked_node(context, cfg).partition_id, server_round)
    if unavailable is not None:  # what Flower replies for a node that has gone
        return Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=unavailable), reply_to=message)
    from clients import training  # torch and the round code, at the first round (module doc)

    return training.train(message, context, start)


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
    if wire.get_record(content, wire.CONFIG, ConfigRecord) is not None:
        _, cfg, _ = wire.read_config(content)  # read-only, shared: changed in a copy
        cfg = {**cfg, "num_clients": node.num_partitions}  # as the server sets it later
        try:
            data = tensors(node, cfg)
        except (ConfigError, DataError) as err:  # the server reports every client by its id
            raise type(err)(f"client {node.partition_id}: {err}") from None
        metrics.update(
            num_train=len(data.train_y),
            num_local_test=len(data.test_y),
            local_data=int(node.data_path is not None),
        )
    return metrics


@app.query("save_state")
def save_state(message: Message, context: Context) -> Message:
    """Checkpoint: write this client's ``context.state`` for the server's round, atomically."""
    spec = message.content.config_records[wire.CHECKPOINT]
    folder, server_round, keep = Path(str(spec["dir"])), int(spec["round"]), int(spec["keep"])
    pid = node_data(context).partition_id
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
    pid = node_data(context).partition_id
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
    from clients import training

    return training.evaluate(message, context)


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
