"""Two speed-ups for Flower's simulation engine (flwr 1.41), applied by ``fedkd-sim``.

**Message pick-up.** Flower's ``vce_api.add_messages_to_queue`` moves the ServerApp's messages to
the simulation's workers by asking the in-memory LinkState, node after node,
for one undelivered message, then sleeping 0.1 s. Two costs follow:

- every round waits up to 0.1 s before its first client starts (about 15 % of
  a 100-round run of small clients, measured with ``fedkd-bench``);
- ``get_message_ins(node)`` scans every stored message, so one sweep costs
  nodes x messages checks: with 1,000 nodes and 100 messages in flight it
  takes longer than the clients it feeds.

``install()`` replaces that function by one that asks only for the nodes that
have an undelivered message (read from the LinkState's store, then fetched
through the same ``get_message_ins``, which marks them delivered as before) and
sleeps 2 ms, or four times the last sweep's duration if that is longer, so
sweeping never takes more than a fifth of a core. Behaviour is otherwise
Flower's: same queue, same stop event, same delivery marks. If this Flower's
engine does not look like the one this was written against (another function
signature, a LinkState without ``message_ins_store``), Flower's own function is
used unchanged.

**Who is who.** The ServerApp learns which node holds which partition from a
``query`` handshake (``server.roster.discover``), one message per node: with
10,000 simulated nodes that is 10,000 Ray calls before round 1 (minutes, since
the LinkState's scans grow with the messages in flight). In a simulation the
engine itself draws the node ids (``vce_api._register_nodes``); ``capture_nodes``
wraps that function to keep its node -> partition mapping, and ``simulation_roster``
hands it to the strategy once the nodes exist, so no handshake is needed. Real
deployments (``flwr run``, SuperNodes) still discover.
"""

from __future__ import annotations

import inspect
import threading
import time
from queue import Queue
from typing import Any

MIN_WAIT = 0.002  # seconds between sweeps when they are quick
SWEEP_SHARE = 4  # wait at least this many times the last sweep's duration

_installed = False
_nodes: dict[int, int] | None = None  # node id -> partition id of this process's simulation


def _waiting_nodes(state: Any, nodes: dict[int, int]) -> list[int] | None:
    """Nodes with an undelivered message, or None if ``state`` is not the in-memory one."""
    store = getattr(state, "message_ins_store", None)
    lock = getattr(state, "lock", None)
    if not isinstance(store, dict) or lock is None:
        return None
    with lock:
        messages = list(store.values())
    waiting = {m.metadata.dst_node_id for m in messages if m.metadata.delivered_at == ""}
    return [n for n in waiting if n in nodes]


def add_messages_to_queue(
    state: Any, queue: Queue, nodes_mapping: dict[int, int], f_stop: threading.Event
) -> None:
    """Put the LinkState's undelivered messages in the workers' queue until ``f_stop``."""
    while not f_stop.is_set():
        started = time.perf_counter()
        nodes = _waiting_nodes(state, nodes_mapping)
        for node_id in nodes_mapping.keys() if nodes is None else nodes:
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        swept = time.perf_counter() - started
        f_stop.wait(max(MIN_WAIT, SWEEP_SHARE * swept))


def install_pickup() -> bool:
    """Use the faster pick-up in this process's simulations; False if Flower's is kept."""
    global _installed
    if _installed:
        return True
    try:
        from flwr.server.superlink.fleet.vce import vce_api
    except ImportError:
        return False
    original = getattr(vce_api, "add_messages_to_queue", None)
    if original is None:
        return False
    expected = ["state", "queue", "nodes_mapping", "f_stop"]
    if list(inspect.signature(original).parameters) != expected:
        return False
    vce_api.add_messages_to_queue = add_messages_to_queue
    _installed = True
    return True


def capture_nodes() -> bool:
    """Keep the node -> partition mapping of the next simulation this process starts."""
    global _nodes
    from flwr.server.superlink.fleet.vce import vce_api

    _nodes = None
    register = getattr(vce_api, "_register_nodes", None)
    if register is None or "num_nodes" not in inspect.signature(register).parameters:
        return False
    original = getattr(register, "__wrapped__", register)

    def _register_nodes(*args: Any, **kwargs: Any) -> dict[int, int]:
        global _nodes
        mapping = original(*args, **kwargs)
        _nodes = dict(mapping)
        return mapping

    _register_nodes.__wrapped__ = original  # type: ignore[attr-defined]
    vce_api._register_nodes = _register_nodes
    return True


def simulation_roster(grid: Any, timeout: float, expected: int):
    """The captured nodes as a ``Roster`` once the grid lists them all; None if none captured."""
    from server.roster import Roster

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes, known = _nodes, set(grid.get_node_ids())
        if nodes is not None and len(nodes) == expected and all(n in known for n in nodes):
            return Roster(node_of={p: n for n, p in nodes.items()}, num_partitions=expected)
        if nodes is None and len(known) >= expected:
            return None  # registered without our wrapper: ask the nodes
        time.sleep(0.01)
    return None
