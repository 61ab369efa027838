"""Which Ray instance a simulation uses, and a bounded wait for a cluster to answer.

``simulation.ray_address: null`` starts a private local Ray instance: Ray's own
default (``ray.init()`` with no address) would join whatever ``RAY_ADDRESS`` or
the last ``ray start`` on this machine points to, so the launcher passes
``"local"``, which never picks up a running cluster. Joining one is explicit:
``"host:port"`` of a head started with ``ray start --head``, or ``"auto"`` for
the cluster that ``RAY_ADDRESS`` / the last ``ray start`` on this machine names.

Before Ray is asked to connect, the head's GCS port must accept a TCP
connection within ``simulation.connect_timeout`` seconds; otherwise the run
stops with one line (Ray itself retries "Failed to connect to GCS" for minutes).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedkd.errors import ConfigError

LOCAL = "local"
# where `ray start` records the address of the cluster it started (Ray's own convention)
CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"simulation.ray_address must be 'host:port' of a Ray head or 'auto' (got {address!r})"
        )
    return host.strip("[]"), int(port)


def resolve_address(sim: dict[str, Any]) -> str:
    """The address to hand ``ray.init``: ``"local"`` (a private instance) or ``host:port``."""
    address = sim["ray_address"]
    if address is None or address == "":
        return LOCAL
    if not isinstance(address, str):
        raise ConfigError(
            f"simulation.ray_address must be 'host:port' of a Ray head or 'auto' (got {address!r})"
        )
    if address == "auto":
        found = os.environ.get("RAY_ADDRESS") or (
            CURRENT_CLUSTER.read_text(encoding="utf-8").strip() if CURRENT_CLUSTER.is_file() else ""
        )
        if not found:
            raise ConfigError(
                "simulation.ray_address=auto found no running cluster (RAY_ADDRESS is unset and "
                "no `ray start` on this machine): start one with `ray start --head`, or give "
                "its 'host:port'"
            )
        address = found.removeprefix("ray://")
    _split(address)
    return address


def check_connect_timeout(sim: dict[str, Any]) -> float:
    value = sim["connect_timeout"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(
            f"simulation.connect_timeout must be a number of seconds > 0 (got {value!r})"
        )
    return float(value)


INLINE_MAX = 64 * 1024 * 1024  # Ray's gRPC messages stay far below its 512 MiB limit


def check_inline_bytes(sim: dict[str, Any]) -> int:
    """``simulation.inline_bytes``: ConfigError (one line) unless a whole number of bytes
    from 1024 to 64 MiB."""
    value = sim["inline_bytes"]
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= INLINE_MAX:
        raise ConfigError(
            f"simulation.inline_bytes must be a whole number of bytes from 1024 to {INLINE_MAX} "
            f"(got {value!r}); 1048576 suits models up to a few hundred thousand weights"
        )
    return value


def wait_for_head(address: str, timeout: float) -> None:
    """Return once ``address`` accepts a TCP connection; ConfigError after ``timeout`` seconds."""
    if address == LOCAL:
        return
    host, port = _split(address)
    deadline = time.monotonic() + timeout
    error: OSError | None = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            with socket.create_connection((host, port), timeout=min(left, 5.0)):
                return
        except OSError as err:
            error = err
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0.0)))
    reason = (error.strerror or str(error)) if error is not None else "no answer"
    raise ConfigError(
        f"simulation.ray_address={address}: no Ray head answered within "
        f"{timeout:g} s ({reason}); start it with `ray start --head --port={port}`, fix the "
        "address, or raise simulation.connect_timeout"
    )


def join_cluster(init_args: dict[str, Any], env_vars: dict[str, str]) -> None:
    """Connect to the cluster at ``init_args["address"]`` with ``env_vars`` set in every
    worker it starts for this job (the cluster's workers do not inherit the launcher's
    environment). Flower's engine then finds Ray initialised and uses this connection;
    like Flower, the workers get the launcher's ``sys.path`` as ``PYTHONPATH``.

    A private instance (``"local"``) is started by this process: its raylet, and so every
    worker, inherits this process's environment. There the variables are set in the
    environment while ``ray.init`` starts the instance, instead of a job ``runtime_env``:
    the raylet starts two workers ahead of any job, without a ``runtime_env``; a job that
    asks for one cannot use them, so its actors waited for two more workers to start (each
    importing ``ray`` first) while the two idle ones had spent their CPU for nothing
    (docs/performance.md, start-up).
    """
    import sys

    import ray

    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    env = {"PYTHONPATH": pythonpath, **env_vars}
    if init_args.get("address") != LOCAL:
        ray.init(runtime_env={"env_vars": env}, **init_args)
        return
    before = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        with lean_private_instance(init_args):
            ray.init(**init_args)
    finally:  # the launcher's own environment as it was
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def lean_private_instance(init_args: dict[str, Any]) -> Iterator[None]:
    """While ``ray.init`` starts a private instance, leave out the head's daemons a
    one-machine simulation never uses.

    ``ray.init`` has no argument for them (``ray start`` has ``--no-monitor``; the log
    monitor and the dashboard's API server are always started), and they cost ``ray.init``
    about 1 s and the start-up about 2 s of CPU on two cores (docs/performance.md, "The path
    to round 1"):

    - the autoscaler monitor: a private instance has one node and nothing to scale;
    - the log monitor, unless ``log_to_driver``: it forwards the workers' output to the
      driver, which does not listen without ``log_to_driver``;
    - the dashboard's API server, unless ``include_dashboard``: in its minimal mode it serves
      Ray's job submission and state API, which a simulation does not call, and
      ``ray.init`` waits for it to come up before it starts the raylet.

    Ray's ``Node`` takes these as ``RayParams`` fields (``no_monitor``,
    ``include_log_monitor``) that ``ray.init`` does not pass on; they are set on the
    parameters of the node started inside this block. A Ray without these hooks is
    started as it is.
    """
    try:
        import ray._private.node as ray_node
    except ImportError:  # a Ray laid out otherwise
        yield
        return
    node_class = getattr(ray_node, "Node", None)
    if node_class is None or not hasattr(node_class, "start_api_server"):
        yield
        return
    original_init = node_class.__init__
    original_api_server = node_class.start_api_server
    log_monitor = bool(init_args.get("log_to_driver", True))
    dashboard = bool(init_args.get("include_dashboard"))

    def init(self: Any, ray_params: Any, *args: Any, **kwargs: Any) -> None:
        ray_params.no_monitor = True
        if not log_monitor:
            ray_params.include_log_monitor = False
        original_init(self, ray_params, *args, **kwargs)

    node_class.__init__ = init
    if not dashboard:
        node_class.start_api_server = lambda self, **kwargs: None
    try:
        yield
    finally:
        node_class.__init__ = original_init
        node_class.start_api_server = original_api_server


def keep_launcher_signal_handlers() -> None:
    """Stop ``ray.init`` from replacing the launcher's SIGTERM handler.

    Ray sets one that calls ``sys.exit`` in the main thread; there the simulation
    engine is waiting for its worker threads inside a ``with ThreadPoolExecutor``
    block, and those threads only stop after the block: the launcher would hang
    instead of stopping. Ray looks the function up on its module at each call, so
    replacing it here keeps the launcher's handler (``simulations.run``) in place.
    """
    import ray._private.utils as ray_utils

    ray_utils.set_sigterm_handler = lambda handler: None
