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

from fedkd.errors import ConfigError
from fedkd.plan import Plan
from protocol import wire

log = logging.getLogger("fedkd")
RETRY_UNAVAILABLE = 10.0  # seconds before asking an unavailable node again

# Flower's reason for an exception in a ClientApp: "<class 'pkg.DataError'>:<'message'>"
_RAISED = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>:<'(.*)'>", re.DOTALL)


# the simulation engine's reason: a Ray traceback ending in the ClientApp's message
_RAY_MESSAGE = re.compile(r"ClientAppException occurred\. Message: (.*?)'?>?\s*$", re.DOTALL)


def client_error(reason: str) -> str:
    """Flower's error reason as ``ErrorType: message`` on one line."""
    match = _RAISED.fullmatch(reason.strip())
    text = f"{match[1]}: {match[2]}" if match else reason
    ray = _RAY_MESSAGE.search(reason)
    if ray:  # "... fedkd.errors.ConfigError: msg The above exception ... Message: msg'>"
        kind = re.findall(r"(?:[\w]+\.)*(\w+(?:Error|Exception)): ", reason.split("The above")[0])
        text = f"{kind[-1]}: {ray[1]}" if kind else ray[1]
    return " ".join(text.split())


@dataclass(frozen=True)
class Roster:
    node_of: dict[int, int]  # client (partition) id -> node id
    num_partitions: int

    @property
    def client_of(self) -> dict[int, int]:
        return {node: cid for cid, node in self.node_of.items()}

    def check(self, num_clients: int) -> Roster:
        """This roster, or a ConfigError when the clients hold another number of partitions."""
        if self.num_partitions != num_clients:
            raise ConfigError(
                f"the clients hold {self.num_partitions} partitions but num_clients={num_clients}"
            )
        return self


def _ask(
    grid: Grid, nodes: list[int], timeout: float, cfg_json: str | None
) -> tuple[dict[int, tuple[int, int]], set[int], dict[int, str]]:
    """(node -> (partition id, num partitions)) of the nodes that answered, the unreachable,
    and (node -> one-line error) of the clients that failed to start.

    A node the SuperLink reports unavailable (e.g. the stale session of a
    SuperNode that crashed) is skipped and asked again later.
    """

    def content() -> RecordDict:
        if cfg_json is None:
            return RecordDict()
        return RecordDict({wire.CONFIG: wire.make_config(0, cfg_json, Plan())})

    messages = [
        Message(content=content(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes
    ]
    replies = grid.send_and_receive(messages, timeout=timeout)
    sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    answers, unavailable, failed = {}, set(), {}
    for reply in replies:
        node = sent_to.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
        if reply.has_error():
            if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
                log.warning("node %d is unavailable; waiting for the other clients", node)
                unavailable.add(node)
                continue
            failed[node] = client_error(reply.error.reason)
            continue
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
            failed[node] = f"node {node} answered the start-up query badly ({detail})"
            continue
        answers[node] = (ids[0], ids[1])
    return answers, unavailable, failed


_CLIENT_PREFIX = re.compile(r"^(?:\w+: )?client (\d+): (.*)$")
WAIT_LOG_EVERY = 5.0  # seconds between "waiting for k of N SuperNodes" lines


def startup_failures(
    failed: dict[int, str],
    answers: dict[int, tuple[int, int]],
    num_partitions: int | None,
    waited: float | None = None,
    *,
    unjoined: bool = False,
) -> str:
    """One line per client that cannot start (by partition id when its error names it,
    else by node id) and one per partition no SuperNode answered for: after a wait
    (``waited`` seconds), or, with ``unjoined``, when every SuperNode that joined has
    answered (so no SuperNode joined for those partitions); lines are sorted by client id."""
    lines: list[tuple[float, str]] = []
    named: set[int] = set()
    for node, error in failed.items():
        match = _CLIENT_PREFIX.match(error)
        if match:
            cid = int(match[1])
            named.add(cid)
            lines.append((cid, f"client {cid} cannot start: {match[2]}"))
        else:
            lines.append((float("inf"), f"client on node {node} cannot start: {error}"))
    if waited is not None or unjoined:
        answered = {cid for cid, _ in answers.values()} | named
        why = "no SuperNode joined" if unjoined else f"no SuperNode answered within {waited:.0f}s"
        if num_partitions is not None:
            for cid in sorted(set(range(num_partitions)) - answered):
                lines.append((cid, f"client {cid}: {why} (not started?)"))
        elif waited is not None:
            lines.append(
                (float("inf"), f"no SuperNode said how many clients to expect within {waited:.0f}s")
            )
    return "\n".join(text for _, text in sorted(lines, key=lambda t: t[0]))


def discover(
    grid: Grid, timeout: float, expected: int | None = None, cfg_json: str | None = None
) -> Roster:
    """Wait for every partition's client (``expected``, else what the clients report).

    With ``cfg_json`` (the run config) every client checks its data as it answers.
    An unavailable node is asked again after ``RETRY_UNAVAILABLE`` seconds (a
    SuperNode restarted with the same key keeps its node id). Once a client cannot
    start the run is known to fail: as soon as every SuperNode that joined has
    answered, the run stops with one line per client that cannot start and one per
    partition no SuperNode joined for, without waiting for SuperNodes that may never
    come. Without a failure, a partition still unanswered at the timeout is named as
    such. A "waiting for k of N SuperNodes" line is logged every ``WAIT_LOG_EVERY``
    seconds.
    """
    start = time.monotonic()
    deadline = start + timeout
    answers: dict[int, tuple[int, int]] = {}
    failed: dict[int, str] = {}
    retry_at: dict[int, float] = {}
    next_log = start + WAIT_LOG_EVERY
    while True:
        now = time.monotonic()
        nodes = sorted(grid.get_node_ids())
        new = [
            n for n in nodes if n not in answers and n not in failed and retry_at.get(n, 0) <= now
        ]
        if new:
            found, unavailable, errors = _ask(grid, new, max(deadline - now, 1.0), cfg_json)
            answers.update(found)
            failed.update(errors)
            retry_at.update(dict.fromkeys(unavailable, time.monotonic() + RETRY_UNAVAILABLE))
        parts = {num for _, num in answers.values()}
        if len(parts) > 1:
            raise ConfigError(f"clients disagree on num-partitions: {sorted(parts)}")
        wanted = expected if expected is not None else (next(iter(parts)) if parts else None)
        settled = all(n in answers or n in failed for n in nodes)  # nobody left to hear from
        if failed and settled:  # the run cannot start: name who failed and who never joined
            raise ConfigError(startup_failures(failed, answers, wanted, unjoined=True))
        if not failed and wanted is not None and len(answers) >= wanted:
            break
        if time.monotonic() > deadline:
            raise ConfigError(startup_failures(failed, answers, wanted, waited=timeout))
        if time.monotonic() >= next_log:
            next_log = time.monotonic() + WAIT_LOG_EVERY
            log.info(
                "waiting for %s of %s SuperNodes (answered: node ids %s)",
                "?" if wanted is None else wanted - len(answers) - len(failed),
                "?" if wanted is None else wanted,
                ", ".join(map(str, sorted(answers))) or "none",
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
