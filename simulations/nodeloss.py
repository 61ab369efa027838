"""Lost Ray nodes and client placement in Flower's simulation engine (flwr 1.41).

**Node loss.** Flower's ``RayBackend.process_message`` hands a message to an idle
actor of its pool and, whatever goes wrong, puts that actor back. When the node
under an actor dies (its raylet is killed, the machine goes away), Ray answers
every call to that actor with ``RayActorError`` (``ActorUnavailableError`` first,
``ActorDiedError`` once the cluster knows): the dead actor stays in the pool and
absorbs a share of every later round's messages, each with a Flower traceback,
and the run still ends ``finished``.

``install()`` replaces ``process_message`` by one that, on ``RayActorError``:

- drops the dead actor from the pool (and kills its handle), never to be used again;
- records an event (client, the actor's node id and IP) that the server reads after
  the round (``server.nodeloss``: one console line and a ``node_loss`` row of
  ``summary.json`` per lost node and round);
- ``simulation.on_node_loss: replace``: asks the pool's own ``create_actor_fn`` for a
  replacement, which Ray places on a live node once one has room (it joins the pool
  when it answers; with no room left the pool goes on with the actors it has), and
  runs the message (with the rest of its batch, ``simulations/batching.py``) once more
  on the next idle live actor. If that attempt is lost
  too, the client's reply is ``NODE_UNAVAILABLE``: the server counts it as
  ``client_unavailable`` that round;
- ``fail``: no retry and no replacement; the reply is ``NODE_UNAVAILABLE`` and the
  server stops the run after the round (status ``node_lost``, exit status 1).

Either way Flower logs nothing for the lost actor: the fault is expected, not a bug;
Ray's own notices of the dead raylet stay off the console too (``quiet_node_deaths``,
unless ``logging.verbose``).
Any other exception is Flower's as before (logged, raised, the actor back in the pool).

**Placement.** Each actor is asked once, as its first task, where it runs
(``ray.get_runtime_context().get_node_id()`` and ``ray.util.get_node_ip_address()``
inside the actor, through Ray's ``__ray_call__``), so the ClientApp needs no Ray
code; an actor gets messages only once it has answered, so one Ray cannot place
(the pool was sized while a dead node was still listed) never holds a message. Every message the actor then runs counts for its client on that node:
``summary.json``'s ``placement`` (the driver's record; nothing reaches the strategy
or the clients' ``metrics``).

**With the session's pool** (``simulations/vce_patches.py``: Ray and a pool of warm
``ClientWorker`` actors started in the background, kept across the runs of a Hydra
multirun or ``fedkd-compare``): these patches wrap the session's, so ``build`` first takes
the session's pool and every run then asks each of its actors again where it runs; a
replacement comes from that pool's factory, so it is a ``ClientWorker`` whose first task
is the warm-up for the run it joins. When a run ends, actors still being placed are
settled (answered: back to the idle ones; not yet: killed, and the pool is not kept).
What the backend saw (``WATCH``) starts empty with each run's ``install``.

If this Flower's backend does not look like the one this was written against, the
patch is not applied and Flower's behaviour is kept (``install`` returns False).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections import Counter
from typing import Any

from server.nodeloss import LOST_REASON
from simulations import batching, vce_patches

POLICIES = ("replace", "fail")
REPLACEMENTS_PER_LOSS = 3  # a replacement that dies before answering is replaced again, this often
TAKE_WAIT = 0.5  # seconds between looks at the engine's stop flag while no actor is idle
DEPTH = 1  # messages in flight per actor (simulation.messages_per_worker, set by install)
PENDING_WAIT = 0.02  # seconds between looks at actors being placed while no actor is idle

_installed = False


class NodeWatch:
    """What the patched backend saw: lost actors (drained by the server) and placement."""

    def __init__(self, policy: str = "replace") -> None:
        self.policy = policy
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.nodes: dict[str, str] = {}  # node id -> IP
        self.runs: dict[int, Counter] = {}  # client -> node id -> messages run there
        self.stop: threading.Event | None = None  # the engine's stop flag (run_api's f_stop)

    def lost(self, client: int, where: tuple[str, str] | None, outcome: str) -> None:
        node_id, ip = where if where is not None else (None, None)
        with self.lock:
            self.events.append(
                {"client": client, "node_id": node_id, "node_ip": ip, "outcome": outcome}
            )

    def outcome(self, client: int, outcome: str) -> None:
        """The retry of ``client``'s message ended: ``recovered`` or ``no_reply``."""
        with self.lock:
            for event in reversed(self.events):
                if event["client"] == client and event["outcome"] == "retrying":
                    event["outcome"] = outcome
                    return

    def ran(self, client: int, where: tuple[str, str]) -> None:
        with self.lock:
            self.nodes[where[0]] = where[1]
            self.runs.setdefault(client, Counter())[where[0]] += 1

    def drain(self) -> list[dict[str, Any]]:
        """The events since the last call (the server reads them after each round)."""
        with self.lock:
            events, self.events = self.events, []
        return events

    def placement(self) -> dict[str, Any]:
        """``nodes``: node id -> IP, its clients, messages; ``clients``: client -> node ids."""
        with self.lock:
            nodes = {
                node: {
                    "ip": ip,
                    "clients": sorted(c for c, runs in self.runs.items() if node in runs),
                    "messages": sum(runs[node] for runs in self.runs.values()),
                }
                for node, ip in sorted(self.nodes.items())
            }
            clients = {str(c): sorted(runs) for c, runs in sorted(self.runs.items())}
        return {"nodes": nodes, "clients": clients}


