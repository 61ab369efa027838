"""The simulation's Ray actor: Flower's ``ClientAppActor`` without Flower's simulation package.

Ray ships an actor class to its workers by reference, so a worker running Flower's
``flwr.simulation.ray_transport.ray_actor.ClientAppActor`` imports ``flwr.simulation`` and
with it the whole SuperLink (its LinkState, SQLAlchemy, FastAPI, the CLI): seconds of
start-up per worker that no client round uses. ``ClientWorker`` does what that actor does
(run the ClientApp on one message and its Context, Flower's exceptions on failure) and
imports only Ray and Flower's ClientApp module. ``fedkd_client_app`` loads the fedkd
ClientApp in the worker: sent by reference instead of Flower's closure, which pickles the
whole ClientApp object into every message.
"""

from __future__ import annotations

from typing import Any

import ray
from flwr.clientapp.client_app import ClientAppException, LoadClientAppError


def fedkd_client_app() -> Any:
    """The fedkd ClientApp of this process (``clients.app.app``)."""
    from clients.app import app

    return app


class ClientWorker:
    """One Ray worker process running ClientApps, message after message."""

    def __init__(self, on_actor_init_fn: Any = None) -> None:
        if on_actor_init_fn:
            on_actor_init_fn()

    def run(self, client_app_fn: Any, message: Any, cid: str, context: Any) -> tuple:
        """As Flower's ``VirtualClientEngineActor.run``: (cid, reply, updated context)."""
        try:
            app = client_app_fn()
            out_message = app(message=message, context=context)
        except LoadClientAppError as load_ex:
            raise load_ex
        except Exception as ex:
            raise ClientAppException(str(ex)) from ex
        return cid, out_message, context

    def terminate(self) -> None:
        ray.actor.exit_actor()


ClientWorkerActor = ray.remote(ClientWorker)
