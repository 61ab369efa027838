"""A ClientApp process that serves every message of its SuperNode: started once, not per message.

Flower 1.41's SuperNode, in its default ``--isolation subprocess`` mode, starts a
``flower-superexec`` that starts a fresh ``flwr-clientapp`` process for every
message; ``flwr-clientapp`` (``flwr.supernode.runtime.run_clientapp``) serves one
task and exits, so every round imports torch, Flower and this app and loads the
node's data again. Flower's warm executor pools are for Kubernetes and not for
ClientApps.

With ``flower-supernode --isolation process`` the SuperNode starts nothing and
leaves its tasks to a process that polls its Runtime API (``AcquireTask``), as
``flower-superexec`` does. This module is that process: it acquires each
ClientApp task and runs it itself, with the same Runtime API calls and the same
error replies as ``flwr-clientapp`` (pull the task's message, context and FAB,
run the app, push the reply, then the task's status and context). The app's
modules and its per-process caches (``fedkd.client.runtime``: the node's data,
``clients.training``: model skeletons) therefore live across rounds, as in a Ray actor
of the simulation; the client's state still travels in the context the SuperNode
keeps, so the numbers are those of a process per message.

Ours: the loop, a task heartbeat that does not end the process when the
SuperNode drops a task, and the FAB rule: the first FAB is installed and imported
once; a task of another FAB (a new app version submitted to running nodes) is
handed to Flower's own ``flwr-clientapp`` (a process for that message), since
an imported module cannot be replaced. Restart this process to serve a new FAB
fast. Runtime dependency installation is not offered (the environment is the
one this process runs in). This module lives outside the app's packages
(``clients``, ``fedkd``, ...) and imports none of them, so the app's modules come
from the installed FAB, as in ``flwr-clientapp``, not from this checkout.

    flower-supernode --isolation process --port 9094 ...
    python -m simulations.clientapp_process --runtime-api-address 127.0.0.1:9094 --insecure
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import (  # pylint: disable=E0611
    AcquireTaskRequest,
    SendTaskHeartbeatRequest,
)
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import RetryInvoker, make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

log = logging.getLogger("fedkd.clientapp")


class ClientAppProcess:
    """Acquire the SuperNode's ClientApp tasks and run each in this process."""

    def __init__(self, address: str, insecure: bool, root_certificates: str | None) -> None:
        self.address, self.insecure, self.root_path = address, insecure, root_certificates
        self.certificates = validate_and_resolve_root_certificates(root_certificates, insecure)
        self.fab_hash: str | None = None  # the FAB whose modules this process imported
        self.app: ClientApp | None = None
        self.served = 0

    def client(self, token: str | None = None) -> RuntimeHttpClient:
        interceptors: list = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp")]
        if token is not None:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=self.insecure,
            root_certificates=self.certificates,
            interceptors=interceptors,
            retry_invoker=_retry_invoker(),
        )

    def serve(self, poll: float) -> None:
        """Poll for tasks every ``poll`` seconds and run each one; until interrupted."""
        _wait_for_port(self.address)
        tasks = self.client()
        request = AcquireTaskRequest(supported_task_types=[str(TaskType.CLIENT_APP)])
        log.info("ClientApp process %d serving the SuperNode at %s", os.getpid(), self.address)
        try:
            while True:
                res = tasks.AcquireTask(request)
                if res.HasField("task") and res.token:
                    if self.fab_hash not in (None, res.task.fab_hash):
                        self.cold(res.token, res.task.task_id)
                    else:
                        self.run_task(res.token, res.task.task_id)
                    continue  # another message may be waiting
                time.sleep(poll)
        finally:
            tasks.close()

    def run_task(self, token: str, task_id: int) -> None:
        """One task, as ``flwr-clientapp`` runs it (``run_clientapp``), in this process."""
        client = self.client(token)
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(client, stop), daemon=True)
        beat.start()
        message = context = reply = None
        interrupted = False
        status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            message, context, run, fab = pull_task_input(client)
            if self.app is None:
                install_from_fab(fab.content, skip_prompt=True)
                load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
                self.app = load(run.fab_id, run.fab_version, fab.hash_str)
                self.fab_hash = fab.hash_str
            self.served += 1
            log.info(
                "ClientApp process %d: task %d (run %d, %s message, #%d in this process)",
                os.getpid(), task_id, run.run_id, message.metadata.message_type, self.served,
            )  # fmt: skip
            reply = self.app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except KeyboardInterrupt:  # stopped, or the SuperNode is gone: nothing to push
            interrupted = True
            raise
        except (Exception, SystemExit) as ex:  # as run_clientapp: the error goes back as
            # the reply; an app's sys.exit ends its task, not the process serving the node
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            reason = str(type(ex)) + ":<'" + str(ex) + "'>"
            if isinstance(ex, LoadClientAppError):
                reason = "An exception was raised when attempting to load `ClientApp`"
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
            log.error("ClientApp raised an exception", exc_info=ex)
            details = reason
            if message is not None:
                reply = Message(Error(code=code, reason=reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None and not interrupted:
                    push_message(client, reply, context)
            except Exception as ex:  # a dropped task or a SuperNode gone: the next one
                log.error("Failed to push the reply of task %d", task_id, exc_info=ex)
            try:  # the task's status too, as Flower's on_exit, even if the reply failed
                if not interrupted:
                    push_task_output(client, context, status, details)
            except Exception as ex:
                log.error("Failed to push the status of task %d", task_id, exc_info=ex)
            stop.set()
            beat.join()
            client.close()
            TaskIdentity.task_id = TaskIdentity.run_id = TaskIdentity.node_id = None

    def cold(self, token: str, task_id: int) -> None:
        """A task of another FAB: Flower's ``flwr-clientapp`` runs it in a process of its own."""
        log.warning(
            "task %d belongs to another FAB than the one this process imported; it runs in "
            "a flwr-clientapp process of its own (restart this process to serve it here)",
            task_id,
        )
        cmd = [str(Path(sys.executable).parent / "flwr-clientapp"), "--runtime-api-address"]
        cmd += [self.address, "--token", token, "--parent-pid", str(os.getpid())]
        cmd += ["--insecure"] if self.insecure else []
        cmd += ["--root-certificates", self.root_path] if self.root_path else []
        subprocess.run(cmd, check=False)


def _retry_invoker() -> RetryInvoker:
    """Flower's HTTP retry policy, except for a refused token (HTTP 401: the SuperNode
    dropped the task) and a run that is not running (HTTP 403: stopped or finished while
    the task still pushed): either ends the task with the HTTP error, where Flower's
    policy would SIGINT the process (401) or raise ``RunNotRunningException``, a
    ``BaseException`` (403), right for a process per task but not for this one, which
    serves the node's next tasks."""
    invoker = make_simple_http_retry_invoker()
    flower_giveup = invoker.should_giveup

    def should_giveup(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403):
            return True
        return flower_giveup is not None and flower_giveup(exc)

    invoker.should_giveup = should_giveup
    return invoker


def _wait_for_port(address: str) -> None:
    """Until the SuperNode's Runtime API accepts connections (it starts after this
    process; the parent-process monitor ends the wait if the SuperNode exits)."""
    host, _, port = address.rpartition(":")
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)


def _heartbeat(client: RuntimeHttpClient, stop: threading.Event) -> None:
    """The task's heartbeat until ``stop``. A task the SuperNode no longer knows ends the
    beats, not the process (``flwr-clientapp`` exits there; this process serves on)."""
    request = SendTaskHeartbeatRequest()
    while True:  # one at once, then as often as Flower's own senders (about every 10 s)
        try:
            if not client.SendTaskHeartbeat(request).success:
                return
        except httpx.HTTPError:
            pass
        if stop.wait(HEARTBEAT_DEFAULT_INTERVAL / 3):
            return


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.clientapp_process",
        description="Serve every ClientApp task of a SuperNode started with "
        "`flower-supernode --isolation process`, in this one process.",
    )
    parser.add_argument(
        "--runtime-api-address", required=True, help="the SuperNode's Runtime API (its --port)"
    )
    parser.add_argument("--insecure", action="store_true", help="the Runtime API has no TLS")
    parser.add_argument("--root-certificates", help="CA of the Runtime API's TLS certificate")
    parser.add_argument(
        "--parent-pid", type=int, help="exit when this process (the SuperNode) has exited"
    )
    parser.add_argument(
        "--poll", type=float, default=0.2, help="seconds between task polls when idle"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.insecure == bool(args.root_certificates):
        sys.exit(
            "simulations.clientapp_process: error: give exactly one of --insecure and "
            "--root-certificates (as the SuperNode's Runtime API has no TLS or has it)"
        )
    if args.poll <= 0:
        sys.exit(
            f"simulations.clientapp_process: error: --poll must be > 0 seconds (got {args.poll})"
        )
    handler = logging.StreamHandler()  # Flower's loggers keep their own handlers
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)  # SIGINT once the SuperNode is gone
    try:
        ClientAppProcess(args.runtime_api_address, args.insecure, args.root_certificates).serve(
            args.poll
        )
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
