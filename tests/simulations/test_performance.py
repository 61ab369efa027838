"""The pieces that make runs fast and let them scale, tested for what they do.

Speed itself is measured by ``fedkd-bench`` (docs/performance.md), never here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import ClientAppException
from helpers import ROOT, marked, run_fedkd_sim, stop_tree

from fedkd.config import compose
from fedkd.errors import ConfigError, FedkdError, PayloadError
from fedkd.models import build_model
from fedkd.weights import load_packed, model_to_arrays, packed_state
from simulations import bench
from simulations.proctree import MARKER
from simulations.worker import ClientWorker, Failure, pack, unpack

TINY = [
    "num_clients=4",
    "num_rounds=2",
    "logging.progress=false",
    "logging.table=false",
    "logging.tensorboard=false",
    "checkpoint.every=0",
]


# ------------------------------------------------------------------ client state
def test_packed_state_round_trips_parameters_and_integer_buffers():
    torch.manual_seed(0)
    model = build_model({"name": "resnet8"}, (3, 32, 32), 10, 16)  # BatchNorm: int64 buffers
    model.train()
    model(torch.randn(4, 3, 32, 32))  # moves running stats and num_batches_tracked
    packed = packed_state(model)
    assert set(packed) == {"<f4", "<i8"}  # one flat array per dtype
    torch.manual_seed(1)
    other = build_model({"name": "resnet8"}, (3, 32, 32), 10, 16)
    load_packed(other, packed)
    for key, value in model_to_arrays(model).items():
        np.testing.assert_array_equal(model_to_arrays(other)[key], value)


def test_packed_state_of_another_architecture_is_refused():
    small = build_model({"name": "mlp", "hidden": [8]}, (64,), 10, 4)
    big = build_model({"name": "mlp", "hidden": [16]}, (64,), 10, 4)
    with pytest.raises(PayloadError, match="does not fit|more values"):
        load_packed(big, packed_state(small))
    with pytest.raises(PayloadError, match="more values"):
        load_packed(small, packed_state(big))
    before = model_to_arrays(big)
    with pytest.raises(PayloadError):  # the layout is checked before anything is written
        load_packed(big, packed_state(small))
    for key, value in model_to_arrays(big).items():
        np.testing.assert_array_equal(value, before[key])


# ------------------------------------------------------------------ worker calls
def _train_message(x: int, node: int = 7) -> Message:
    metadata = Metadata(
        run_id=1, message_id=f"m{x}", src_node_id=1, dst_node_id=node, reply_to_message_id="",
        group_id="1", created_at=0.0, ttl=600.0, message_type=MessageType.TRAIN,
    )  # fmt: skip
    return Message(content=RecordDict({"config": ConfigRecord({"x": x})}), metadata=metadata)


def _echo_app() -> ClientApp:
    """A ClientApp that counts its node's messages in the Context and refuses x < 0."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        if msg.content["config"]["x"] < 0:
            raise ValueError("x must not be negative")
        seen = ctx.state["seen"]["n"] if "seen" in ctx.state else 0
        ctx.state["seen"] = ConfigRecord({"x": msg.content["config"]["x"], "n": seen + 1})
        return Message(RecordDict({"echo": msg.content["config"]}), reply_to=msg)

    return app


def _context(node: int = 7) -> Context:
    return Context(
        run_id=1, node_id=node, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )


def test_a_worker_call_travels_as_one_bytes_object_each_way():
    """``ClientWorker.run`` takes ``pack(loader, [(message, cid, context), ...])`` and returns
    ``pack([(cid, reply, context), ...])``; a loader the standard pickler refuses (a closure)
    goes through cloudpickle."""
    app = _echo_app()
    call = pack(lambda: app, [(_train_message(3), "0", _context())])
    assert isinstance(call, bytes)
    answer = ClientWorker().run(call)
    assert isinstance(answer, bytes)
    ((cid, reply, updated),) = unpack(answer)[0]
    assert (cid, reply.content["echo"]["x"], updated.state["seen"]["x"]) == ("0", 3, 3)
    assert reply.metadata.reply_to_message_id == "m3"