WATCH = NodeWatch()


def _where(actor: Any = None) -> tuple[str, str]:
    """Run inside an actor (``__ray_call__`` passes it): the Ray node id and IP it runs on."""
    import ray

    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


class _Actors:
    """The pool's actors behind a condition: idle ones (``pool.pool``), ones running fewer
    than ``DEPTH`` messages (``open``), where each runs, actors not placed yet.

    An actor joins the idle actors only once it has said where it runs: one that Ray
    cannot place (the pool was sized while a dead node was still listed, or no live
    node has room for a replacement) is never handed a message to hang on.

    An actor takes up to ``DEPTH`` messages at a time (the engine runs ``DEPTH`` worker
    threads per actor, ``install``): Ray queues the second call in the actor, whose worker
    starts it as soon as the first ends, instead of idling while the driver receives the
    reply, hands the message's worker thread the next message and sends it (a few
    milliseconds a message, as long as a small client's round). An idle actor is always
    taken before a busy one. Every message still runs alone in its worker, with its own
    ``Context``: only when it starts changes, never what it computes, unless the message
    ahead of it straggles past the round's timeout (then the queued client misses the
    round too) or kills the worker (then it is retried once elsewhere). So ``DEPTH`` is 2
    only where no fault holds a client back (``resolve_depth``), or where
    ``simulation.messages_per_worker`` asks for it.
    """

    def __init__(self, pool: Any) -> None:
        import ray

        self.ray = ray
        self.pool = pool
        self.cond = threading.Condition()
        self.where: dict[Any, tuple[str, str]] = {}
        self.pending: list[tuple[Any, Any, int]] = []  # (actor, its placement ref, tries)
        self.busy: Counter = Counter()  # actor -> messages in flight
        self.open: list[Any] = []  # actors with 0 < messages in flight < DEPTH
        self.lost: dict[Any, tuple[str, str] | None] = {}  # dropped actor -> where it ran
        for actor in pool.pool:
            self.pending.append((actor, actor.__ray_call__.remote(_where), 0))
        pool.pool.clear()

    def _adopt(self) -> None:
        """Actors that answered join the idle ones; one that died first is replaced."""
        if not self.pending:
            return
        refs = [ref for _, ref, _ in self.pending]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        for actor, ref, tries in [p for p in self.pending if p[1] in ready]:
            self.pending.remove((actor, ref, tries))
            try:
                self.where[actor] = self.ray.get(ref)
            except self.ray.exceptions.RayActorError:
                self.pool.num_actors -= 1
                with contextlib.suppress(Exception):
                    self.ray.kill(actor, no_restart=True)
                if tries < REPLACEMENTS_PER_LOSS:
                    self.replace(tries + 1)
                continue
            self.pool.pool.append(actor)

    def _claim(self) -> Any | None:
        """An idle actor, else the least busy one with room; None if every actor is full.
        Among equally busy actors, the one that joined ``open`` last: the server pushes its
        longest jobs first, so that actor's current job is likely the shortest, and the
        queued message starts soonest behind it."""
        if self.pool.pool:
            actor = self.pool.pool.pop()
        elif self.open:
            actor = min(reversed(self.open), key=self.busy.__getitem__)
        else:
            return None
        self.busy[actor] += 1
        if actor in self.open and self.busy[actor] >= DEPTH:
            self.open.remove(actor)
        elif actor not in self.open and self.busy[actor] < DEPTH:
            self.open.append(actor)
        return actor

    def take(self, stop: threading.Event | None) -> Any | None:
        """A live actor with room for a message (an idle one first), waiting for one; None
        once the engine stops."""
        with self.cond:
            while True:
                self._adopt()
                actor = self._claim()
                if actor is not None:
                    return actor
                if stop is not None and stop.is_set():
                    return None
                # a busy actor coming back wakes us; one being placed is looked at often
                self.cond.wait(PENDING_WAIT if self.pending else TAKE_WAIT)

    def give_back(self, actor: Any) -> None:
        with self.cond:
            if actor in self.lost:  # dropped meanwhile (its other message met the loss)
                return
            self.busy[actor] -= 1
            if self.busy[actor] > 0:
                if actor not in self.open:
                    self.open.append(actor)
            else:
                del self.busy[actor]
                if actor in self.open:
                    self.open.remove(actor)
                self.pool.pool.append(actor)
            self.cond.notify()

    def drop(self, actor: Any) -> tuple[tuple[str, str] | None, bool]:
        """Forget a dead actor: where it ran, and whether this call dropped it (each of its
        messages in flight meets the loss; the first one drops it, and replaces it)."""
        with self.cond:
            if actor in self.lost:
                return self.lost[actor], False
            where = self.lost[actor] = self.where.pop(actor, None)
            self.busy.pop(actor, None)
            if actor in self.open:
                self.open.remove(actor)
            if actor in self.pool.pool:
                self.pool.pool.remove(actor)
            self.pool.num_actors -= 1
        with contextlib.suppress(Exception):  # its node is gone: nothing left to kill
            self.ray.kill(actor, no_restart=True)
        return where, True

    def replace(self, tries: int = 1) -> None:
        """A new actor from the pool's own factory; Ray places it on a live node with room."""
        actor = self.pool.create_actor_fn()
        with self.cond:
            self.pending.append((actor, actor.__ray_call__.remote(_where), tries))
            self.pool.num_actors += 1
            self.cond.notify()

    def settle(self) -> None:
        """The run is over: actors that said where they run go back to the pool's idle ones
        (a shared session keeps an all-idle pool for its next run), one that died first
        leaves it, one that has not answered yet is killed and still counted: a pool with
        such an actor is not kept (``vce_patches``)."""
        with self.cond:
            pending, self.pending = self.pending, []
            refs = [ref for _, ref, _ in pending]
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0) if refs else ([], [])
            for actor, ref, _ in pending:
                if ref in ready:
                    try:
                        self.where[actor] = self.ray.get(ref)
                    except Exception:  # died (RayActorError) or cannot say: it leaves
                        self.pool.num_actors -= 1
                    else:
                        self.pool.pool.append(actor)
                        continue
                with contextlib.suppress(Exception):
                    self.ray.kill(actor, no_restart=True)


