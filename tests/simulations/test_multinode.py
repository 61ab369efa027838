"""Two Ray nodes on one machine: a simulation across both, then a node killed mid-run.

The head and the worker raylets listen on distinct loopback addresses (Ray turns
127.0.0.1 into the machine's address, so 127.0.0.2 and up), one CPU each, each with
its own temporary directory. The test starts them with ``ray start --block`` and
stops every process it started by process id: the ``ray start`` processes, all they
started, and every process seen under them (a killed raylet's workers lose their
parent). It never runs ``ray stop``.

Every wait is for an event (a log line, a process ending); the long guard only keeps
a hung process from hanging the suite.
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
import time
from pathlib import Path

import pytest
from helpers import ROOT, kill_group, process_tree, start_fedkd_sim, stop_tree

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).parent / "ray"
HEAD_IP = "127.0.0.2"
GUARD = 900.0  # seconds: a hung process fails the test instead of hanging it (not a timing check)
# 4 clients on 2 one-CPU nodes; rounds 2-4 straggle a little so a round is in flight when the
# worker dies (the straggle is a fault that answers before training: results are unchanged)
RUN = [
    "num_clients=4",
    "num_rounds=4",
    "checkpoint.every=1",
    "faults.slow.clients=[0,1,2,3]",
    "faults.slow.rounds=[2,3,4]",
    "faults.slow.seconds=1.0",
    "logging.progress=false",
    "logging.tensorboard=false",
    "logging.table=false",
]
FIRST_CHECKPOINT = "checkpoint of round 1 written"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_DISABLE_USAGE_STATS"] = "1"
    env["PYTHONPATH"] = str(ROOT)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a process from a later one with its pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _wait_for(done, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + GUARD
    while not done():
        if proc is not None and proc.poll() is not None and not done():
            text = log.read_text(errors="replace") if log else ""
            pytest.fail(f"{what}: the process ended (status {proc.returncode}) first:\n{text}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: still not there after the {GUARD:g} s guard")
        time.sleep(0.2)


class Cluster:
    """A head node and worker nodes started here; ``stop`` ends every process they started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"{HEAD_IP}:{self.port}"
        self.procs: list[subprocess.Popen] = []
        # pid -> start time of every process seen under a node: a killed raylet's workers and
        # processes a `ray start` leaves behind lose their parent, so they are stopped by these
        self.known: dict[int, str | None] = {}

    def remember(self) -> None:
        for pid in process_tree([p.pid for p in self.procs]):
            self.known.setdefault(pid, _start_time(pid))

    def start(self, name: str, ip: str, head: bool) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        role = ["--head", f"--port={self.port}", "--include-dashboard=false"]
        cmd = [
            str(RAY),
            "start",
            "--block",
            *(role if head else [f"--address={self.address}"]),
            f"--node-ip-address={ip}",
            "--num-cpus=1",
            f"--temp-dir={self.root / name}",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
        ]
        with open(log, "w") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
            )
        self.procs.append(proc)
        _wait_for(
            lambda: "Ray runtime started" in log.read_text(errors="replace"),
            f"ray start ({name}, {ip})",
            proc,
            log,
        )
        self.remember()
        return proc

    def kill_raylet(self, node: subprocess.Popen) -> int:
        """SIGKILL the raylet of ``node``; its other processes are remembered for ``stop``."""
        self.remember()
        tree = process_tree([node.pid])
        raylets = [p for p in tree if _argv0(p).endswith("/raylet")]
        assert len(raylets) == 1, f"one raylet under ray start {node.pid}: {tree}"
        os.kill(raylets[0], signal.SIGKILL)
        return raylets[0]

    def stop(self) -> list[int]:
        self.remember()
        same = [p for p, started in self.known.items() if _start_time(p) == started]
        return stop_tree([*self.procs, *same], grace=60, term_first=5)