def test_a_failing_client_app_fails_its_own_message_and_the_batch_goes_on():
    """In a batch, a ClientApp that raises leaves a ``Failure`` (Flower's ClientAppException,
    with the worker's traceback) in its message's place; the messages after it still run,
    and a second message for the same node gets the Context the first one left."""
    app = _echo_app()
    batch = [
        (_train_message(1, node=7), "0", _context(7)),
        (_train_message(-1, node=8), "1", _context(8)),
        (_train_message(2, node=7), "0", _context(7)),  # the same node again, stale Context
    ]
    first, failed, again = unpack(ClientWorker().run(pack(lambda: app, batch)))[0]
    assert first[1].content["echo"]["x"] == 1
    assert isinstance(failed, Failure) and failed.kind == "app"
    error = failed.exception()
    assert isinstance(error, ClientAppException)
    assert "x must not be negative" in str(error) and "ValueError" in error.fedkd_traceback
    assert again[1].content["echo"]["x"] == 2 and again[2].state["seen"]["n"] == 2
    assert first[2] is again[2]  # the node's Context after both: stored last, it is the one kept


def test_a_client_app_that_cannot_be_loaded_fails_every_message_of_its_batch():
    from flwr.clientapp.client_app import LoadClientAppError

    def loader():
        raise LoadClientAppError("no such app")

    batch = [(_train_message(x), "0", _context()) for x in (1, 2)]
    outcomes = unpack(ClientWorker().run(pack(loader, batch)))[0]
    assert [o.kind for o in outcomes] == ["load", "load"]
    assert isinstance(outcomes[0].exception(), LoadClientAppError)


# ------------------------------------------------------------------ exchange
class _FakeReply:
    def __init__(self, reply_to: str) -> None:
        self.metadata = type("M", (), {"reply_to_message_id": reply_to})()


