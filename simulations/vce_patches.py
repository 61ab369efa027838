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
sleeps four times the last sweep's duration, so sweeping never takes more than a fifth of
a core, and then until the grid's next push (it counts them: ``_count_pushes``; without
that count, 2 ms). A push of a round's messages wakes it once, after the last one is stored
(``_hold_pushes``), not at the first while the server thread still pushes the others.
A sweep's messages go to the workers' queue at once (``PromptQueue.put_many``), in the
order the server pushed them (the store's order), so the server decides which client
starts first; once the run stops, it ends the engine
threads' waits on the run's queues (``PromptQueue``: Flower's wait up to 1 s before they
see the stop, and the engine waits for them). Behaviour is otherwise
Flower's: same queue, same stop event, same delivery marks. Its companion
``put_message_into_state`` stores the replies as Flower's does and counts each one in
``server.exchange.REPLIES``, so the server pulls a round's replies once, right after the
last one is stored, instead of polling for them. If this Flower's
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

**One Ray session, started early.** Flower's ``RayBackend`` calls ``ray.init`` only when Ray is
not initialised yet, builds a fresh actor pool per run and ends every run with
``ray.shutdown()``. ``start_session`` starts Ray, the actor pool and each worker's warm-up
(importing the ClientApp and building the run's federated data) in a background thread,
while the launcher imports and patches Flower's engine (``install_session``; the thread
builds the pool once that is done), then torch, and checks the data; ``RayBackend.build``
then takes that pool instead of creating one. Its actors are ``simulations.worker.ClientWorker``s (Flower's
actor without ``flwr.simulation``'s imports) and get the fedkd ClientApp's loader by
reference instead of a closure holding the ClientApp. With ``share_session(True)`` (a Hydra multirun, ``fedkd-compare``)
``RayBackend.terminate`` keeps Ray and the idle pool for the process's next run instead of
shutting down: its warm workers already hold the libraries (and, for the same data config,
the data). Workers keep no client state between messages (each arrives with its
``Context``, and every random stream is seeded from the run config), so a run computes the
same numbers in a fresh or a reused worker. A pool is reused only if all its actors are idle
and answer; a session whose Ray arguments differ from the next run's is shut down first.
``simulations/nodeloss.py`` wraps these patches (it installs them first): each run's
actors say where they run before they get a message, and a replacement for an actor lost
with its node comes from the pool's factory, which queues the run's warm-up on every actor
it creates (``warm_new_actors``).

**Ending with the process.** ``fedkd-sim`` ends once its runs are written; with
``end_with_process`` a run's end leaves its private Ray instance up, and the launcher stops
Ray's processes by process id as it exits (``simulations.run.main``) instead of Ray's
graceful shutdown and the interpreter's teardown of torch, Flower and Ray (about 5 s
together; docs/performance.md).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from queue import Empty, Queue
from typing import Any

MIN_WAIT = 0.002  # seconds between sweeps when they are quick
IDLE_WAIT = 0.02  # seconds an idle pick-up sleeps when it is told of every push
SWEEP_SHARE = 4  # wait at least this many times the last sweep's duration

_installed = False
_session_installed = False
log = logging.getLogger("fedkd")
_nodes: dict[int, int] | None = None  # node id -> partition id of this process's simulation
_registering = False  # the wrapper has begun registering them (the grid lists some already)


def _waiting_nodes(state: Any, nodes: dict[int, int]) -> list[int] | None:
    """Nodes with an undelivered message, in the order their first such message was pushed
    (the store keeps insertion order: the server pushes the longest jobs first), or None
    if ``state`` is not the in-memory one."""
    store = getattr(state, "message_ins_store", None)
    lock = getattr(state, "lock", None)
    if not isinstance(store, dict) or lock is None:
        return None
    with lock:
        messages = list(store.values())
    waiting = dict.fromkeys(
        m.metadata.dst_node_id for m in messages if m.metadata.delivered_at == ""
    )
    return [n for n in waiting if n in nodes]


class PromptQueue(Queue):
    """The engine's message queues (``vce_api.run_api`` makes two per run): once the run
    has stopped (``stop``), a ``get`` that would wait returns ``queue.Empty`` at once.
    Flower's worker threads wait on their queue for up to 1 s before they look at the
    stop event again, and the engine waits for them: a second at the end of every run."""

    def __init__(self, maxsize: int = 0) -> None:
        super().__init__(maxsize)
        self.stopped = False
        with _QUEUES_LOCK:
            _QUEUES.append(self)

    def stop(self) -> None:
        with self.not_empty:
            self.stopped = True
            self.not_empty.notify_all()

    def put_many(self, items: list[Any]) -> None:
        """Queue ``items`` at once (one lock, one wake-up per item): a thread woken by the
        first one finds all of them queued, so it takes its share of the whole round."""
        if not items:
            return
        with self.not_full:
            for item in items:
                self._put(item)
            self.unfinished_tasks += len(items)
            self.not_empty.notify(len(items))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        with self.not_empty:
            deadline = None if timeout is None else time.monotonic() + timeout
            while block and not self._qsize() and not self.stopped:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self.not_empty.wait(left)
            if not self._qsize():
                raise Empty
            item = self._get()
            self.not_full.notify()
            return item


_QUEUES: list[PromptQueue] = []  # the running simulation's queues
_QUEUES_LOCK = threading.Lock()


def _stop_queues() -> None:
    with _QUEUES_LOCK:
        queues = list(_QUEUES)
        _QUEUES.clear()
    for queue in queues:
        queue.stop()


def _count_pushes(state: Any) -> Any | None:
    """Count every message stored in the in-memory ``state`` (the grid's pushes): wraps the
    instance's ``store_message_ins``; None if ``state`` is not the in-memory LinkState."""
    from server.exchange import Arrivals

    store = getattr(state, "store_message_ins", None)
    if store is None or not isinstance(getattr(state, "message_ins_store", None), dict):
        return None
    store = getattr(store, "__wrapped__", store)  # a state reused by a later run
    pushes = Arrivals()

    def store_message_ins(message: Any) -> Any:
        stored = store(message)
        pushes.add()
        return stored

    store_message_ins.__wrapped__ = store  # type: ignore[attr-defined]
    state.store_message_ins = store_message_ins
    state.fedkd_pushes = pushes  # the grid holds it while it pushes a round (_hold_pushes)
    return pushes


def _hold_pushes() -> bool:
    """Wake the pick-up once per push of several messages (a round's), after the last one
    is stored, instead of at the first while the server thread still pushes the others:
    wraps ``InMemoryGrid.push_messages`` to hold the state's push count meanwhile."""
    try:
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid
    except ImportError:
        return False
    push = getattr(InMemoryGrid, "push_messages", None)
    if push is None or list(inspect.signature(push).parameters) != ["self", "messages"]:
        return False
    if hasattr(push, "__wrapped__"):
        return True

    def push_messages(self: Any, messages: Any) -> Any:
        pushes = getattr(getattr(self, "state", None), "fedkd_pushes", None)
        if pushes is None:
            return push(self, messages)
        with pushes.held():
            return push(self, messages)

    push_messages.__wrapped__ = push  # type: ignore[attr-defined]
    InMemoryGrid.push_messages = push_messages
    return True


def add_messages_to_queue(
    state: Any, queue: Queue, nodes_mapping: dict[int, int], f_stop: threading.Event
) -> None:
    """Put the LinkState's undelivered messages in the workers' queue until ``f_stop``, then
    end the engine threads' waits on the run's queues.

    With the in-memory LinkState, the pick-up is told of every push (``_count_pushes``):
    after a sweep that found nothing it sleeps until the next push (looking at ``f_stop``
    every ``IDLE_WAIT``) instead of sweeping every ``MIN_WAIT``."""
    pushes = _count_pushes(state)
    try:
        while not f_stop.is_set():
            seen = 0 if pushes is None else pushes.count  # a push from here on wakes it
            started = time.perf_counter()
            nodes = _waiting_nodes(state, nodes_mapping)
            found: list[Any] = []
            for node_id in nodes_mapping.keys() if nodes is None else nodes:
                found.extend(state.get_message_ins(node_id=node_id, limit=1))
            delivered = bool(found)
            if isinstance(queue, PromptQueue):
                queue.put_many(found)
            else:
                for message in found:
                    queue.put(message)
            swept = time.perf_counter() - started
            f_stop.wait(max(MIN_WAIT if pushes is None else 0.0, SWEEP_SHARE * swept))
            if pushes is not None and not delivered:  # a node's second message: sweep again
                pushes.wait(seen, 1, IDLE_WAIT)
    finally:
        _stop_queues()


def put_message_into_state(state: Any, queue: Queue, f_stop: threading.Event) -> None:
    """Store the workers' replies in the LinkState until ``f_stop``, as Flower's function
    does, and count each one in ``server.exchange.REPLIES``: the server's exchange sleeps
    until its round's last reply is stored instead of polling for it."""
    from server.exchange import REPLIES

    while not f_stop.is_set():
        try:
            reply = queue.get(timeout=1.0)
        except Empty:
            continue
        state.store_message_res(reply)
        REPLIES.add()


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
    store = getattr(vce_api, "put_message_into_state", None)
    if store is not None and list(inspect.signature(store).parameters) == [
        "state",
        "queue",
        "f_stop",
    ]:
        from server.exchange import REPLIES

        vce_api.put_message_into_state = put_message_into_state
        REPLIES.counting = True
    if getattr(vce_api, "Queue", None) is Queue:  # the run's queues: prompt once it stops
        vce_api.Queue = PromptQueue
    _hold_pushes()
    _installed = True
    return True


def capture_nodes() -> bool:
    """Keep the node -> partition mapping of the next simulation this process starts."""
    global _nodes
    from flwr.server.superlink.fleet.vce import vce_api

    global _registering
    _nodes, _registering = None, False
    register = getattr(vce_api, "_register_nodes", None)
    if register is None or "num_nodes" not in inspect.signature(register).parameters:
        return False
    original = getattr(register, "__wrapped__", register)

    def _register_nodes(*args: Any, **kwargs: Any) -> dict[int, int]:
        global _nodes, _registering
        _registering = True  # the grid lists each node as it is made, before they are all made
        mapping = original(*args, **kwargs)
        _nodes = dict(mapping)
        return mapping

    _register_nodes.__wrapped__ = original  # type: ignore[attr-defined]
    vce_api._register_nodes = _register_nodes
    return True


def simulation_roster(grid: Any, timeout: float, expected: int):
    """The captured nodes as a ``Roster`` once the grid lists them all and the workers have
    warmed up (``wait_warm``); None if none captured.

    A deployment's handshake has every client load its data before round 1
    (``server.roster.discover``); waiting here for the workers' warm-up does the same for
    the simulation, so ``server.round_timeout`` measures rounds, not Ray's start-up.
    """
    from server.roster import Roster

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes, known = _nodes, set(grid.get_node_ids())
        if nodes is not None and len(nodes) == expected and all(n in known for n in nodes):
            wait_warm(deadline - time.monotonic())
            return Roster(node_of={p: n for n, p in nodes.items()}, num_partitions=expected)
        if nodes is None and not _registering and len(known) >= expected:
            return None  # registered without our wrapper: ask the nodes
        time.sleep(0.01)
    return None


# ------------------------------------------------------------------ one Ray session
@dataclass
class _Session:
    shared: bool = False  # keep Ray and the idle pool when a run ends
    init_key: str | None = None  # the ray.init arguments Ray runs with (None: not ours)
    resources_key: str | None = None  # the client resources of ``pool``'s actors
    pool: Any = None  # a flwr BasicActorPool waiting for the next RayBackend.build
    thread: threading.Thread | None = None  # the start-up thread: it lives as long as Ray
    ready: threading.Event | None = None  # set once the start-up thread is done starting
    release: threading.Event | None = None  # set once Ray is down: its thread may end
    started: float = 0.0
    error: BaseException | None = None
    # set once the launcher has imported Flower's engine and patched it (``start_session``);
    # ``fits``: whether this Flower takes the session's pool
    patched: threading.Event | None = None
    fits: bool = False
    timings: dict[str, float] | None = None  # seconds: "ray" (init or reuse), "pool"
    switch: float | None = None  # the interpreter's switch interval before start_session
    local: bool = False  # Ray is this process's private instance (its daemons are our children)
    ends_with_process: bool = False  # the process stops that instance by pid as it exits
    warming: list[Any] = field(default_factory=list)  # the queued warm-up calls' ObjectRefs


_SESSION = _Session()
PING_TIMEOUT = 10.0  # seconds a kept actor may take to answer before its pool is rebuilt
CALL_TIMEOUT = 300.0  # seconds ``call_in_worker`` waits (a worker's warm-up included)
# the interpreter's switch interval while the session starts (Python's default is 0.005 s)
START_SWITCH = 0.0005


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def share_session(on: bool = True) -> None:
    """Keep Ray and its warm workers across this process's runs (``end_session`` stops them)."""
    _SESSION.shared = on


def end_with_process(on: bool = True) -> None:
    """This process ends right after its runs and then stops the processes of its private
    Ray instance by process id (``simulations.run.main``): a run's end leaves that instance
    up instead of shutting it down gracefully (each actor, then each daemon in turn, about
    1.5 s). A cluster joined by address is still disconnected from as before."""
    _SESSION.ends_with_process = on


def _left_to_exit() -> bool:
    return _SESSION.ends_with_process and _SESSION.local and _ray_is_up()


def session_timings() -> dict[str, float]:
    """Seconds the last ``start_session`` spent starting (or reusing) Ray and its pool, and
    whether each was reused (1.0) or started (0.0)."""
    return dict(_SESSION.timings or {})


def _warm_worker(actor: Any, cfg_json: str) -> int:
    """In a worker: import what a client round needs and build the run's data (cached per
    process by ``fedkd.client.runtime``). A failure is left for the round itself to report."""
    try:
        import clients.training  # noqa: F401  (torch, Flower's records, the round code)
        from fedkd.client.runtime import data_key, federated_data

        federated_data(data_key(json.loads(cfg_json)))
    except Exception:  # the first message meets the same error and reports it
        pass
    return os.getpid()


def wait_warm(timeout: float) -> None:
    """Wait up to ``timeout`` seconds for the warm-up calls queued so far (``_warm_worker``)
    on a private Ray instance (``address: local``; on a cluster none is kept).

    A warm-up that fails, or an actor lost meanwhile, is left for the first round to meet
    and report, as is a warm-up still going at the timeout.
    """
    refs, _SESSION.warming = list(_SESSION.warming), []
    if not refs or timeout <= 0:
        return
    import ray

    with contextlib.suppress(Exception):  # Ray gone meanwhile: the round reports it
        ray.wait(refs, num_returns=len(refs), timeout=timeout)


def call_in_worker(fn: Any, *args: Any) -> tuple[bool, Any]:
    """``(True, fn(*args))`` run on the session pool's first worker, after its warm-up (an
    actor runs its calls in order, so the libraries are loaded by then); ``(False, None)``
    without a local session pool, or if the call could not complete there (the worker
    lost, still busy after ``CALL_TIMEOUT``, or ``fn`` raised: the caller runs it itself
    and meets the same error).

    The launcher has a worker build the models instead of importing torch for it
    (``simulations.run``)."""
    pool = _SESSION.pool
    if pool is None or not _SESSION.local or not getattr(pool, "pool", None):
        return False, None
    import ray

    try:
        ref = pool.pool[0].__ray_call__.remote(_call, fn, args)
        return True, ray.get(ref, timeout=CALL_TIMEOUT)
    except Exception as err:  # the caller's fallback reports what matters
        log.debug("a worker could not run %s: %r", getattr(fn, "__name__", fn), err)
        return False, None


def _call(actor: Any, fn: Any, args: tuple) -> Any:
    return fn(*args)


def warm_new_actors(pool: Any, cfg_json: str | None) -> None:
    """Every actor ``pool``'s own factory creates from now on gets the warm-up for the run
    ``cfg_json`` (a run config as JSON; None: none) queued as its first task: the pool's
    first actors, and a replacement for a lost one (``simulations/nodeloss.py`` asks the
    same factory). A kept pool is pointed at each new run's config."""
    pool.fedkd_warm_up = cfg_json
    if getattr(pool, "fedkd_warms", False):
        return
    create = pool.create_actor_fn

    def create_warm_actor() -> Any:
        actor = create()
        if pool.fedkd_warm_up is not None:
            _SESSION.warming.append(actor.__ray_call__.remote(_warm_worker, pool.fedkd_warm_up))
        return actor

    pool.create_actor_fn = create_warm_actor
    pool.fedkd_warms = True


def _ping(actor: Any) -> int:
    return os.getpid()


def _kill_pool(pool: Any) -> None:
    import ray

    for actor in list(getattr(pool, "pool", [])) + list(
        getattr(pool, "_future_to_actor", {}).values()
    ):
        with contextlib.suppress(Exception):  # already gone
            ray.kill(actor)


def _pool_answers(pool: Any) -> bool:
    import ray

    if len(pool.pool) != pool.num_actors:
        return False
    try:
        ray.get([a.__ray_call__.remote(_ping) for a in pool.pool], timeout=PING_TIMEOUT)
    except Exception:
        return False
    return True


def _start(backend: dict[str, Any], env_vars: dict[str, str], cfg_json: str | None) -> bool:
    """Ray (reused if it runs with the same arguments), the pool and the warm-up calls;
    True if this call started Ray."""
    import ray

    from simulations.cluster import join_cluster

    started = time.perf_counter()
    _SESSION.warming = []  # an earlier run's, perhaps of a Ray session now gone
    init_args = dict(backend["init_args"])
    init_args.setdefault("include_dashboard", False)
    init_key = _key([init_args, env_vars])
    if ray.is_initialized() and _SESSION.init_key != init_key:
        end_session()
    started_ray = not ray.is_initialized()
    if started_ray:
        _SESSION.pool = None
        _release()  # an earlier start-up thread whose Ray is gone may end
        join_cluster(init_args, env_vars)  # a private instance ("local") or a cluster's head
        _SESSION.init_key = init_key
        _SESSION.local = init_args.get("address") == "local"
    ray_done = time.perf_counter()
    # the launcher imports Flower's engine (its SuperLink, SQLAlchemy, FastAPI: about 1 s of
    # CPU) while Ray starts; the pool is Flower's class and only for a Flower that fits
    if _SESSION.patched is not None:
        _SESSION.patched.wait()
        if not _SESSION.fits:
            return started_ray
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    from simulations.worker import ClientWorkerActor

    resources = dict(backend["client_resources"])
    pool = reused = _SESSION.pool
    if pool is not None and (_SESSION.resources_key != _key(resources) or not _pool_answers(pool)):
        _kill_pool(pool)
        pool = None
    if pool is None:
        pool = BasicActorPool(
            actor_type=ClientWorkerActor, client_resources=resources, actor_kwargs={}
        )
        warm_new_actors(pool, cfg_json)
        pool.add_actors_to_pool(pool.actors_capacity)  # each one's warm-up queued as it starts
    else:
        warm_new_actors(pool, cfg_json)  # a replacement during this run warms up for it
        if cfg_json is not None:  # queued before the first message on each actor
            for actor in pool.pool:
                _SESSION.warming.append(actor.__ray_call__.remote(_warm_worker, cfg_json))
    if init_args.get("address") != "local":
        # a cluster may hold actors waiting for a node (one lost, one not yet joined):
        # their warm-up would hold round 1 back until the timeout, so none is waited for
        _SESSION.warming = []
    _SESSION.pool, _SESSION.resources_key = pool, _key(resources)
    _SESSION.timings = {
        "ray": ray_done - started,
        "pool": time.perf_counter() - ray_done,
        "reused_ray": float(not started_ray),
        "reused_pool": float(pool is reused),
    }
    return started_ray


def _start_and_stay(ready: threading.Event, *args: Any) -> None:
    """Start the session; if this thread started Ray, stay until Ray is down: Ray's
    processes die with the thread that started them (``PR_SET_PDEATHSIG`` is per thread)."""
    release = threading.Event()
    started_ray = False
    try:
        started_ray = _start(*args)
        if started_ray:
            _SESSION.release = release
    except BaseException as err:  # Flower's own start-up then runs and reports it
        _SESSION.error = err
        _SESSION.pool = None
        started_ray = _ray_is_up()  # a half-started Ray must not lose its parent thread
        if started_ray:
            _SESSION.release = release
    finally:
        ready.set()
    if started_ray:
        release.wait()


def start_session(
    backend: dict[str, Any], env_vars: dict[str, str], cfg_json: str | None = None
) -> bool:
    """Start Ray (or reuse this process's session), the actor pool and each worker's warm-up
    in a background thread; ``wait_session`` waits for it. False if this Flower does not
    fit (Ray, if this call started it, is stopped again).

    Ray's daemons start first; this thread meanwhile imports and patches Flower's engine
    (``install_session``, about 1 s), which only the pool needs.

    Until ``wait_session`` returns, the interpreter hands its lock between threads every
    ``START_SWITCH`` seconds instead of every 5 ms: the start-up thread's many short steps
    (starting Ray's daemons, connecting, creating the actors) each wait for the lock while
    this thread imports libraries, and Ray's start took 0.2 s longer for it (three runs of
    each, docs/performance.md)."""
    wait_session()
    import sys

    _SESSION.switch = sys.getswitchinterval()
    sys.setswitchinterval(min(START_SWITCH, _SESSION.switch))
    _SESSION.error = None
    _SESSION.started = time.perf_counter()
    _SESSION.ready = threading.Event()
    _SESSION.patched, _SESSION.fits = threading.Event(), False
    _SESSION.thread = threading.Thread(
        target=_start_and_stay,
        args=(_SESSION.ready, backend, env_vars, cfg_json),
        name="fedkd-ray-session",
        daemon=True,
    )
    _SESSION.thread.start()
    try:
        _SESSION.fits = install_session()
    finally:
        _SESSION.patched.set()
        if not _SESSION.fits:  # Flower's own start-up runs instead, as it would unpatched
            wait_session()
            end_session()
    return _SESSION.fits


def _ray_is_up() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _release() -> None:
    """Let the thread that started the last Ray session end (call once Ray is down)."""
    if _SESSION.release is not None:
        _SESSION.release.set()
    _SESSION.release = None


def wait_session() -> float:
    """Wait until ``start_session``'s thread has started Ray; the seconds waited here."""
    ready, waited = _SESSION.ready, time.perf_counter()
    if ready is not None:
        ready.wait()
        _SESSION.ready = None
        if _SESSION.error is not None:
            log.debug("starting Ray early failed: %r", _SESSION.error)
    if _SESSION.switch is not None:  # the start-up is over: the interpreter's own interval
        import sys

        sys.setswitchinterval(_SESSION.switch)
        _SESSION.switch = None
    return time.perf_counter() - waited


def end_session() -> None:
    """Stop this process's kept workers and its Ray session (if Ray runs)."""
    import ray

    if _SESSION.pool is not None:
        _kill_pool(_SESSION.pool)
    _SESSION.pool = _SESSION.init_key = _SESSION.resources_key = None
    if ray.is_initialized():
        ray.shutdown()
    _release()


def abandon_session() -> None:
    """A run stopped before its simulation: join the start-up thread; Ray stays only if
    shared."""
    wait_session()
    if not _SESSION.shared and not _left_to_exit():
        end_session()


def _by_reference(app_fn: Any) -> Any:
    """The fedkd ClientApp's loader as a module function (pickled as its name) instead of
    Flower's closure (pickled with the whole ClientApp into every message)."""
    import sys

    from simulations.worker import fedkd_client_app

    ours = getattr(sys.modules.get("clients.app"), "app", None)
    return fedkd_client_app if ours is not None and app_fn() is ours else app_fn


def install_session() -> bool:
    """Let Flower's RayBackend take the session's pool and, when shared, keep it."""
    global _session_installed
    if _session_installed:
        return True
    try:
        from flwr.server.superlink.fleet.vce.backend import raybackend
    except ImportError:
        return False
    backend = getattr(raybackend, "RayBackend", None)
    build, terminate = getattr(backend, "build", None), getattr(backend, "terminate", None)
    if build is None or terminate is None or not hasattr(raybackend, "BasicActorPool"):
        return False
    if list(inspect.signature(build).parameters) != ["self", "app_fn"]:
        return False

    def build_with_session_pool(self: Any, app_fn: Any) -> None:
        pool, resources = _SESSION.pool, _key(dict(self.client_resources))
        if pool is None or _SESSION.resources_key != resources:
            return build(self, app_fn)
        _SESSION.pool = None  # this run's now
        self.pool = pool
        self.app_fn = _by_reference(app_fn)

    def terminate_or_keep(self: Any) -> None:
        import ray

        pool = self.pool
        if _SESSION.shared and pool is not None and ray.is_initialized():
            if len(pool.pool) == pool.num_actors:  # every actor idle: keep them warm
                _SESSION.pool, _SESSION.resources_key = pool, _key(dict(self.client_resources))
                self.pool = None
                return
            _kill_pool(pool)
            self.pool = None
            return
        if _left_to_exit():  # its actors go with Ray's processes as the launcher exits
            self.pool = None
            return
        _SESSION.pool = _SESSION.init_key = _SESSION.resources_key = None
        terminate(self)  # Flower's: the actors, then ray.shutdown()
        _release()

    build_with_session_pool.__wrapped__ = build  # type: ignore[attr-defined]
    terminate_or_keep.__wrapped__ = terminate  # type: ignore[attr-defined]
    backend.build = build_with_session_pool
    backend.terminate = terminate_or_keep
    _session_installed = True
    return True
