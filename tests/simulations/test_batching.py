"""Several client messages per Ray call (``simulations/batching.py``): shares, limits, and the
engine thread that sends batches, run against a backend that records its calls."""

from __future__ import annotations

import threading
from queue import Queue

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.clientapp.client_app import ClientAppException
from flwr.common.constant import ErrorCode

from fedkd.errors import ConfigError
from simulations import batching
from simulations.vce_patches import PromptQueue


@pytest.mark.parametrize(
    ("queued", "threads", "limit", "taken"),
    [
        (20, 4, None, 5),  # a round of 20 messages, 2 actors x 2 slots: a quarter
        (15, 4, None, 4),  # ceil(15 / 4)
        (3, 4, None, 1),  # fewer than the threads: one each
        (1, 4, None, 1),
        (20, 4, 3, 3),  # capped
        (20, 4, 1, 1),  # Flower's one message per call
        (7, 1, None, 7),  # one thread takes everything queued
        (5, 0, None, 5),  # no thread count: as one thread
    ],
)
def test_a_thread_takes_its_share_of_the_queue(queued, threads, limit, taken):
    assert batching.chunk(queued, threads, limit) == taken


def test_shares_shrink_through_a_round():
    """Guided self-scheduling: 20 messages over 4 threads go 5, 4, 3, 2, 2, 1, 1, 1, 1."""
    left, sizes = 20, []
    while left:
        sizes.append(batching.chunk(left, 4, None))
        left -= sizes[-1]
    assert sizes == [5, 4, 3, 2, 2, 1, 1, 1, 1]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", "Auto", True, None])
def test_messages_per_call_must_be_auto_or_a_whole_number_of_at_least_one(bad):
    with pytest.raises(ConfigError, match="simulation.messages_per_call must be auto or") as e:
        batching.check_limit(bad)
    assert "\n" not in str(e.value)


def test_auto_batches_unless_each_client_runs_alone():
    assert batching.resolve_limit("auto", 2) is None  # a share of the queue
    assert batching.resolve_limit("auto", 1) == 1  # a fault holds a client back
    assert batching.resolve_limit(3, 1) == 3  # a number as it is
    with pytest.raises(ConfigError):
        batching.resolve_limit("many", 2)


# ------------------------------------------------------------------ the engine thread
def _message(node: int, x: int) -> Message:
    metadata = Metadata(
        run_id=1, message_id=f"m{node}-{x}", src_node_id=1, dst_node_id=node,
        reply_to_message_id="", group_id="1", created_at=0.0, ttl=600.0,
        message_type=MessageType.TRAIN,
    )  # fmt: skip
    return Message(content=RecordDict({"config": ConfigRecord({"x": x})}), metadata=metadata)


class _Store:
    """A node's run-info store as the engine keeps it (``retrieve_context``/``update_context``)."""

    def __init__(self, node: int) -> None:
        self.context = Context(
            run_id=1, node_id=node, node_config={"partition-id": node}, state=RecordDict(),
            run_config={},
        )  # fmt: skip
        self.updates = 0

    def retrieve_context(self, run_id: int) -> Context:
        return self.context

    def update_context(self, run_id: int, context: Context) -> None:
        self.context = context
        self.updates += 1


class _Backend:
    """Answers each batch at once; x < 0 fails its message as a ClientApp would; stops the
    engine once it has answered ``expected`` messages."""

    def __init__(self, threads: int, expected: int, stop: threading.Event) -> None:
        self.num_workers = threads
        self.batches: list[list[int]] = []
        self.expected, self.stop = expected, stop
        self.lock = threading.Lock()

    def process_messages(self, messages, contexts):
        outcomes = []
        for message, context in zip(messages, contexts, strict=True):
            x = message.content["config"]["x"]
            if x < 0:
                outcomes.append(ClientAppException(f"x={x} must not be negative"))
                continue
            context.state["last"] = ConfigRecord({"x": x})
            outcomes.append(
                (Message(RecordDict({"echo": ConfigRecord({"x": x})}), reply_to=message), context)
            )
        with self.lock:
            self.batches.append([m.content["config"]["x"] for m in messages])
            if sum(map(len, self.batches)) >= self.expected:
                self.stop.set()
        return outcomes


class _Metrics:
    def __init__(self) -> None:
        self.runtime = 0.0

    def add_clientapp_runtime(self, runtime: float) -> None:
        self.runtime += runtime


def _run_engine(messages: list[Message], threads: int, stores: dict[int, _Store]):
    ins, outs = PromptQueue(), PromptQueue()  # a batch's replies go to the store at once
    for message in messages:
        ins.put(message)
    stop = threading.Event()
    backend = _Backend(threads, len(messages), stop)
    batching.worker(ins, outs, stores, backend, stop, _Metrics())
    replies = []
    while not outs.empty():
        replies.append(outs.get())
    return backend, replies


def test_the_engine_thread_sends_shares_in_the_servers_order_and_stores_every_reply(monkeypatch):
    monkeypatch.setattr(batching, "LIMIT", None)
    stores = {node: _Store(node) for node in range(8)}
    messages = [_message(node, node) for node in range(8)]
    backend, replies = _run_engine(messages, 4, stores)
    assert backend.batches == [[0, 1], [2, 3], [4], [5], [6], [7]]  # ceil(8/4), ceil(6/4), ...
    assert [r.metadata.reply_to_message_id for r in replies] == [
        m.metadata.message_id for m in messages
    ]
    assert all(r.metadata.message_id for r in replies)  # each reply gets its own id
    assert len({r.metadata.message_id for r in replies}) == len(replies)
    assert all(stores[n].updates == 1 and stores[n].context.state["last"]["x"] == n for n in stores)


def test_a_failed_message_gets_flowers_error_reply_and_its_batch_mates_theirs(monkeypatch):
    monkeypatch.setattr(batching, "LIMIT", None)
    stores = {node: _Store(node) for node in range(3)}
    messages = [_message(0, 5), _message(1, -1), _message(2, 7)]
    backend, replies = _run_engine(messages, 1, stores)
    assert backend.batches == [[5, -1, 7]]  # one thread: the whole queue in one call
    ok, failed, also_ok = replies
    assert failed.has_error() and failed.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "x=-1 must not be negative" in failed.error.reason
    assert failed.metadata.reply_to_message_id == "m1--1"
    assert ok.content["echo"]["x"] == 5 and also_ok.content["echo"]["x"] == 7
    assert stores[1].updates == 0  # a failed message leaves its node's Context as it was


def test_a_limit_caps_every_batch(monkeypatch):
    monkeypatch.setattr(batching, "LIMIT", 1)
    stores = {node: _Store(node) for node in range(4)}
    backend, replies = _run_engine([_message(n, n) for n in range(4)], 1, stores)
    assert backend.batches == [[0], [1], [2], [3]] and len(replies) == 4


def test_a_backend_that_fails_a_whole_batch_answers_each_message_with_an_error():
    class Broken(_Backend):
        def process_messages(self, messages, contexts):
            self.stop.set()
            raise RuntimeError("the actor pool is gone")

    ins, outs = PromptQueue(), Queue()  # a plain queue: the replies one by one
    for message in (_message(0, 1), _message(1, 2)):
        ins.put(message)
    stop = threading.Event()
    batching.worker(ins, outs, {0: _Store(0), 1: _Store(1)}, Broken(1, 2, stop), stop, _Metrics())
    replies = [outs.get(), outs.get()]
    assert [r.error.code for r in replies] == [ErrorCode.UNKNOWN] * 2
    assert all("the actor pool is gone" in r.error.reason for r in replies)