def _unavailable(message: Any, reason: str) -> Any:
    from flwr.app import Error, Message
    from flwr.common.constant import ErrorCode

    return Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason=reason), reply_to=message)


def process_messages(self: Any, messages: list[Any], contexts: list[Any]) -> list[Any]:
    """Flower's ``RayBackend.process_message`` for a batch (``simulations/batching.py``), with
    lost actors dropped (module docstring): one entry per message, ``(reply, updated
    context)`` or the exception its ClientApp met (Flower's engine turns it into the
    message's error reply)."""
    import ray
    from flwr.common.constant import PARTITION_ID_KEY

    from simulations.worker import Failure, pack, unpack

    if self.pool is None:
        raise ValueError("The actor pool is empty, unfit to process messages.")
    if self.app_fn is None:
        raise ValueError(
            "Unspecified function to load a `ClientApp`. "
            "Call the backend's `build()` method before processing messages."
        )
    actors: _Actors = self.fedkd_actors
    clients = [int(context.node_config[PARTITION_ID_KEY]) for context in contexts]
    call = pack(
        self.app_fn,
        [(m, str(c), ctx) for m, c, ctx in zip(messages, clients, contexts, strict=True)],
    )
    watch = WATCH
    retried = False
    while True:
        actor = actors.take(watch.stop)
        if actor is None:
            reason = "the simulation is stopping"
            return [(_unavailable(m, reason), c) for m, c in zip(messages, contexts, strict=True)]
        try:
            (outcomes,) = unpack(ray.get(actor.run.remote(call)))
        except ray.exceptions.RayActorError as err:
            where, dropped = actors.drop(actor)
            reason = f"{LOST_REASON} ({type(err).__name__})"
            if watch.policy == "replace" and not retried:
                for client in clients:
                    watch.lost(client, where, "retrying")
                if dropped:  # one replacement per lost actor, whatever it was running
                    actors.replace()
                retried = True
                continue
            for client in clients:
                if retried:  # lost twice: no reply from this client this round
                    watch.outcome(client, "no_reply")
                else:  # on_node_loss: fail
                    watch.lost(client, where, "stopped")
            return [(_unavailable(m, reason), c) for m, c in zip(messages, contexts, strict=True)]
        except Exception:
            from logging import ERROR

            from flwr.supercore import log

            log(ERROR, "An exception was raised when processing a message by RayBackend")
            actors.give_back(actor)
            raise
        where = actors.where.get(actor)
        actors.give_back(actor)
        if len(outcomes) != len(messages):
            raise RuntimeError(f"a worker answered {len(outcomes)} of {len(messages)} messages")
        results: list[Any] = []
        for client, outcome in zip(clients, outcomes, strict=True):
            if retried:
                watch.outcome(client, "recovered")
            if isinstance(outcome, Failure):
                results.append(outcome.exception())
                continue
            if where is not None:
                watch.ran(client, where)
            _, reply, updated = outcome
            results.append((reply, updated))
        return results


