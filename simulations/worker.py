"""The simulation's Ray actor: Flower's ``ClientAppActor`` without Flower's simulation package.

Ray ships an actor class to its workers by reference, so a worker running Flower's
``flwr.simulation.ray_transport.ray_actor.ClientAppActor`` imports ``flwr.simulation`` and
with it the whole SuperLink (its LinkState, SQLAlchemy, FastAPI, the CLI): seconds of
start-up per worker that no client round uses. ``ClientWorker`` does what that actor does
(run the ClientApp on one message and its Context, Flower's exceptions on failure) and
imports only Ray and Flower's ClientApp module. ``fedkd_client_app`` loads the fedkd
ClientApp in the worker: sent by reference instead of Flower's closure, which pickles the
whole ClientApp object into every message.

A call travels as one ``bytes`` argument and comes back as one ``bytes`` result
(``pack``/``unpack``): the loader, the message, the client id and its ``Context`` pickled
together by the standard pickler. Given four objects, Ray serialises each one through
cloudpickle's Python-level hooks and flattens the call's signature on every call; a bytes
object it passes as it is (docs/performance.md, "One bytes object per call").
"""

from __future__ import annotations

import pickle
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


class ClientWorker:
    """One Ray worker process running ClientApps, message after message."""

    def __init__(self, on_actor_init_fn: Any = None) -> None:
        if on_actor_init_fn:
            on_actor_init_fn()

    def run(self, call: bytes) -> bytes:
        """As Flower's ``VirtualClientEngineActor.run``, packed: ``call`` is
        ``pack(client_app_fn, message, cid, context)``; returns ``pack(cid, reply, updated
        context)``."""
        client_app_fn, message, cid, context = unpack(call)
        try:
            app = client_app_fn()
            out_message = app(message=message, context=context)
        except LoadClientAppError as load_ex:
            raise load_ex
        except Exception as ex:
            raise ClientAppException(str(ex)) from ex
        return pack(cid, out_message, context)

    def terminate(self) -> None:
        ray.actor.exit_actor()


ClientWorkerActor = ray.remote(ClientWorker)
