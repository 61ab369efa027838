"""Which clients are connected: one query message maps node ids to partition ids.

Every client reports the ``partition-id`` and ``num-partitions`` of its node
config. The same handshake serves the simulation (where the launcher knows how
many clients to wait for) and ``flwr run`` / real SuperNodes (where the first
reply says how many partitions the federation has).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from clients import wire
from fedkd.errors import ConfigError


@dataclass(frozen=True)
class Roster:
    node_of: dict[int, int]  # client (partition) id -> node id
    num_partitions: int

    @property
    def client_of(self) -> dict[int, int]:
        return {node: cid for cid, node in self.node_of.items()}


def _ask(grid: Grid, nodes: list[int], timeout: float) -> dict[int, tuple[int, int]]:
    messages = [
        Message(content=RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes
    ]
    answers = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise ConfigError(
                f"client on node {reply.metadata.src_node_id} cannot start: {reply.error.reason}"
            )
        metrics = reply.content.metric_records[wire.METRICS]
        answers[reply.metadata.src_node_id] = (
            int(metrics["partition_id"]),
            int(metrics["num_partitions"]),
        )
    return answers


def discover(grid: Grid, timeout: float, expected: int | None = None) -> Roster:
    """Wait for every partition's client (``expected``, else what the clients report)."""
    deadline = time.monotonic() + timeout
    answers: dict[int, tuple[int, int]] = {}
    while True:
        nodes = sorted(grid.get_node_ids())
        new = [n for n in nodes if n not in answers]
        if new:
            answers.update(_ask(grid, new, max(deadline - time.monotonic(), 1.0)))
        parts = {num for _, num in answers.values()}
        if len(parts) > 1:
            raise ConfigError(f"clients disagree on num-partitions: {sorted(parts)}")
        wanted = expected if expected is not None else (parts.pop() if parts else None)
        if wanted is not None and len(answers) >= wanted:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(answers)} of {wanted or '?'} clients connected within {timeout:.0f}s"
            )
        time.sleep(0.05)
    node_of: dict[int, int] = {}
    num_partitions = next(iter(answers.values()))[1]
    for node, (cid, _) in answers.items():
        if not 0 <= cid < num_partitions:
            raise ConfigError(
                f"node {node} has partition-id {cid}, outside 0..{num_partitions - 1}"
            )
        if cid in node_of:
            raise ConfigError(f"two nodes claim partition-id {cid}")
        node_of[cid] = node
    return Roster(node_of=node_of, num_partitions=num_partitions)