class _Clock:
    """A virtual clock for ``server.exchange``: sleeping advances it, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class _SlowGrid:
    """A grid whose replies arrive at given (virtual) times: counts the polls."""

    def __init__(self, clock: _Clock, arrive_after: dict[str, float]) -> None:
        self.clock, self.arrive_after, self.polls = clock, arrive_after, 0

    def push_messages(self, messages):
        return list(self.arrive_after)

    def pull_messages(self, ids):
        self.polls += 1
        return [_FakeReply(i) for i in ids if self.arrive_after[i] <= self.clock.now]


def test_exchange_returns_soon_after_the_last_reply_and_respects_the_timeout(monkeypatch):
    from server import exchange

    clock = _Clock()
    monkeypatch.setattr(exchange, "time", clock)
    monkeypatch.setattr(exchange, "REPLIES", exchange.Arrivals())  # no engine counts here
    grid = _SlowGrid(clock, {"a": 0.0, "b": 0.02})
    replies = exchange.send_and_receive(grid, [], timeout=5, max_interval=0.05)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    # polls start at 1 ms and grow by half: the last reply is seen within one growth step
    assert 0.02 <= clock.now < 0.02 * exchange.GROWTH + exchange.FIRST_INTERVAL
    clock.now = 0.0
    late = _SlowGrid(clock, {"a": 0.0, "never": 1e9})
    replies = exchange.send_and_receive(late, [], timeout=0.3, max_interval=0.05)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert clock.now == pytest.approx(0.3)  # waits exactly the timeout, never longer
    assert late.polls < 0.3 / 0.05 + 15  # backs off to max_interval


class _StoringGrid:
    """A grid whose replies are stored by another thread once the exchange has pulled
    once, each counted in ``arrivals`` as the simulation engine counts them."""

    def __init__(self, arrivals, ids: list[str]) -> None:
        import threading

        self.arrivals, self.ids, self.stored, self.polls = arrivals, ids, [], 0
        self.first_pull = threading.Event()
        self.lock = threading.Lock()

    def push_messages(self, messages):
        return list(self.ids)

    def store_all(self) -> None:
        self.first_pull.wait()
        for i in self.ids:
            with self.lock:
                self.stored.append(i)
            self.arrivals.add()

    def pull_messages(self, ids):
        self.polls += 1
        with self.lock:
            out, self.stored = [_FakeReply(i) for i in self.stored if i in ids], []
        self.first_pull.set()  # after the snapshot: the first pull finds nothing stored
        return out


def test_exchange_sleeps_until_the_engine_has_stored_the_last_reply(monkeypatch):
    """With the engine counting stored replies, the exchange pulls once more, after the last
    one: no polls in between (a poll interval of minutes would otherwise be waited)."""
    import threading

    from server import exchange

    arrivals = exchange.Arrivals()
    arrivals.counting = True
    monkeypatch.setattr(exchange, "REPLIES", arrivals)
    grid = _StoringGrid(arrivals, ["a", "b", "c"])
    storer = threading.Thread(target=grid.store_all)
    storer.start()
    replies = exchange.send_and_receive(grid, [], timeout=600, max_interval=300)
    storer.join()
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b", "c"]
    assert grid.polls == 2  # the first pull, then one right after the third reply


def test_the_engine_counts_every_reply_it_stores(monkeypatch):
    import queue
    import threading

    from server import exchange
    from simulations import vce_patches

    arrivals = exchange.Arrivals()
    monkeypatch.setattr(exchange, "REPLIES", arrivals)

    class State:
        def __init__(self):
            self.stored = []

        def store_message_res(self, message):
            self.stored.append(message)

    state, inbox, stop = State(), queue.Queue(), threading.Event()
    for reply in ("r1", "r2"):
        inbox.put(reply)
    thread = threading.Thread(target=vce_patches.put_message_into_state, args=(state, inbox, stop))
    thread.start()
    arrivals.wait(0, 2, timeout=600)  # returns once both are counted
    stop.set()
    thread.join()
    assert state.stored == ["r1", "r2"] and arrivals.count == 2


class _CountingCondition(threading.Condition):
    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def notify_all(self) -> None:
        self.wakeups += 1
        super().notify_all()


def _waiting(arrivals, target: int) -> None:
    """Until a waiter has registered for ``target`` (an event, not a time window)."""
    while True:
        with arrivals.cond:
            if target in arrivals.waiting:
                return
        time.sleep(0.001)


def _waiter(expected: int):
    """Arrivals whose wake-ups are counted, and a thread waiting for ``expected`` adds."""
    from server import exchange

    arrivals = exchange.Arrivals()
    arrivals.cond = _CountingCondition()
    waiter = threading.Thread(target=arrivals.wait, args=(0, expected, 600))
    waiter.start()
    _waiting(arrivals, expected)
    return arrivals, waiter


def test_a_waiting_exchange_is_woken_once_when_its_last_reply_is_counted():
    arrivals, waiter = _waiter(3)
    for _ in range(3):
        arrivals.add()
    waiter.join()
    assert arrivals.count == 3 and arrivals.cond.wakeups == 1 and arrivals.waiting == []


def test_adds_held_as_a_burst_wake_the_waiter_once_the_burst_ends():
    arrivals, waiter = _waiter(1)
    with arrivals.held():
        for _ in range(5):  # a round's pushes: the first would wake the pick-up mid-push
            arrivals.add()
        assert arrivals.cond.wakeups == 0 and waiter.is_alive()
    waiter.join()
    assert arrivals.count == 5 and arrivals.cond.wakeups == 1


def test_the_grid_holds_the_push_count_while_it_pushes_a_round():
    """``InMemoryGrid.push_messages`` (wrapped by ``install_pickup``) stores every message
    while the state's push count is held: the pick-up wakes once, after the last."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from server import exchange
    from simulations import vce_patches

    assert vce_patches.install_pickup() and hasattr(InMemoryGrid.push_messages, "__wrapped__")

    class State:
        def __init__(self) -> None:
            self.fedkd_pushes = exchange.Arrivals()
            self.held_at_store: list[int] = []

        def store_message_ins(self, message):
            self.held_at_store.append(self.fedkd_pushes.holds)
            self.fedkd_pushes.add()
            return message.metadata._message_id  # set by the grid

    class Grid:
        def __init__(self) -> None:
            self.state = State()

        def _check_message(self, message) -> None:
            pass

    grid = Grid()
    messages = [type("Msg", (), {"metadata": type("Meta", (), {})()})() for _ in range(3)]
    ids = InMemoryGrid.push_messages(grid, messages)
    assert len(ids) == 3 and grid.state.held_at_store == [1, 1, 1]
    assert grid.state.fedkd_pushes.holds == 0 and grid.state.fedkd_pushes.count == 3


