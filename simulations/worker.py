"""The simulation's Ray actor: Flower's ``ClientAppActor`` without Flower's simulation package.

Ray ships an actor class to its workers by reference, so a worker running Flower's
``flwr.simulation.ray_transport.ray_actor.ClientAppActor`` imports ``flwr.simulation`` and
with it the whole SuperLink (its LinkState, SQLAlchemy, FastAPI, the CLI): seconds of
start-up per worker that no client round uses. ``ClientWorker`` does what that actor does
(run the ClientApp on a message and its Context, Flower's exceptions on failure) and
imports only Ray and Flower's ClientApp module. ``fedkd_client_app`` loads the fedkd
ClientApp in the worker: sent by reference instead of Flower's closure, which pickles the
whole ClientApp object into every message.

A call travels as one ``bytes`` argument and comes back as one ``bytes`` result
(``pack``/``unpack``): the loader and a batch of messages, each with its client id and
``Context``, pickled together by the standard pickler (``simulations/batching.py`` says how
a batch is made). A ClientApp that fails fails its own message (a ``Failure`` in its place);
the batch goes on. Given separate arguments, Ray serialises each one through
cloudpickle's Python-level hooks and flattens the call's signature on every call; a bytes
object it passes as it is (docs/performance.md, "One bytes object per call").
"""

from __future__ import annotations

import pickle
import traceback
from dataclasses import dataclass
from typing import Any

import ray
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError


def pack(*objects: Any) -> bytes:
    """``objects`` as one bytes object: the standard pickler (C), cloudpickle only for what
    it cannot pickle (a closure given as the ClientApp loader)."""
    try:
        return pickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        return ray.cloudpickle.dumps(objects, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(data: bytes) -> tuple:
    """What ``pack`` packed; it comes from this simulation's own driver or worker (the
    trust Ray's own pickled arguments have), never from a client over the network."""
    return pickle.loads(data)


def fedkd_client_app() -> Any:
    """The fedkd ClientApp of this process (``clients.app.app``)."""
    from clients.app import app

    return app


def check_models(
    model_cfg: dict[str, Any], num_clients: int, input_shape: tuple[int, ...], num_classes: int
) -> str | None:
    """In a worker: build each client architecture once (``fedkd.models.check_client_models``);
    the one-line error if one cannot be built, else None."""
    from fedkd.errors import FedkdError
    from fedkd.models import check_client_models

    try:
        check_client_models(model_cfg, num_clients, input_shape, num_classes)
    except FedkdError as err:
        return str(err)
    return None


@dataclass(frozen=True)
class Failure:
    """A message whose ClientApp failed in the worker: ``load`` (the ClientApp could not be
    loaded: Flower's ``LoadClientAppError``) or ``app`` (it raised: ``ClientAppException``),
    the error's text and the worker's traceback."""

    kind: str
    text: str
    trace: str

    def exception(self) -> Exception:
        """The exception Flower's engine turns into the message's error reply."""
        kind = LoadClientAppError if self.kind == "load" else ClientAppException
        ex: Exception = kind(self.text)
        ex.fedkd_traceback = self.trace  # type: ignore[attr-defined]
        return ex


class ClientWorker:
    """One Ray worker process running ClientApps, message after message."""

    def __init__(self, on_actor_init_fn: Any = None) -> None:
        if on_actor_init_fn:
            on_actor_init_fn()

    def run(self, call: bytes) -> bytes:
        """As Flower's ``VirtualClientEngineActor.run``, for a batch and packed: ``call`` is
        ``pack(client_app_fn, [(message, cid, context), ...])``; returns ``pack([...])``,
        for each message in turn ``(cid, reply, updated context)`` or a ``Failure``.

        The messages run one after the other, each with its own ``Context``; a second
        message for the same node gets the ``Context`` the first one left."""
        client_app_fn, batch = unpack(call)
        try:
            app = client_app_fn()
        except LoadClientAppError as ex:
            failed = Failure("load", str(ex), traceback.format_exc())
            return pack([failed] * len(batch))
        except Exception as ex:
            failed = Failure("app", str(ex), traceback.format_exc())
            return pack([failed] * len(batch))
        left: dict[int, Any] = {}  # node id -> the Context its last message left
        out: list[Any] = []
        for message, cid, context in batch:
            node = message.metadata.dst_node_id
            context = left.get(node, context)
            try:
                reply = app(message=message, context=context)
            except LoadClientAppError as ex:
                out.append(Failure("load", str(ex), traceback.format_exc()))
                continue
            except Exception as ex:
                out.append(Failure("app", str(ex), traceback.format_exc()))
                continue
            left[node] = context
            out.append((cid, reply, context))
        return pack(out)

    def terminate(self) -> None:
        ray.actor.exit_actor()


ClientWorkerActor = ray.remote(ClientWorker)
