"""What a ``fedkd-sim`` run pays besides its rounds: the end of the engine's threads and the
launcher's exit (simulations/vce_patches.py, simulations/run.py; docs/performance.md)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid

import pytest
from helpers import ROOT, alive, marked, python_stdout, run_fedkd_sim, stop_tree

from simulations import vce_patches
from simulations.proctree import MARKER


def _get_in_thread(q: vce_patches.PromptQueue, timeout: float) -> tuple[threading.Thread, list]:
    got: list = []

    def get() -> None:
        try:
            got.append(q.get(timeout=timeout))
        except queue.Empty:
            got.append("empty")

    thread = threading.Thread(target=get)
    thread.start()
    return thread, got


def test_a_stopped_queue_ends_a_waiting_get_at_once_and_still_hands_out_its_items():
    q = vce_patches.PromptQueue()
    thread, got = _get_in_thread(q, timeout=600)
    while not q.not_empty._waiters:  # the getter waits on the empty queue
        time.sleep(0.01)
    q.stop()
    thread.join(60)  # a hang guard: the stop ends a wait of 600 s
    assert not thread.is_alive() and got == ["empty"]
    q.put("late")  # what is put after the stop still comes out, then Empty at once
    assert q.get(timeout=600) == "late"
    thread, got = _get_in_thread(q, timeout=600)
    thread.join(60)
    assert got == ["empty"]


def test_a_running_queue_waits_and_delivers_as_a_plain_one():
    q = vce_patches.PromptQueue()
    thread, got = _get_in_thread(q, timeout=600)
    q.put(1)
    thread.join(60)
    assert got == [1]
    try:
        q.get(timeout=0.01)
    except queue.Empty:
        pass
    else:
        raise AssertionError("an empty, running queue handed out an item")
    q.stop()


def test_the_pickup_thread_stops_the_runs_queues_when_the_run_stops():
    from flwr.server.superlink.fleet.vce import vce_api

    assert vce_patches.install_pickup()
    assert vce_api.Queue is vce_patches.PromptQueue  # run_api's queues are prompt ones
    inbox, outbox = vce_api.Queue(), vce_api.Queue()
    stop = threading.Event()
    stop.set()
    vce_patches.add_messages_to_queue(None, inbox, {}, stop)  # a stopped run: no sweep
    assert inbox.stopped and outbox.stopped


def test_the_launcher_exits_with_its_status_and_stops_what_it_started():
    """``exit_now``: every process the launcher started is stopped by process id, then it
    exits with the given status (the interpreter's teardown skipped)."""
    code = (
        "import subprocess, sys\n"
        "from simulations.run import exit_now\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print(child.pid, flush=True)\n"
        "exit_now(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3, proc.stderr
    child = int(proc.stdout.split()[0])
    assert not alive(child)


@pytest.mark.slow
def test_a_finished_run_leaves_no_process_behind(tmp_path):
    """The launcher stops its Ray instance by process id as it exits: once it has exited,
    no process carrying its marker (Ray's daemons, workers and agents) is alive, and the
    run's files are complete."""
    launch = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    try:
        result = run_fedkd_sim(
            ["num_clients=4", "num_rounds=2", "checkpoint.every=1", f"hydra.run.dir={run_dir}"],
            timeout=600,
            env={**os.environ, MARKER: launch},
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert "bytes/round" in result.stdout  # the table was printed before the exit
        # Flower's own notices (its DEBUG steps, the deprecation of run_simulation) stay
        # off the console at the default logging level
        assert "[flwr]" not in result.stdout + result.stderr
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "finished" and len(summary["rounds"]) == 2
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) > 0
        # TensorBoard is on: torch's writer is loaded before the server starts, not while
        # round 1 is written (simulations/run.py)
        log = (run_dir / "run.log").read_text(encoding="utf-8")
        assert log.index("loading torch for TensorBoard's writer") < log.index("the server is up")
        assert not marked(launch)
    finally:
        left = stop_tree([], launch_id=launch, grace=60)
    assert left == []


def test_a_private_ray_instance_gets_the_workers_variables_through_its_environment(monkeypatch):
    """``address: local``: the variables are in the environment while ``ray.init`` starts the
    instance (its raylet and workers inherit them), no job ``runtime_env`` (which keeps the
    workers Ray starts ahead of the job from being used), and the launcher's environment is
    as before afterwards; a cluster still gets them as a ``runtime_env``."""
    import types

    from simulations.cluster import LOCAL, join_cluster

    seen: list[tuple[dict, str | None, str | None]] = []
    fake = types.ModuleType("ray")
    fake.init = lambda **kwargs: seen.append(
        (kwargs, os.environ.get("FEDKD_PROBE"), os.environ.get("PYTHONPATH"))
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("FEDKD_PROBE", raising=False)
    monkeypatch.setenv("PYTHONPATH", "/given")
    join_cluster({"address": LOCAL, "num_cpus": 2}, {"FEDKD_PROBE": "1"})
    kwargs, probe, pythonpath = seen.pop()
    assert kwargs == {"address": LOCAL, "num_cpus": 2}
    assert probe == "1" and pythonpath.split(os.pathsep)[-1] == "/given"
    assert sys.path[1] in pythonpath.split(os.pathsep)
    assert "FEDKD_PROBE" not in os.environ and os.environ["PYTHONPATH"] == "/given"
    join_cluster({"address": "10.0.0.1:6379"}, {"FEDKD_PROBE": "1"})
    kwargs, probe, _ = seen.pop()
    assert kwargs["runtime_env"]["env_vars"]["FEDKD_PROBE"] == "1" and probe is None


_LEAN_INSTANCE = """
import json, os, sys
import ray._private.node as ray_node
from simulations.cluster import join_cluster
from simulations.proctree import process_tree

original = ray_node.Node.__init__
join_cluster({"address": "local", "num_cpus": 1, "include_dashboard": False,
              "log_to_driver": sys.argv[1] == "1"}, {})
import ray

@ray.remote
def answer():
    return 42

print(json.dumps({
    "answer": ray.get(answer.remote()),
    "restored": ray_node.Node.__init__ is original,
    "commands": [open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode()
                 for pid in process_tree([os.getpid()]) if pid != os.getpid()],
}))
sys.stdout.flush()
os._exit(0)
"""


@pytest.mark.slow
@pytest.mark.parametrize("log_to_driver", [False, True])
def test_a_private_instance_starts_without_the_daemons_a_simulation_never_uses(log_to_driver):
    """``cluster.lean_private_instance``: a private instance runs tasks without the
    autoscaler monitor and the dashboard's API server, and without the log monitor unless
    the workers' output goes to the driver (``log_to_driver``); Ray's own classes are as
    they were once it is up."""
    launch = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(ROOT), MARKER: launch}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _LEAN_INSTANCE, "1" if log_to_driver else "0"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        seen = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        left = stop_tree([], launch_id=launch, grace=60)
    assert left == []
    assert seen["answer"] == 42 and seen["restored"]
    commands = " | ".join(seen["commands"])
    assert "raylet" in commands and "gcs_server" in commands
    assert "autoscaler/_private/monitor.py" not in commands
    assert "dashboard/dashboard.py" not in commands
    assert ("log_monitor.py" in commands) == log_to_driver


def test_the_start_up_thread_starts_ray_before_importing_flowers_simulation_package():
    """``flwr.simulation``'s package import (its SuperLink) comes after ``ray.init``: run in a
    fresh interpreter, ``join_cluster`` is replaced by one that notes what is imported."""
    code = """
import sys
from simulations import cluster, vce_patches

def join(init_args, env_vars):
    print("flwr.simulation" in sys.modules)
    raise SystemExit(0)

cluster.join_cluster = join
vce_patches._start(
    {"init_args": {"address": "local"}, "client_resources": {"num_cpus": 1.0}}, {}, None
)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert python_stdout(code, env).strip() == "False"


START_SESSION = """
import threading
from simulations import cluster, vce_patches

joined = threading.Event()

def join(init_args, env_vars):  # Ray's start: noted, then no Ray in this test
    joined.set()
    raise RuntimeError("no Ray here")

def install():  # the engine's import and patches: done only once Ray's start has begun
    return joined.wait(120) and FITS

cluster.join_cluster = join
vce_patches.install_session = install
import sys
before = sys.getswitchinterval()
answer = vce_patches.start_session(
    {"init_args": {"address": "local"}, "client_resources": {"num_cpus": 1.0}}, {}, None
)
during = sys.getswitchinterval()
vce_patches.wait_session()
print(answer, joined.is_set(), repr(vce_patches._SESSION.error))
print(during == vce_patches.START_SWITCH < before, sys.getswitchinterval() == before)
"""


@pytest.mark.parametrize("fits", [True, False])
def test_ray_starts_while_the_launcher_imports_flowers_engine(fits):
    """``start_session`` starts Ray's daemons in its thread before this thread imports and
    patches Flower's engine (``install_session``): here that import waits until Ray's start
    has been called, so it would wait 120 s and give False if it came first. A Flower that
    does not fit gets False: the caller then runs Flower's own start-up. The interpreter
    switches threads every ``START_SWITCH`` seconds while the session starts, then as before."""
    code = START_SESSION.replace("FITS", str(fits))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lowered = str(fits)  # a Flower that does not fit: the session ended before it returned
    assert python_stdout(code, env).split() == [
        str(fits), "True", "RuntimeError('no", "Ray", "here')", lowered, "True"
    ]  # fmt: skip


def test_the_launcher_names_the_simulation_mark_without_importing_flower():
    """What ``simulations.run`` imports before it starts Ray (the launcher, the simulation
    mark) loads neither Flower nor torch: Ray's start waits for every import before it."""
    code = (
        "import sys\n"
        "import simulations.run\n"
        "from clients.simulation_mark import SIMULATION_ENV\n"
        "print(sorted(m for m in ('flwr', 'torch') if m in sys.modules), SIMULATION_ENV)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    assert python_stdout(code, env).split() == ["[]", "FEDKD_SIMULATION"]


def _run_reporting_torch(args: list[str], launch: str) -> subprocess.CompletedProcess:
    """``fedkd-sim ARGS``, printing as it exits whether the launcher process loaded torch."""
    code = (
        "import sys\n"
        "import simulations.run as run\n"
        "exit_now = run.exit_now\n"
        "def report(status):\n"
        "    print('TORCH', 'torch' in sys.modules, flush=True)\n"
        "    exit_now(status)\n"
        "run.exit_now = report\n"
        "sys.argv = ['fedkd-sim', *sys.argv[1:]]\n"
        "run.main()\n"
    )
    env = {**os.environ, MARKER: launch, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )


@pytest.mark.slow
def test_the_launcher_of_a_strategy_that_computes_nothing_on_the_server_never_loads_torch(
    tmp_path,
):
    """``fd``'s server only averages logits: its launcher imports the ClientApp object
    without the round code, looks up only its own strategy, saves its checkpoint without a
    torch RNG state, and has a warm worker build the client models (simulations/run.py,
    ``check_models``). TensorBoard's writer (torch's ``SummaryWriter``) is left off here:
    with it on, the launcher loads torch for it before its server starts
    (``test_a_finished_run_leaves_no_process_behind``)."""
    launch = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    try:
        done = _run_reporting_torch(
            ["strategy=fd", "num_clients=4", "num_rounds=2", "checkpoint.every=1",
             "logging.level=quiet", "logging.tensorboard=false", f"hydra.run.dir={run_dir}"],
            launch,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert "TORCH False" in done.stdout
        log = (run_dir / "run.log").read_text(encoding="utf-8")
        assert "building each client architecture once, in a worker" in log
        from fedkd import checkpoint as ckpt_io
        from server.checkpoint import server_file

        rng = ckpt_io.load(server_file(run_dir))["rng"]
        assert sorted(rng) == ["numpy", "python"]
    finally:
        left = stop_tree([], launch_id=launch, grace=60)
    assert left == []


@pytest.mark.slow
def test_a_client_model_that_cannot_be_built_stops_the_run_with_one_line(tmp_path):
    """The worker's check fails the run before its server starts, as the launcher's own
    check did: one line naming the model and its parameter, status 1, nothing left behind."""
    launch = uuid.uuid4().hex
    try:
        done = _run_reporting_torch(
            ["num_clients=4", "num_rounds=2", "model=cnn",
             "model.family=[{name:cnn,channels:[8,16],hidden:0}]", "logging.tensorboard=false",
             f"hydra.run.dir={tmp_path / 'run'}"],
            launch,
        )  # fmt: skip
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert lines == ["fedkd-sim: error: model 'cnn' has no param 'hidden'; known: channels"]
        assert "TORCH False" in done.stdout
    finally:
        left = stop_tree([], launch_id=launch, grace=60)
    assert left == []


def test_a_call_in_a_worker_without_a_session_pool_is_left_to_the_caller(monkeypatch):
    """No local pool (a cluster, or a Flower the session does not fit): the launcher checks
    the models itself."""
    monkeypatch.setattr(vce_patches._SESSION, "pool", None)
    assert vce_patches.call_in_worker(len, "abc") == (False, None)