def test_a_sweep_queues_its_messages_at_once_in_order():
    from simulations.vce_patches import PromptQueue

    queue = PromptQueue()
    queue.put_many(["a", "b", "c"])
    queue.put_many([])
    assert queue.qsize() == 3 and [queue.get_nowait() for _ in range(3)] == ["a", "b", "c"]


# ------------------------------------------------------------------ pick-up patch
def test_the_pickup_patch_fits_this_flower_and_delivers_every_waiting_message():
    import queue
    import threading

    from flwr.server.superlink.fleet.vce import vce_api

    from simulations import vce_patches

    assert vce_patches.install_pickup(), (
        "Flower's simulation engine changed: check simulations/vce_patches.py"
    )
    assert vce_api.add_messages_to_queue is vce_patches.add_messages_to_queue

    class Meta:
        def __init__(self, node):
            self.dst_node_id, self.delivered_at = node, ""

    class Msg:
        def __init__(self, node):
            self.metadata = Meta(node)

    class State:  # the in-memory LinkState's relevant surface
        def __init__(self):
            self.lock = threading.Lock()
            self.message_ins_store = {i: Msg(n) for i, n in enumerate([11, 12, 12, 99])}
            self.asked: list[int] = []

        def get_message_ins(self, node_id, limit):
            self.asked.append(node_id)
            return _deliver_one(self.message_ins_store, node_id)

    state, out, stop = State(), queue.Queue(), threading.Event()
    nodes = {11: 0, 12: 1, 13: 2}  # node 99 is not in this simulation
    thread = threading.Thread(
        target=vce_patches.add_messages_to_queue, args=(state, out, nodes, stop)
    )
    thread.start()
    got = []
    try:  # the three messages for this simulation's nodes arrive, whatever the machine's load
        while len(got) < 3:
            got.append(out.get(timeout=120).metadata.dst_node_id)
    finally:
        stop.set()
        thread.join()
    while not out.empty():  # anything more would be a message delivered twice or misrouted
        got.append(out.get().metadata.dst_node_id)
    assert sorted(got) == [11, 12, 12]  # both of node 12's messages, one per sweep
    assert 13 not in state.asked  # idle nodes are not scanned


def test_an_idle_pickup_is_woken_by_a_push():
    """With the in-memory LinkState the pick-up sleeps between pushes: a message pushed
    while it sleeps is still delivered (it wakes on the push, not on a timer)."""
    import queue
    import threading

    from simulations import vce_patches

    class Meta:
        def __init__(self, node):
            self.dst_node_id, self.delivered_at = node, ""

    class State:
        def __init__(self):
            self.lock = threading.Lock()
            self.message_ins_store = {}
            self.swept = threading.Event()

        def store_message_ins(self, message):
            with self.lock:
                self.message_ins_store[len(self.message_ins_store)] = message
            return len(self.message_ins_store)

        def get_message_ins(self, node_id, limit):
            self.swept.set()
            with self.lock:
                return _deliver_one(self.message_ins_store, node_id)

    state, out, stop = State(), queue.Queue(), threading.Event()
    thread = threading.Thread(
        target=vce_patches.add_messages_to_queue, args=(state, out, {11: 0, 12: 1}, stop)
    )
    thread.start()
    try:
        for node in (11, 12, 12):  # pushed as the grid does, through the state
            state.store_message_ins(type("Msg", (), {"metadata": Meta(node)})())
        got = sorted(out.get(timeout=120).metadata.dst_node_id for _ in range(3))
    finally:
        stop.set()
        thread.join()
    assert got == [11, 12, 12]
    assert hasattr(state.store_message_ins, "__wrapped__")  # the pushes were counted


def test_the_pickup_sweeps_the_nodes_in_the_order_their_messages_were_pushed():
    """The server pushes the longest jobs first; the workers' queue keeps that order."""
    import threading

    from simulations import vce_patches

    class Meta:
        def __init__(self, node):
            self.dst_node_id, self.delivered_at = node, ""

    class State:
        lock = threading.Lock()

        def __init__(self, order):
            self.message_ins_store = {
                f"m{i}": type("Msg", (), {"metadata": Meta(n)})() for i, n in enumerate(order)
            }

    nodes = {n: i for i, n in enumerate(range(10, 30))}
    order = [17, 23, 10, 29, 11, 14]
    assert vce_patches._waiting_nodes(State(order), nodes) == order
    assert vce_patches._waiting_nodes(State([12, 99, 12, 13]), nodes) == [12, 13]