def _argv0(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def cluster():
    # short: Ray's socket paths under the temp dir must stay within the Unix limit
    root = Path(tempfile.mkdtemp(prefix="fkray", dir="/tmp"))
    nodes = Cluster(root)
    try:
        nodes.start("head", HEAD_IP, head=True)
        yield nodes
    finally:
        left = nodes.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes still alive after stopping the cluster: {left}"


def _run(args: list[str], log: Path) -> tuple[int, str]:
    proc = start_fedkd_sim(args, log, env=_env())
    try:
        proc.wait(timeout=GUARD)
    finally:
        kill_group(proc)
        stop_tree([proc], grace=30)
    return proc.returncode, log.read_text(errors="replace")


def _runs_a_client(node: subprocess.Popen) -> bool:
    """A Ray worker under ``node`` is running a client's message: Ray titles an actor's
    process ``ray::<Class>.<method>`` while the method runs."""
    return any(_argv0(p).startswith("ray::ClientWorker.run") for p in process_tree([node.pid]))


def _run_killing(nodes: Cluster, node, args: list[str], log: Path) -> tuple[int, str]:
    """Start a run; once its first checkpoint is written and ``node`` runs a client's
    message (its actor may join the pool late on a loaded machine: killing it before would
    test nothing), kill ``node``'s raylet. Rounds 2-4 make every client take a second."""
    proc = start_fedkd_sim(args, log, env=_env())
    try:
        _wait_for(lambda: FIRST_CHECKPOINT in log.read_text(errors="replace"), "round 1", proc, log)
        _wait_for(lambda: _runs_a_client(node), "a client's message on the node", proc, log)
        nodes.kill_raylet(node)
        proc.wait(timeout=GUARD)
    finally:
        kill_group(proc)
        stop_tree([proc], grace=30)
    return proc.returncode, log.read_text(errors="replace")


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def _results(summary: dict) -> dict:
    return {"final": summary["final"], "clients": summary["clients"]}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, sim_session):
    """The reference: the same run on a private local Ray (the tests' shared session)."""
    run_dir = tmp_path_factory.mktemp("local") / "run"
    result = sim_session.run([*RUN, f"hydra.run.dir={run_dir}"])
    assert result.status == 0, f"{run_dir / 'run.log'}: {result.last_line}"
    return _summary(run_dir)


def test_two_nodes_then_a_node_lost_and_replaced(cluster, local_run, tmp_path):
    worker = cluster.start("w1", "127.0.0.3", head=False)
    on_cluster = [*RUN, f"simulation.ray_address={cluster.address}"]

    # both nodes do client work; the results are the local run's
    code, out = _run([*on_cluster, f"hydra.run.dir={tmp_path / 'both'}"], tmp_path / "both.log")
    assert code == 0, out
    both = _summary(tmp_path / "both")
    assert both["status"] == "finished" and both["node_loss"] == []
    nodes = both["placement"]["nodes"]
    assert {row["ip"] for row in nodes.values() if row["messages"]} == {HEAD_IP, "127.0.0.3"}
    assert sorted(int(c) for c in both["placement"]["clients"]) == [0, 1, 2, 3]
    assert _results(both) == _results(local_run)

    # the worker's raylet dies mid-run: its clients run again on the head, the run finishes
    code, out = _run_killing(
        cluster, worker, [*on_cluster, f"hydra.run.dir={tmp_path / 'lost'}"], tmp_path / "lost.log"
    )
    assert code == 0, out
    lost = _summary(tmp_path / "lost")
    assert lost["status"] == "finished", out
    assert len(lost["node_loss"]) == 1, lost["node_loss"]
    row = lost["node_loss"][0]
    assert row["node_ip"] == "127.0.0.3" and row["action"] == "replace", row
    assert row["round"] >= 2 and row["clients"] and row["recovered"] == row["clients"], row
    assert row["no_reply"] == [] and lost["rejected_replies"] == {}, lost
    assert _results(lost) == _results(local_run)  # the re-run messages gave the same results
    lines = [line for line in out.splitlines() if "Ray node" in line]
    assert len(lines) == 1 and "127.0.0.3" in lines[0] and "lost" in lines[0], out
    assert "Traceback" not in out and "Raylet is terminated" not in out, out


def test_node_lost_with_fail_stops_resumably(cluster, local_run, tmp_path):
    worker = cluster.start("w2", "127.0.0.4", head=False)
    run_dir = tmp_path / "fail"
    args = [
        *RUN,
        f"simulation.ray_address={cluster.address}",
        "simulation.on_node_loss=fail",
        f"hydra.run.dir={run_dir}",
    ]
    code, out = _run_killing(cluster, worker, args, tmp_path / "fail.log")
    assert code == 1, out
    errors = [line for line in out.splitlines() if line.startswith("fedkd-sim: error:")]
    assert len(errors) == 1, out
    assert "127.0.0.4" in errors[0] and "on_node_loss=fail" in errors[0], errors
    assert "rejected reply" not in out, out  # the lost node's line says it
    assert f"resume={run_dir}" in errors[0], errors
    assert "Traceback" not in out and "Raylet is terminated" not in out, out
    stopped = _summary(run_dir)
    assert stopped["status"] == "node_lost", stopped
    assert [r["action"] for r in stopped["node_loss"]] == ["fail"], stopped["node_loss"]
    assert (run_dir / "checkpoints" / "server.ckpt").is_file()

    # the checkpoint it left is a good one: the run goes on from it, on the head alone
    code, out = _run([f"resume={run_dir}"], tmp_path / "resume.log")
    assert code == 0, out
    resumed = _summary(run_dir)
    assert resumed["status"] == "finished", out
    assert _results(resumed) == _results(local_run)
