"""``fedkd-deploy``: Flower's deployment runtime on one machine, for trying it and for tests.

Starts a ``flower-superlink`` and N ``flower-supernode`` processes on loopback
(free ports), registers SuperNode keys, submits this app with ``flwr run``
(Hydra overrides passed through the run config's ``overrides``), streams every
process's log with a ``[name]`` prefix, and stops every process it started at
the end or on Ctrl-C. These are the same commands docs/deployment.md runs by hand on
separate machines; only the addresses differ.

Each SuperNode runs with ``--isolation process`` beside one long-lived ClientApp
process (``simulations.clientapp_process``) that serves all its messages, so
torch, the app and the node's data are loaded once per node, not once per
message; ``--isolation subprocess`` keeps Flower's default (a ``flwr-clientapp``
process per message).

TLS is on unless ``--insecure``; SuperNode authentication is on unless
``--no-auth`` (it needs TLS). A development CA and keys are made in the work
directory (``scripts/certs.sh``, ``scripts/supernode_keys.sh``) unless given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from fedkd.errors import DataError, FedkdError
from simulations.proctree import MARKER, stop_tree

ROOT = Path(__file__).resolve().parent.parent  # the Flower App (pyproject.toml)
BIN = Path(sys.executable).parent
CONNECTION = "fedkd"  # the SuperLink connection name in the flwr CLI's config
# process: a long-lived ClientApp process per SuperNode; subprocess: Flower's default,
# a flwr-clientapp process per message
ISOLATIONS = ("process", "subprocess")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class DeployError(RuntimeError):
    """A deployment step failed; the message is one line."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Deployment:
    """One SuperLink and its SuperNodes as processes of this machine.

    A context manager: leaving it stops every process started through it,
    including Flower's detached SuperExec processes (``simulations.proctree``).
    """

    def __init__(
        self,
        work_dir: str | Path,
        *,
        tls: bool = True,
        auth: bool = True,
        certs: str | Path | None = None,
        echo: bool = True,
        launch_id: str | None = None,
        isolation: str = "process",
    ) -> None:
        if isolation not in ISOLATIONS:
            raise DeployError(f"isolation {isolation!r} is not one of {', '.join(ISOLATIONS)}")
        if auth and not tls:
            raise DeployError(
                "SuperNode authentication needs TLS (drop --insecure or add --no-auth)"
            )
        self.work_dir = Path(work_dir).resolve()
        self.tls, self.auth, self.echo, self.isolation = tls, auth, echo, isolation
        self.certs = Path(certs).resolve() if certs else self.work_dir / "certs"
        self.launch_id = launch_id or uuid.uuid4().hex  # MARKER on every process we start
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, list[str]] = {}
        self._threads: list[threading.Thread] = []
        self._print_lock = threading.Lock()
        (self.work_dir / "logs").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ processes
    def env(self, home: str, pythonpath: Path | None = None) -> dict[str, str]:
        """Every process gets its own FLWR_HOME (FAB installs must not race) and our marker;
        ``pythonpath``: put first on PYTHONPATH (this checkout's modules)."""
        extra = {}
        if pythonpath is not None:
            before = os.environ.get("PYTHONPATH")
            extra["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *([before] if before else [])])
        return {
            **os.environ,
            **extra,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.work_dir / "flwr" / home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
            MARKER: self.launch_id,
        }

    def spawn(
        self, name: str, cmd: list[str], home: str, pythonpath: Path | None = None
    ) -> subprocess.Popen:
        """Start ``cmd`` in its own session and stream its output as ``[name] line``."""
        proc = subprocess.Popen(
            cmd,
            cwd=self.work_dir,
            env=self.env(home, pythonpath),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.procs[name] = proc
        self.logs[name] = []
        thread = threading.Thread(target=self._pump, args=(name, proc), daemon=True)
        thread.start()
        self._threads.append(thread)
        return proc

    def _pump(self, name: str, proc: subprocess.Popen) -> None:
        """Copy a process's output to logs/<name>.log (timestamped) and the console.

        The console skips the HTTP access lines (several per second per node).
        """
        assert proc.stdout is not None
        log_name = re.sub(r"[^\w.-]+", "_", name)  # "node 0" -> logs/node_0.log
        with (self.work_dir / "logs" / f"{log_name}.log").open("a", encoding="utf-8") as file:
            for line in proc.stdout:
                line = line.rstrip("\n")
                self.logs[name].append(line)
                stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
                file.write(f"{stamp} {_ANSI.sub('', line)}\n")
                file.flush()
                if self.echo and "uvicorn.access" not in line:
                    with self._print_lock:
                        print(f"[{name}] {line}", flush=True)

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """One ``flwr`` CLI command against this SuperLink (not streamed)."""
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            cwd=self.work_dir,
            env=self.env("cli"),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self, grace: float = 20.0) -> list[int]:
        """Stop every process started here (SIGTERM, then SIGKILL); returns survivors."""
        left = stop_tree(list(self.procs.values()), self.launch_id, grace=grace, term_first=3.0)
        for thread in self._threads:
            thread.join(timeout=2)
        return left

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        try:
            left = self.stop()
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.default_int_handler)
        if left:
            print(f"fedkd-deploy: processes still running: {left}", file=sys.stderr)

    # ------------------------------------------------------------ security
    def make_certs(self) -> None:
        """A development CA and a server certificate for 127.0.0.1 (kept if present)."""
        if (self.certs / "server.crt").exists():
            return
        _script("certs.sh", str(self.certs))

    def make_keys(self, count: int) -> list[Path]:
        keys = self.work_dir / "keys"
        _script("supernode_keys.sh", str(keys), str(count))
        return [keys / f"node_{i}" for i in range(count)]

    # ------------------------------------------------------------ SuperLink
    def start_superlink(self, timeout: float = 60) -> None:
        cmd = [str(BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port)]
        if self.tls:
            self.make_certs()
            cmd += [
                "--ssl-ca-certfile",
                str(self.certs / "ca.crt"),
                "--ssl-certfile",
                str(self.certs / "server.crt"),
                "--ssl-keyfile",
                str(self.certs / "server.key"),
            ]
        else:
            cmd.append("--insecure")
        if self.auth:
            cmd.append("--enable-supernode-auth")
        cmd.append("--disable-runtime-dependency-installation")
        proc = self.spawn("superlink", cmd, "superlink")
        self._write_cli_config()
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if proc.poll() is not None:
                raise DeployError(f"flower-superlink exited ({self._last('superlink')})")
            if time.monotonic() > deadline:
                raise DeployError(f"flower-superlink not healthy within {timeout:.0f}s")
            time.sleep(0.3)

    def healthy(self) -> bool:
        import httpx

        scheme = "https" if self.tls else "http"
        verify: Any = ssl.create_default_context(cafile=self.certs / "ca.crt") if self.tls else True
        try:
            return httpx.get(
                f"{scheme}://{self.address}/health", timeout=2, verify=verify
            ).is_success
        except httpx.HTTPError:
            return False

    def _write_cli_config(self) -> None:
        """The flwr CLI's SuperLink connection (``$FLWR_HOME/config.toml``)."""
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
        lines.append(f'address = "{self.address}"')
        if self.tls:
            lines.append(f'root-certificates = "{self.certs / "ca.crt"}"')
        else:
            lines.append("insecure = true")
        home = self.work_dir / "flwr" / "cli"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def register(self, public_keys: Sequence[Path]) -> None:
        """Register SuperNode public keys (``flwr supernode register``), concurrently."""
        cmds = {
            key: [str(BIN / "flwr"), "supernode", "register", str(key), CONNECTION]
            for key in public_keys
        }
        running = {
            key: subprocess.Popen(
                cmd,
                cwd=self.work_dir,
                env=self.env("cli"),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for key, cmd in cmds.items()
        }
        for key, proc in running.items():
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
                raise DeployError(
                    f"flwr supernode register {key.name} failed: {lines[-1] if lines else ''}"
                )

    def online_nodes(self) -> int:
        result = self.flwr("supernode", "ls", CONNECTION, "--format", "json")
        try:
            nodes = json.loads(result.stdout)["nodes"]
        except (ValueError, KeyError):
            return 0
        return sum(node.get("status") == "online" for node in nodes)

    # ------------------------------------------------------------ SuperNodes
    def start_supernode(
        self, index: int, node_config: dict[str, Any], private_key: Path | None = None
    ) -> subprocess.Popen:
        """SuperNode ``index`` with its node config (``partition-id``, ``data-path``, ...);
        with process isolation also its ClientApp process (``clientapp <index>``)."""
        runtime_port = free_port()
        cmd = [
            str(BIN / "flower-supernode"),
            "--superlink",
            self.address,
            "--port",
            str(runtime_port),
            "--isolation",
            self.isolation,
            "--node-config",
            node_config_arg(node_config),
        ]
        cmd += ["--root-certificates", str(self.certs / "ca.crt")] if self.tls else ["--insecure"]
        if private_key is not None:
            cmd += ["--auth-supernode-private-key", str(private_key)]
        node = self.spawn(f"node {index}", cmd, f"node-{index}")
        if self.isolation == "process":
            self.start_clientapp(index, runtime_port, node.pid)
        return node

    def start_clientapp(self, index: int, runtime_port: int, supernode_pid: int) -> None:
        """The ClientApp process serving SuperNode ``index``'s Runtime API (loopback, no TLS,
        as the SuperNode's own ``flwr-clientapp`` processes use it); it exits with the
        SuperNode."""
        cmd = [sys.executable, "-m", "simulations.clientapp_process"]
        cmd += ["--runtime-api-address", f"127.0.0.1:{runtime_port}", "--insecure"]
        cmd += ["--parent-pid", str(supernode_pid)]
        self.spawn(f"clientapp {index}", cmd, f"node-{index}", pythonpath=ROOT)

    def wait_for_nodes(
        self, count: int, timeout: float = 90, names: Sequence[str] | None = None
    ) -> None:
        """Until ``count`` SuperNodes are connected (their log says so, or ``flwr supernode ls``).

        Raises if one of the SuperNodes ``names`` (default: all) exits meanwhile.
        """
        deadline = time.monotonic() + timeout
        next_ls = time.monotonic() + 5
        while True:
            nodes = list(names or [name for name in self.procs if name.startswith("node")])
            connected = sum(
                any("SuperNode ID:" in line for line in self.logs[name]) for name in nodes
            )
            if connected >= count:
                return
            for name in nodes:
                app = name.replace("node", "clientapp")  # its ClientApp process, if any
                for proc in (name, app) if app in self.procs else (name,):
                    if self.procs[proc].poll() is not None:
                        raise DeployError(f"{proc} exited: {self._last(proc)}")
            if time.monotonic() > next_ls:
                if self.online_nodes() >= count:
                    return
                next_ls = time.monotonic() + 5
            if time.monotonic() > deadline:
                raise DeployError(f"fewer than {count} SuperNodes online after {timeout:.0f}s")
            time.sleep(0.3)

    # ------------------------------------------------------------ the run
    def submit(self, overrides: Sequence[str], run_dir: str | Path, timeout: float = 3600) -> int:
        """``fedkd-flwr-run`` this app (``flwr run --stream``, then the run's status) until
        the run ends; returns its exit code: 0 only if the run completed."""
        text = " ".join(overrides)
        if "'" in text:
            raise DeployError("overrides cannot contain single quotes (use double quotes)")
        config = f"overrides='{text}' run_dir='{Path(run_dir).resolve()}'"
        cmd = [sys.executable, "-m", "simulations.flwr_run", str(ROOT), CONNECTION, "-c", config]
        proc = self.spawn("flwr run", cmd, "cli", pythonpath=ROOT)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise DeployError(f"the run did not end within {timeout:.0f}s") from None

    def _last(self, name: str) -> str:
        """The most telling line of a process's log: its last error, else its last line."""
        for thread in self._threads:
            thread.join(timeout=0.5)
        lines = [_ANSI.sub("", ln).strip() for ln in self.logs.get(name, []) if ln.strip()]
        errors = [ln for ln in lines if "[code:" in ln or "error" in ln.lower()]
        return (errors or lines or ["no output"])[-1]


def node_config_arg(config: dict[str, Any]) -> str:
    """``--node-config`` text: ``key=value`` pairs, strings quoted as TOML wants."""
    parts = []
    for key, value in config.items():
        if isinstance(value, str):
            if '"' in value:
                raise DeployError(f"node config {key} cannot contain double quotes: {value}")
            value = f'"{value}"'
        parts.append(f"{key}={value}")
    return " ".join(parts)


def _script(name: str, *args: str) -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / name), *args], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise DeployError(f"scripts/{name} failed: {_tail(result)}")