# ------------------------------------------------------------------ config
def test_ray_address_and_num_cpus_together_are_refused_before_ray_starts(tmp_path):
    result = run_fedkd_sim(
        [*TINY, "simulation.ray_address=127.0.0.1:1", "simulation.ray_num_cpus=2",
         f"hydra.run.dir={tmp_path}"],
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "simulation.ray_num_cpus must be null with simulation.ray_address" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["simulation.ray_address=127.0.0.1:{port}", "simulation.connect_timeout=1"],
         "no Ray head answered within 1 s"),
        (["simulation.ray_address=nonsense"], "must be 'host:port' of a Ray head or 'auto'"),
        (["simulation.connect_timeout=-1"], "simulation.connect_timeout must be a number"),
    ],
)  # fmt: skip
def test_a_cluster_that_does_not_answer_stops_the_run_with_one_line(tmp_path, overrides, expected):
    """Nothing listens on the port: one line naming the address, before data or Ray."""
    port = _free_port()
    result = run_fedkd_sim(
        [*TINY, *(o.format(port=port) for o in overrides), f"hydra.run.dir={tmp_path}"],
        timeout=120,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]


def test_a_plain_run_starts_a_private_ray_instance():
    """``ray_address: null`` hands Ray "local", which never joins RAY_ADDRESS or `ray start`'s
    cluster; "auto" and host:port are explicit joins."""
    from simulations.cluster import resolve_address
    from simulations.run import backend_config

    cfg = compose(["simulation.ray_num_cpus=2"])
    assert backend_config(cfg)["init_args"]["address"] == "local"
    assert backend_config(cfg)["init_args"]["num_cpus"] == 2
    os.environ["RAY_ADDRESS"] = "127.0.0.1:6390"
    try:
        assert resolve_address({"ray_address": None}) == "local"
        assert resolve_address({"ray_address": "auto"}) == "127.0.0.1:6390"
    finally:
        del os.environ["RAY_ADDRESS"]


def test_a_private_instance_passes_a_client_context_inline():
    """Ray's 100 KiB threshold would send a Context holding ~100 kB of weights through the
    object store; a private instance gets ``simulation.inline_bytes``, a cluster keeps its
    own ``ray start`` setting (``_system_config`` cannot be given to a running cluster)."""
    from simulations.run import backend_config

    local = backend_config(compose(["simulation.inline_bytes=4096"]))["init_args"]
    assert local["_system_config"] == {"max_direct_call_object_size": 4096}
    default = backend_config(compose([]))["init_args"]["_system_config"]
    assert default["max_direct_call_object_size"] >= 1024 * 1024
    cluster = backend_config(compose(["simulation.ray_address=127.0.0.1:6390"]))["init_args"]
    assert "_system_config" not in cluster