def process_message(self: Any, message: Any, context: Any) -> tuple[Any, Any]:
    """Flower's ``RayBackend.process_message``: a batch of one (for Flower's own engine
    threads, if ``simulations/batching.py`` does not fit this Flower)."""
    (outcome,) = process_messages(self, [message], [context])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def check_policy(policy: Any) -> str:
    """``simulation.on_node_loss``: ConfigError (one line) unless replace or fail."""
    if policy not in POLICIES:
        from fedkd.errors import ConfigError

        raise ConfigError(
            f"simulation.on_node_loss must be one of {', '.join(POLICIES)} (got {policy!r})"
        )
    return policy


# what Ray's driver prints when a node dies: a dump of the raylet's last log lines, a notice
NODE_DEATH_NOTICES = ("Raylet is terminated", "has been marked dead because the detector")


def quiet_node_deaths() -> bool:
    """Keep Ray's notices of a dead node off the console (the server's line says it).

    Ray's driver prints them from a background thread through
    ``ray._private.worker.print_to_stdstream`` (``pid`` ``raylet``), looked up at each
    call: the wrapper drops those two notices and passes everything else on.
    """
    try:
        from ray._private import worker
    except ImportError:
        return False
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "fedkd_quiet", False):
        return original is not None

    def print_to_stdstream(data: Any, *args: Any, **kwargs: Any) -> Any:
        lines = data.get("lines") if isinstance(data, dict) else None
        if (
            isinstance(data, dict)
            and data.get("pid") == "raylet"
            and lines
            and any(notice in str(lines[0]) for notice in NODE_DEATH_NOTICES)
        ):
            return None
        return original(data, *args, **kwargs)

    print_to_stdstream.fedkd_quiet = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = print_to_stdstream
    return True