def _tail(result: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (result.stderr + result.stdout).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else f"exit status {result.returncode}"


def existing_keys(folder: Path, nodes: int) -> list[Path]:
    """``folder/node_<i>`` for every node, each with its ``.pub``; DeployError naming the
    first missing file and how to make it."""
    keys = [folder.resolve() / f"node_{i}" for i in range(nodes)]
    for key in keys:
        for path in (key, key.with_suffix(".pub")):
            if not path.is_file():
                raise DeployError(
                    f"--keys {folder}: no {path.name} for {nodes} nodes; run "
                    f"`make keys NODES={nodes}` or drop --keys to make new ones"
                )
    return keys


def check_data(overrides: Sequence[str], paths: Sequence[str], nodes: int) -> None:
    """Fail before any process starts: the config, and each node's data against the run's task."""
    from fedkd.config import compose
    from fedkd.schema import check_early
    from server.options import check_deployment, check_options

    cfg = compose(list(overrides))
    cfg["num_clients"] = nodes
    check_early(cfg, overrides)  # no torch yet: a bad value stops in a second or two
    check_options(cfg)
    check_deployment(cfg)
    from fedkd.client.runtime import data_key, federated_data
    from fedkd.data.local import load_local_data
    from server.app import check_options as check_with_torch

    check_with_torch(cfg)  # each optimiser built by torch
    if paths:
        fed = federated_data(data_key(cfg))
        bad = []  # every bad file, one line each, named by its client (partition) id
        for i, path in enumerate(paths):
            try:
                load_local_data(path, num_classes=fed.num_classes, input_shape=fed.input_shape)
            except FedkdError as err:
                bad.append(f"client {i}: {err}")
        if bad:
            raise DataError("\n".join(bad))


def run(args: argparse.Namespace) -> int:
    """Start everything, run, stop everything; returns the exit status."""
    from fedkd.errors import FedkdError

    data = [str(Path(p).resolve()) for p in args.data]
    nodes = args.nodes or len(data) or 2
    if data and len(data) != nodes:
        raise DeployError(f"--data given {len(data)} times for {nodes} nodes (give one per node)")
    try:
        check_data(args.overrides, data, nodes)
    except FedkdError as err:
        raise DeployError(str(err)) from None
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    work_dir = Path(args.work_dir or Path("outputs") / "deploy" / stamp).resolve()
    run_dir = work_dir / "run"
    tls = not args.insecure
    started = time.monotonic()
    launch_id = os.environ.get(MARKER)  # set by whoever wants to find our processes (tests)
    with Deployment(
        work_dir,
        tls=tls,
        auth=tls and args.auth,
        certs=args.certs,
        launch_id=launch_id,
        isolation=args.isolation,
    ) as dep:
        dep.start_superlink()
        if dep.auth and args.keys:  # e.g. from `make keys`
            keys = existing_keys(Path(args.keys), nodes)
        else:
            keys = dep.make_keys(nodes) if dep.auth else [None] * nodes
        if dep.auth:
            dep.register([key.with_suffix(".pub") for key in keys])
        for i in range(nodes):
            config: dict[str, Any] = {"partition-id": i, "num-partitions": nodes}
            if data:
                config["data-path"] = data[i]
            dep.start_supernode(i, config, keys[i])
        dep.wait_for_nodes(nodes)
        code = dep.submit(args.overrides, run_dir, timeout=args.timeout)
    summary_file = run_dir / "summary.json"
    if not summary_file.exists():
        print(f"fedkd-deploy: error: the run wrote no summary (logs: {work_dir / 'logs'})")
        return 1
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    print(
        f"fedkd-deploy: run {summary.get('status')} in {time.monotonic() - started:.0f}s, "
        f"{len(summary.get('clients', {}))} clients -> {run_dir}"
    )
    return 0 if code == 0 and summary.get("status") == "finished" else 1


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fedkd-deploy",
        description="Run fedkd with Flower's deployment runtime on this machine: a SuperLink, "
        "N SuperNodes and `flwr run`, all on loopback; every process is stopped at the end.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for fedkd-sim")
    parser.add_argument(
        "--nodes", type=int, default=0, help="SuperNodes (default: 2, or one per --data)"
    )
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="PATH",
        help="a node's own data (.npz/.csv/.parquet or image folder); once per node, in order",
    )
    parser.add_argument("--insecure", action="store_true", help="no TLS (and no authentication)")
    parser.add_argument(
        "--no-auth", dest="auth", action="store_false", help="no SuperNode authentication"
    )
    parser.add_argument("--certs", help="folder with ca.crt, server.crt, server.key (default: new)")
    parser.add_argument(
        "--keys", help="folder with SuperNode key pairs node_<i>, node_<i>.pub (default: new)"
    )
    parser.add_argument(
        "--work-dir", help="logs, keys, Flower homes and run/ (default: outputs/deploy/<time>)"
    )
    parser.add_argument(
        "--isolation",
        choices=ISOLATIONS,
        default="process",
        help="process: one ClientApp process per SuperNode for all its messages (default); "
        "subprocess: Flower's default, a flwr-clientapp process per message",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds the run may take")
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.nodes < 0:
        sys.exit("fedkd-deploy: error: --nodes must be >= 1")
    # Ctrl-C and SIGTERM unwind through Deployment.__exit__, which stops every process.
    # SIGINT is set explicitly: Python keeps it ignored when the parent ignored it (a
    # shell's `cmd &` without job control does), and then Ctrl-C would stop nothing.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        sys.exit(run(args))
    except DeployError as err:
        for line in str(err).splitlines():  # several bad clients: one line each
            print(f"fedkd-deploy: error: {line}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("fedkd-deploy: interrupted; every process it started was stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