@pytest.mark.parametrize("bad", [0, 1023, 64 * 1024 * 1024 + 1, 1.5, True, "1MB", None])
def test_inline_bytes_out_of_range_is_one_line(bad):
    from simulations.cluster import check_inline_bytes

    with pytest.raises(ConfigError, match="simulation.inline_bytes must be a whole number") as e:
        check_inline_bytes({"inline_bytes": bad})
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ reference
@pytest.mark.slow
def test_the_reference_and_the_simulation_compute_the_same_run(tmp_path, sim_session):
    """The benchmark's sequential loop is the same computation: same accuracies, every round
    (the simulation runs in the tests' shared Ray session), batched or one call per message."""
    overrides = ["num_clients=5", "num_rounds=3", "server.fraction_train=0.6"]
    ref = subprocess.run(
        [sys.executable, "-m", "simulations.reference", "--out", str(tmp_path / "ref"), *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ref.returncode == 0, ref.stderr
    sim = sim_session.run([*TINY, *overrides, f"hydra.run.dir={tmp_path / 'sim'}"])
    assert sim.status == 0, sim.last_line
    # one Ray call per message (Flower's way) computes what the batched calls computed
    single = ["simulation.messages_per_call=1", f"hydra.run.dir={tmp_path / 'single'}"]
    one = sim_session.run([*TINY, *overrides, *single])
    assert one.status == 0, one.last_line
    a = json.loads((tmp_path / "ref" / "summary.json").read_text())
    b = json.loads((tmp_path / "sim" / "summary.json").read_text())
    c = json.loads((tmp_path / "single" / "summary.json").read_text())
    for ra, rb, rc in zip(a["rounds"], b["rounds"], c["rounds"], strict=True):
        assert ra["num_clients"] == rb["num_clients"] == 3  # the same seeded sampling
        for key in ("global_test_acc", "local_test_acc"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6)
            assert rb[key] == rc[key]


def test_the_reference_refuses_what_it_cannot_compute_exactly():
    from fedkd.config import compose
    from simulations.reference import run_reference

    for overrides, message in [
        (["knowledge.encoding=int8"], "knowledge.encoding"),
        (["strategy=dsfl"], "strategy=fd"),
    ]:
        with pytest.raises(FedkdError, match=message):
            run_reference(compose(overrides))


def test_bench_figures_and_table_from_summaries(tmp_path):
    """The derived figures are computed from the runs' summaries as documented."""

    def measured(wall, rounds, per_round, sampled, acc):
        summary = {
            "status": "finished",
            "rounds": [
                {"round": i + 1, "num_clients": sampled, "round_time_s": per_round}
                for i in range(rounds)
            ],
            "final": {"global_test_acc": {"last": acc}, "local_test_acc": {"last": acc}},
            "bytes_per_round": {"bytes_up": 1000.0, "bytes_down": 500.0},
        }
        return bench.Measured(wall_s=wall, peak_rss=2**30, returncode=0, summary=summary)

    sim = bench.combine([bench.run_figures(measured(30.0, 10, 0.2, 20, 0.5))] * 3)
    ref = bench.combine([bench.run_figures(measured(10.0, 10, 0.3, 20, 0.5))] * 3)
    cmp = bench.compare(sim, ref, num_workers=2)
    assert cmp["ratio"] == pytest.approx(3.0)
    assert cmp["loop_ratio"] == pytest.approx(2.0 / 3.0)
    # (0.2 - 0.3 / 2) / 20 clients = 2.5 ms
    assert cmp["overhead_ms_per_client"] == pytest.approx(2.5)
    assert sim["peak_rss_mib"] == pytest.approx(1024)
    assert sim["updates_per_s"] == pytest.approx(200 / 30)
    result = {
        "workload": "w", "targets": {"ratio": 1.5}, "simulation": sim, "reference": ref,
        "comparison": cmp,
    }  # fmt: skip
    table = bench.markdown([result], [], "note")
    assert "| w | 3/3 | 30.0 | 10.0 | 3.00x | 0.67x |" in table
    assert "≤ 1.5x: not met" in table
    assert "| – | ≤ 1.5x: not met |" in table  # no load recorded
    table = bench.markdown([{**result, "load": [0.4, 1.3]}], [], "note")
    assert "| 0.4 / 1.3 | ≤ 1.5x: not met |" in table
    encodings = {
        "workload": "w",
        "description": "d",
        "fedavg_bytes_per_round": 1e6,
        "by_encoding": {"float32": {**sim, "global_acc": 0.5}, "int8": {**sim, "bytes_up": 250.0, "global_acc": 0.49}},
    }  # fmt: skip
    table = bench.markdown([], [encodings], "note")
    # float32: 1000 + 500 bytes; int8: 250 + 500 = 0.5x of it and 0.00075x of FedAvg's 1 MB
    assert "| int8 | 0.8 kB | 0.500x | 0.0008x (1.00 MB) | 0.4900 | -1.00 |" in table


def test_bench_reads_start_up_phases_and_the_first_round_from_run_log(tmp_path):
    from datetime import datetime

    log = tmp_path / "run.log"
    log.write_text(
        "[2026-01-02 03:04:05,500][fedkd.phase][INFO] - [  0.4 s] config: composed\n"
        "[2026-01-02 03:04:06,000][fedkd][INFO] - strategy fd\n"
        "[2026-01-02 03:04:12,250][fedkd.phase][INFO] - [  7.1 s] first round: round 1 done\n"
    )
    start = datetime(2026, 1, 2, 3, 4, 5).timestamp()
    phases = bench.phase_lines(log, start)
    assert [line for _, line in phases] == ["config: composed", "first round: round 1 done"]
    assert [t for t, _ in phases] == pytest.approx([0.5, 7.25])
    assert bench.phase_lines(tmp_path / "missing.log", start) == []


def test_sweep_figures_count_rounds_at_their_steady_pace():
    def run(times, ok=True):
        return {"ok": ok, "wall_s": 20.0, "round_times": times, "first_round_s": 9.0}

    jobs = [run([5.0, 1.0, 2.0, 3.0])] * 2  # round 1 waits for the workers: not counted
    single = run([9.0, 1.0, 1.0, 1.0])
    sweep = bench.Measured(wall_s=30.0, peak_rss=2**20, returncode=0, summary={})
    fig = bench.sweep_figures(sweep, jobs, single)
    assert fig["ok"] and fig["jobs_loop_s"] == pytest.approx(2 * 4 * 2.0)
    assert fig["startup_s"] == pytest.approx(20.0 - 4.0)
    assert fig["ideal_s"] == pytest.approx(16.0 + 16.0)
    assert fig["bound_s"] == pytest.approx(32.0 + 16.0)
    failed = bench.sweep_figures(sweep, [*jobs, run([1.0, 1.0], ok=False)], single)
    assert not failed["ok"] and failed["jobs_finished"] == 2


def test_every_bench_workload_composes():
    from fedkd.config import check_config, compose

    assert set(bench.workload_names()) >= {
        "digits-fd-20",
        "cnn-fd-20",
        "synthetic-1k",
        "synthetic-10k",
    }
    for name in bench.workload_names():
        workload = bench.Workload.load(name)
        cfg = compose(workload.overrides)
        check_config(cfg)
        if workload.reference:  # the sequential reference implements fd only
            assert cfg["strategy"]["name"] == "fd"


def test_a_workload_file_missing_a_key_is_one_line(tmp_path, monkeypatch):
    text = (bench.bench_dir() / "default.yaml").read_text(encoding="utf-8")
    kept = [line for line in text.splitlines() if not line.startswith("jobs:")]
    (tmp_path / "nojobs.yaml").write_text("\n".join(kept), encoding="utf-8")
    monkeypatch.setattr(bench, "bench_dir", lambda: tmp_path)
    with pytest.raises(SystemExit, match=r"configs/bench/nojobs.yaml has no jobs \(every"):
        bench.Workload.load("nojobs")


def test_bench_update_keeps_the_other_workloads(tmp_path):
    old = [{"workload": "b", "v": 1}, {"workload": "a", "v": 1}]
    assert bench.merged(old, [{"workload": "b", "v": 2}]) == [
        {"workload": "a", "v": 1},
        {"workload": "b", "v": 2},
    ]
    table = tmp_path / "bench.md"
    assert bench.earlier_report(table) == {}  # nothing yet
    table.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="bench.json is not a fedkd-bench report"):
        bench.main(["--workloads", "--update", "--table", str(table), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_bench_refuses_unknown_names_before_running(tmp_path):
    with pytest.raises(SystemExit, match="unknown encodings"):
        bench.main(["--workloads", "--encodings", "bf16", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no workload 'nope'"):
        bench.main(["--workloads", "--encodings", "--encodings-on", "nope", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # nothing ran


def test_bench_refuses_an_out_folder_holding_earlier_runs(tmp_path):
    # a run's log is appended to: a second bench into the same folder would read the first
    # bench's start-up lines as its own, and a sweep would count the first bench's jobs
    earlier = tmp_path / "default" / "sim-0"
    earlier.mkdir(parents=True)
    (earlier / "run.log").write_text("[2026-01-01 00:00:00,000][fedkd.phase][INFO] - x\n")
    with pytest.raises(SystemExit, match=r"default already holds runs of an earlier bench"):
        bench.main(["--workloads", "default", "--out", str(tmp_path)])
    assert (earlier / "run.log").exists()  # kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default"]  # nothing ran


# ------------------------------------------------------------------ Ray cluster
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# the simulation's Ray actors: simulations.worker's, or Flower's if the early start fell back
ACTORS = ("ClientWorker", "ClientAppActor")


@pytest.mark.slow
def test_a_simulation_joins_a_running_ray_cluster_on_loopback(tmp_path):
    """`ray start --head` as a separate process; the run uses it; the head is stopped by pid."""
    ray = Path(sys.executable).with_name("ray")
    port = _free_port()
    launch = uuid.uuid4().hex
    temp = Path(tempfile.mkdtemp(prefix="fedkd-ray-", dir="/tmp"))  # Ray's socket paths are short
    env = {**os.environ, MARKER: launch, "RAY_USAGE_STATS_ENABLED": "0"}
    log_path = tmp_path / "head.log"
    with log_path.open("w") as log:
        head = subprocess.Popen(
            [str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={temp}"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log_path.read_text():
            assert head.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the Ray head did not start within 90 s"
            time.sleep(0.5)

        def actor_logs() -> str:
            return "".join(p.read_text(errors="ignore") for p in temp.rglob("worker-*.out"))

        # a plain run never joins a running cluster, even one RAY_ADDRESS points to
        plain = run_fedkd_sim(
            [*TINY, f"hydra.run.dir={tmp_path / 'plain'}"],
            timeout=300,
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
        )
        assert plain.returncode == 0, plain.stderr[-2000:]
        assert not any(name in actor_logs() for name in ACTORS)
        result = run_fedkd_sim(
            [
                *TINY,
                f"simulation.ray_address=127.0.0.1:{port}",
                f"hydra.run.dir={tmp_path / 'run'}",
            ],
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["status"] == "finished"
        assert len(summary["rounds"]) == 2 and summary["rounds"][-1]["num_clients"] == 4
        # the clients ran in the head's workers: its session logged the run's actors
        assert any(name in actor_logs() for name in ACTORS)
        assert head.poll() is None  # the simulation left the cluster running
    finally:
        left = stop_tree([head], launch_id=launch, grace=60, term_first=15)
        shutil.rmtree(temp, ignore_errors=True)
    assert left == []
    assert not marked(launch)


@pytest.mark.slow
def test_sigterm_stops_the_launcher_and_everything_it_started(tmp_path):
    """SIGTERM once the first round is recorded: the launcher exits and no Ray process of
    its own is left (found by the marker every process it started inherits), even when
    whoever read its output is gone (as when a killed fedkd-compare leaves its runs with
    a closed stderr pipe: printing the notice fails, the launcher must still exit)."""
    launch = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulations.run",
            *TINY,
            "num_rounds=200",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        env={**os.environ, MARKER: launch},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        metrics = run_dir / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.2)
        assert marked(launch)  # Ray's processes carry the marker
        proc.stderr.close()  # the reader is gone: writing to stderr now raises
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 128 + signal.SIGTERM
        assert not marked(launch)
    finally:
        left = stop_tree([proc], launch_id=launch, grace=60)
    assert left == []


# ------------------------------------------------------------------ TensorBoard at scale
def test_tensorboard_keeps_few_writers_open_and_loses_no_scalar(tmp_path, monkeypatch):
    """Thousands of clients: writers beyond the cap are closed and reopened; every
    client's every round still reaches TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from server import recorder as rec

    monkeypatch.setattr(rec, "MAX_OPEN_WRITERS", 3)
    recorder = rec.RunRecorder(tmp_path, num_rounds=3, progress=False, table=False, config={})
    for rnd in (1, 2, 3):
        for cid in range(7):
            recorder.client(rnd, cid, {"global_test_acc": 0.1 * cid + rnd, "num_train": 5})
        recorder.end_round(rnd, complete_upto=rnd)
        assert len(recorder.tensorboard._writers) <= 3
    recorder.finish({})
    for cid in range(7):
        acc = EventAccumulator(str(tmp_path / "tensorboard" / f"client_{cid}"))
        acc.Reload()
        steps = sorted((e.step, round(e.value, 4)) for e in acc.Scalars("accuracy/global_test"))
        assert steps == [(r, round(0.1 * cid + r, 4)) for r in (1, 2, 3)]


def _deliver_one(store, node_id):
    """The in-memory LinkState's ``get_message_ins(node_id, limit=1)``: the node's first
    undelivered message, marked delivered."""
    for m in store.values():
        if m.metadata.dst_node_id == node_id and m.metadata.delivered_at == "":
            m.metadata.delivered_at = "now"
            return [m]
    return []