AUTO = batching.AUTO  # simulation.messages_per_worker: 2, or 1 when faults hold clients back
HELD_BACK = ("hang", "slow")  # fault kinds whose client keeps its worker busy past its turn


def check_depth(depth: object) -> int | str:
    """``simulation.messages_per_worker``: ``auto`` or a whole number >= 1."""
    return batching.check_auto_or_count(
        "simulation.messages_per_worker",
        depth,
        "1 runs each client alone in its worker, 2 queues the next one behind it",
    )


def resolve_depth(cfg: dict[str, Any]) -> int:
    """The messages a worker holds at once for the run ``cfg``.

    ``auto`` is 2 unless ``faults.hang`` or ``faults.slow`` picks a client, then 1: in a
    simulation a client keeps its worker busy past its turn only when a fault makes it (each
    client runs the same code on its own data; the round timeout, 600 s by default, is far
    from any of its turns), and a client queued behind one that hangs would miss the round
    with it. A number is taken as it is."""
    depth = check_depth(cfg["simulation"]["messages_per_worker"])
    if depth != AUTO:
        return int(depth)
    from fedkd.client.faults import assignments

    return 1 if set(HELD_BACK) & set(assignments(cfg)) else 2


def install(policy: str = "replace", verbose: bool = False, depth: int | None = None) -> bool:
    """Use the node-loss handling in this process's simulations; False if Flower's is kept.

    ``verbose``: Ray's own notices of a dead node stay on the console too. ``depth``: the
    messages an actor holds at once (a number: ``resolve_depth`` of the run; None:
    unchanged). With 2, the next client waits in the worker instead of the driver, but
    behind the client before it: a straggler or a hanging client holds it back too."""
    global _installed, DEPTH
    check_policy(policy)
    if depth is not None:
        if check_depth(depth) == AUTO:
            raise ValueError("messages_per_worker auto: install the number resolve_depth gives")
        DEPTH = int(depth)
    WATCH.__init__(policy)
    if not verbose:
        quiet_node_deaths()
    if _installed:
        return True
    try:
        from flwr.server.superlink.fleet.vce import vce_api
        from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    except ImportError:
        return False
    # the session's patches go under these, whichever is installed first: build takes the
    # session's pool (or makes Flower's), then its actors say where they run; terminate
    # first settles the actors being placed, then keeps the pool or ends it
    vce_patches.install_session()
    original = RayBackend.process_message
    run_api = getattr(vce_api, "run_api", None)
    if (
        list(inspect.signature(original).parameters) != ["self", "message", "context"]
        or run_api is None
        or "f_stop" not in inspect.signature(run_api).parameters
        or not hasattr(RayBackend, "build")
    ):
        return False
    build, terminate = RayBackend.build, RayBackend.terminate
    workers = RayBackend.num_workers

    def patched_build(self: Any, app_fn: Any) -> None:
        build(self, app_fn)
        self.fedkd_actors = _Actors(self.pool)

    def patched_terminate(self: Any) -> None:
        actors = getattr(self, "fedkd_actors", None)
        try:
            if actors is not None:
                actors.settle()
        finally:  # Ray is stopped (or its session kept) whatever settling met
            terminate(self)

    def patched_run_api(*args: Any, **kwargs: Any) -> None:
        bound = inspect.signature(run_api).bind(*args, **kwargs)
        WATCH.stop = bound.arguments["f_stop"]
        return run_api(*args, **kwargs)

    patched_build.__wrapped__ = build  # type: ignore[attr-defined]
    patched_terminate.__wrapped__ = terminate  # type: ignore[attr-defined]
    RayBackend.build = patched_build
    if isinstance(workers, property):  # the engine's worker threads: DEPTH per actor
        RayBackend.num_workers = property(lambda self: DEPTH * workers.fget(self))
    RayBackend.terminate = patched_terminate
    RayBackend.process_message = process_message
    RayBackend.process_messages = process_messages
    batching.install()  # the engine's threads send batches (when its worker loop fits)
    vce_api.run_api = patched_run_api
    _installed = True
    return True
