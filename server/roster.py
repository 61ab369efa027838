"""Which clients are connected: one query message maps node ids to partition ids.

Every client reports the ``partition-id`` and ``num-partitions`` of its node
config. The same handshake serves the simulation (where the launcher knows how
many clients to wait for) and ``flwr run`` / real SuperNodes (where the first
reply says how many partitions the federation has). Given the run config
(``cfg_json``), each client also loads its data while answering, so a bad
local data file stops the run at start-up with the client's own message.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from flwr.app import Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from clients import wire
from fedkd.errors import ConfigError

log = logging.getLogger("fedkd")
RETRY_UNAVAILABLE = 10.0  # seconds before asking an unavailable node again

# Flower's reason for an exception in a ClientApp: "<class 'pkg.DataError'>:<'message'>"
_RAISED = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>:<'(.*)'>", re.DOTALL)


def client_error(reason: str) -> str:
    """Flower's error reason as ``ErrorType: message`` on one line."""
    match = _RAISED.fullmatch(reason.strip())
    text = f"{match[1]}: {match[2]}" if match else reason
    return " ".join(text.split())


@dataclass(frozen=True)
class Roster:
    node_of: dict[int, int]  # client (partition) id -> node id
    num_partitions: int

    @property
    def client_of(self) -> dict[int, int]:
        return {node: cid for cid, node in self.node_of.items()}


def _ask(
    grid: Grid, nodes: list[int], timeout: float, cfg_json: str | None
) -> tuple[dict[int, tuple[int, int]], set[int]]:
    """(node -> (partition id, num partitions)) of the nodes that answered, and the unreachable.

    A node the SuperLink reports unavailable (e.g. the stale session of a
    SuperNode that crashed) is skipped; any other error stops the run.
    """

    def content() -> RecordDict:
        if cfg_json is None:
            return RecordDict()
        return RecordDict({wire.CONFIG: wire.make_config(0, cfg_json, {})})

    messages = [
        Message(content=content(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes
    ]
    replies = grid.send_and_receive(messages, timeout=timeout)
    sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    answers, unavailable = {}, set()
    for reply in replies:
        node = sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        if reply.has_error():
            if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
                log.warning("node %d is unavailable; waiting for the other clients", node)
                unavailable.add(node)
                continue
            raise ConfigError(
                f"client on node {node} cannot start: {client_error(reply.error.reason)}"
            )
        try:  # a reply from another process: a bad one is one line, not a traceback
            metrics = reply.content.metric_records[wire.METRICS]
            ids = [metrics[k] for k in ("partition_id", "num_partitions")]
            if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in ids):
                raise ValueError(f"partition_id/num_partitions must be integers >= 0, got {ids}")
            if "num_train" in metrics:
                log.info(
                    "client %d (node %d): %d train / %d test samples from its %s",
                    ids[0],
                    node,
                    int(metrics["num_train"]),
                    int(metrics["num_local_test"]),
                    "own data file" if metrics.get("local_data") else "partition",
                )
        except Exception as err:
            detail = " ".join(f"{type(err).__name__}: {err}".split())[:200]
            raise ConfigError(f"node {node} answered the start-up query badly ({detail})") from None
        answers[node] = (ids[0], ids[1])
    return answers, unavailable


def discover(
    grid: Grid, timeout: float, expected: int | None = None, cfg_json: str | None = None
) -> Roster:
    """Wait for every partition's client (``expected``, else what the clients report).

    With ``cfg_json`` (the run config) every client checks its data as it answers.
    An unavailable node is asked again after ``RETRY_UNAVAILABLE`` seconds (a
    SuperNode restarted with the same key keeps its node id).
    """
    deadline = time.monotonic() + timeout
    answers: dict[int, tuple[int, int]] = {}
    retry_at: dict[int, float] = {}
    while True:
        now = time.monotonic()
        nodes = sorted(grid.get_node_ids())
        new = [n for n in nodes if n not in answers and retry_at.get(n, 0) <= now]
        if new:
            found, unavailable = _ask(grid, new, max(deadline - now, 1.0), cfg_json)
            answers.update(found)
            retry_at.update(dict.fromkeys(unavailable, time.monotonic() + RETRY_UNAVAILABLE))
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
