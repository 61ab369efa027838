"""Several client messages per Ray call: the simulation engine's worker threads, batched.

Flower's engine (``vce_api.worker``, flwr 1.41) runs one thread per actor slot; each takes
one message from the run's queue, hands it to ``RayBackend.process_message`` (one Ray call:
submit, the worker's task, the reply) and stores the reply. With small clients the call costs
as much as the client's round: about 1 ms of the driver's CPU per message (Flower's thread,
Ray's submission and its I/O thread), and half a millisecond of the worker's, on a machine
whose two cores the workers need (docs/performance.md, "Several messages per call").

``worker`` replaces Flower's thread body (same arguments, same queues, same stop event).
It takes the message it waited for and, without waiting, more of the queued ones: a share
of the queue (``chunk``), at most ``LIMIT``. The batch travels to one actor as one call
(``RayBackend.process_messages``, ``simulations/nodeloss.py``), where each message still runs
alone with its own ``Context``, one after the other; each reply and updated ``Context`` come
back and are stored as Flower stores them, the ``Context`` first. What a client computes does
not change, only which worker runs it and when it starts.

**Shares.** A thread takes ``ceil(queued / threads)`` messages (guided self-scheduling,
Polychronopoulos & Kuck 1987): the first calls of a round are large, later ones smaller, so
the two actors finish a round close together while a round of 20 messages takes about 9 calls
instead of 20. The server pushes its longest jobs first, and batches keep that order.

**Limits.** ``simulation.messages_per_call`` caps a batch: ``auto`` is unbounded, or 1 (a
call per message, as Flower does) when ``simulation.messages_per_worker`` resolves to 1,
that is when a fault makes a client straggle or hang: a client queued behind it in a batch
would miss the round with it.

**Failures.** A ClientApp that raises fails its own message only (Flower's
``CLIENT_APP_RAISED_EXCEPTION`` reply, its worker's traceback in the log); the other
messages of the batch still run. A lost actor loses the whole batch: each of its messages
is retried once or answered ``NODE_UNAVAILABLE`` (``simulations/nodeloss.py``).
"""

from __future__ import annotations

import math
import threading
import time
from queue import Empty, Queue
from typing import Any
from uuid import uuid4

AUTO = "auto"
LIMIT: int | None = None  # messages per call at most (None: a share of the queue)


def check_auto_or_count(key: str, value: object, hint: str) -> int | str:
    """``key``'s ``value``: ``auto`` or a whole number >= 1, else ConfigError (one line,
    ending with ``hint``)."""
    from fedkd.errors import ConfigError

    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be auto or a whole number >= 1 (got {value!r}); {hint}")
    return value


def check_limit(value: object) -> int | str:
    """``simulation.messages_per_call``: ``auto`` or a whole number >= 1."""
    return check_auto_or_count(
        "simulation.messages_per_call", value, "1 sends each client message in its own Ray call"
    )


def resolve_limit(value: object, depth: int) -> int | None:
    """The cap on a batch for a run whose workers hold ``depth`` messages at once
    (``nodeloss.resolve_depth``): a number as it is; ``auto``: none, or 1 when ``depth``
    is 1 (a fault holds a client back, or each client is to run alone)."""
    limit = check_limit(value)
    if limit == AUTO:
        return 1 if depth == 1 else None
    return int(limit)


def chunk(queued: int, threads: int, limit: int | None) -> int:
    """How many messages a thread takes when ``queued`` wait (the one it took included):
    its share of them, at least 1, at most ``limit``."""
    share = max(1, math.ceil(queued / max(1, threads)))
    return share if limit is None else min(share, limit)


def _take(queue: Queue, first: Any, threads: int) -> list[Any]:
    """``first`` and, without waiting, the next queued messages up to the thread's share;
    a message for a node already in the batch goes in too (the worker hands it the
    ``Context`` the earlier one left)."""
    batch = [first]
    more = chunk(queue.qsize() + 1, threads, LIMIT) - 1
    for _ in range(more):
        try:
            batch.append(queue.get_nowait())
        except Empty:
            break
    return batch


def _failure_reply(message: Any, ex: BaseException) -> Any:
    """Flower's reply to a message whose ClientApp failed (``vce_api.worker``'s)."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.clientapp.client_app import ClientAppException, LoadClientAppError
    from flwr.common.constant import ErrorCode

    if isinstance(ex, ClientAppException):
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    elif isinstance(ex, LoadClientAppError):
        code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
    else:
        code = ErrorCode.UNKNOWN
    reason = str(type(ex)) + ":<'" + str(ex) + "'>"
    return Message(Error(code=code, reason=reason), reply_to=message)


def _log_failure(ex: BaseException) -> None:
    import traceback
    from logging import ERROR

    from flwr.supercore import log

    log(ERROR, ex)
    remote = getattr(ex, "fedkd_traceback", None)  # the worker's, for a ClientApp's failure
    log(ERROR, remote if remote else "".join(traceback.format_exception(ex)))


def worker(
    messageins_queue: Queue,
    messageres_queue: Queue,
    node_info_store: dict[int, Any],
    backend: Any,
    f_stop: threading.Event,
    metrics: Any,
) -> None:
    """Flower's ``vce_api.worker``, a batch of messages per call (module docstring)."""
    while not f_stop.is_set():
        try:
            first = messageins_queue.get(timeout=1.0)
        except Empty:
            continue
        batch = _take(messageins_queue, first, backend.num_workers)
        outcomes: list[Any]
        started = None
        try:
            contexts = [
                node_info_store[m.metadata.dst_node_id].retrieve_context(run_id=m.metadata.run_id)
                for m in batch
            ]
            started = time.perf_counter()
            outcomes = backend.process_messages(batch, contexts)
        except Exception as ex:  # the whole batch: Flower's reply for each message
            outcomes = [ex] * len(batch)
        if started is not None:
            metrics.add_clientapp_runtime(time.perf_counter() - started)
        logged: set[int] = set()
        replies: list[Any] = []
        for message, outcome in zip(batch, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                reply, context = outcome
                try:
                    node_info_store[message.metadata.dst_node_id].update_context(
                        message.metadata.run_id, context=context
                    )
                except Exception as ex:
                    outcome = ex
            if isinstance(outcome, BaseException):
                if id(outcome) not in logged:
                    _log_failure(outcome)
                    logged.add(id(outcome))
                reply = _failure_reply(message, outcome)
            reply.metadata.__dict__["_message_id"] = str(uuid4())
            replies.append(reply)
        _put_all(messageres_queue, replies)


def _put_all(queue: Queue, replies: list[Any]) -> None:
    """The batch's replies to the engine's reply store, at once where the queue can."""
    put_many = getattr(queue, "put_many", None)
    if put_many is not None:
        put_many(replies)
        return
    for reply in replies:
        queue.put(reply)


def install() -> bool:
    """Run the engine's worker threads as ``worker`` (the backend must have
    ``process_messages``: ``simulations/nodeloss.py`` installs both); False if this Flower's
    engine does not look like the one this was written against."""
    import inspect

    try:
        from flwr.server.superlink.fleet.vce import vce_api
    except ImportError:
        return False
    original = getattr(vce_api, "worker", None)
    if original is None:
        return False
    if original is worker:
        return True
    expected = [
        "messageins_queue",
        "messageres_queue",
        "node_info_store",
        "backend",
        "f_stop",
        "metrics",
    ]
    if list(inspect.signature(original).parameters) != expected:
        return False
    vce_api.worker = worker
    return True
