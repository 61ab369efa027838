"""Flower's deployment runtime with real processes on loopback (``simulations/deploy.py``).

Each test (or the module fixture ``own_files``, shared by the tests that check
properties of the same deployment) starts its own SuperLink and SuperNodes on free
ports and stops every process it started (by process id, incl. Flower's detached
SuperExec processes); it fails if any is left. ``server.round_timeout`` is short
so a lost client cannot hang a round for long.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import ROOT, marked

from simulations.deploy import Deployment
from simulations.proctree import MARKER, stop_tree

pytestmark = pytest.mark.slow

RUN = ["num_rounds=2", "logging.progress=false", "logging.table=false"]


def client_files(folder: Path) -> list[Path]:
    """Three clients' own digits files, one per format: .npz, .csv and .parquet."""
    import pyarrow as pa
    from pyarrow import csv, parquet
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x, y = (bunch.data / 16).astype(np.float32), bunch.target
    parts = np.array_split(np.random.default_rng(0).permutation(len(y))[:480], 3)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "c0.npz", folder / "c1.csv", folder / "c2.parquet"]
    np.savez(paths[0], x=x[parts[0]].reshape(-1, 1, 8, 8), y=y[parts[0]])
    for path, part in zip(paths[1:], parts[1:], strict=True):
        table = pa.table({**{f"px{i}": x[part, i] for i in range(64)}, "label": y[part]})
        (csv.write_csv if path.suffix == ".csv" else parquet.write_table)(table, path)
    return paths


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(path: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def stopped(dep: Deployment) -> None:
    """Stop the deployment and assert nothing it started survives."""
    left = dep.stop(grace=120)  # returns as soon as none is left; long only under load
    assert not left, f"processes left running: {left}"
    assert not marked(dep.launch_id), "a process carrying this deployment's marker survived"


@pytest.fixture(scope="module")
def own_files(tmp_path_factory) -> SimpleNamespace:
    """fedkd-deploy's default layout (TLS, SuperNode authentication, one ClientApp process
    per SuperNode), three nodes reading their own files, and a fourth node whose key was
    never registered; two runs on the same SuperNodes: this checkout (2 rounds), then
    another version of the app (1 round). One deployment for the three tests below, which
    check different properties of it; the fixture stops every process it started, by
    process id, before any test reads the outcome."""
    import shutil

    tmp = tmp_path_factory.mktemp("own-files")
    files = client_files(tmp / "data")
    app = tmp / "app"  # this checkout with one changed file: another FAB hash
    shutil.copytree(ROOT, app, ignore=shutil.ignore_patterns(
        ".*", "outputs", "multirun", "tests", "__pycache__", "*.egg-info"))  # fmt: skip
    with (app / "README.md").open("a", encoding="utf-8") as file:
        file.write("\nAnother version.\n")
    out = SimpleNamespace(files=files, run_dir=tmp / "run", new_version_dir=tmp / "run2")
    dep = out.dep = Deployment(tmp / "work", tls=True, auth=True, echo=False)
    out.stranger_code = out.code = out.new_version_code = None
    try:
        dep.start_superlink()
        keys = dep.make_keys(4)
        dep.register([key.with_suffix(".pub") for key in keys[:3]])  # node_3's key is unknown
        stranger = dep.start_supernode(3, {"partition-id": 0, "num-partitions": 3}, keys[3])
        for i, path in enumerate(files):
            config = {"partition-id": i, "num-partitions": 3, "data-path": str(path)}
            dep.start_supernode(i, config, keys[i])
        with contextlib.suppress(subprocess.TimeoutExpired):
            out.stranger_code = stranger.wait(timeout=90)
        dep.wait_for_nodes(3, names=["node 0", "node 1", "node 2"])
        started = time.monotonic()
        out.code = dep.submit([*RUN, "server.round_timeout=120"], out.run_dir, timeout=400)
        print(f"2-round deployment run (TLS + auth, 3 nodes): {time.monotonic() - started:.1f}s")
        if out.code == 0:  # the same SuperNodes, another version of the app
            overrides = " ".join(["num_rounds=1", *RUN[1:], "server.round_timeout=120"])
            config = f"overrides='{overrides}' run_dir='{out.new_version_dir}'"
            cmd = [sys.executable, "-m", "simulations.flwr_run", str(app), "fedkd", "-c", config]
            out.new_version_code = dep.spawn("flwr run 2", cmd, "cli", pythonpath=app).wait(
                timeout=300
            )
    finally:
        stopped(dep)
    return out


def test_tls_auth_three_nodes_with_own_data(own_files):
    """TLS + SuperNode auth, each node reads its own file; an unregistered key is refused."""
    dep, run_dir = own_files.dep, own_files.run_dir
    assert own_files.stranger_code not in (0, None), "a SuperNode with an unknown key was accepted"
    assert any("Failed to activate SuperNode" in line for line in dep.logs["node 3"])
    assert own_files.code == 0, "\n".join(dep.logs["flwr run"][-30:])
    assert any("No SuperNode found with the given public key" in ln for ln in dep.logs["superlink"])

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["num_clients"] == 3
    assert summary["dropped_clients"] == {}
    assert {c: e["num_train"] for c, e in summary["clients"].items()} == {
        "0": 120,
        "1": 120,
        "2": 120,
    }  # 160 samples each, 75/25 local split of the client's own file
    rows = read_metrics(run_dir)
    assert sorted({(r["client"], r["round"]) for r in rows}) == [
        (c, r) for c in range(3) for r in (1, 2)
    ]
    for cid in range(3):  # per-client scalars reach TensorBoard as in simulation
        scalars = tensorboard_scalars(run_dir / "tensorboard" / f"client_{cid}")
        for tag in (
            "accuracy/local_test",
            "accuracy/global_test",
            "loss/train",
            "traffic/bytes_up",
        ):
            assert scalars[tag] == [1, 2], (cid, tag, sorted(scalars))


def deploy_run(tmp_path: Path, files: list[Path], isolation: str) -> tuple[Path, Deployment]:
    """A 2-round run of three nodes with their own files, insecure, in one isolation mode."""
    run_dir = tmp_path / isolation / "run"
    dep = Deployment(tmp_path / isolation, tls=False, auth=False, echo=False, isolation=isolation)
    try:
        dep.start_superlink()
        for i, path in enumerate(files):
            dep.start_supernode(i, {"partition-id": i, "num-partitions": 3, "data-path": str(path)})
        dep.wait_for_nodes(3)
        code = dep.submit([*RUN, "server.round_timeout=120"], run_dir, timeout=400)
        assert code == 0, "\n".join(dep.logs["flwr run"][-30:])
    finally:
        stopped(dep)
    return run_dir, dep


def test_one_clientapp_process_per_node_serves_every_round(own_files, tmp_path):
    """With process isolation (fedkd-deploy's default) each node's ClientApp process serves
    the start-up query and both rounds' train messages: one process id per node for all,
    the id of the process the Deployment started. The numbers are those of Flower's
    default layout, a flwr-clientapp process per message (a deployment of its own, the
    same files and run config)."""
    dep, run_dir = own_files.dep, own_files.run_dir
    assert own_files.code == 0, "\n".join(dep.logs["flwr run"][-30:])
    for i in range(3):
        served = [
            (int(m[1]), m[2])
            for line in dep.logs[f"clientapp {i}"]
            if (m := re.search(r"ClientApp process (\d+): task \d+ \(run \d+, (\S+) message", line))
        ]
        kinds = [kind for _, kind in served]
        assert kinds[:3] == ["query", "train", "train"], kinds
        assert {pid for pid, _ in served} == {dep.procs[f"clientapp {i}"].pid}, served
    assert not any(name.startswith("clientapp") for name in
                   deploy_run(tmp_path, own_files.files, "subprocess")[1].procs)  # fmt: skip
    per_message = tmp_path / "subprocess" / "run"
    assert read_metrics(run_dir) == read_metrics(per_message)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (run_dir, per_message)]
    assert untimed(summaries[0]) == untimed(summaries[1])


def untimed(tree):
    """A summary without its timings (every key naming a time)."""
    if isinstance(tree, dict):
        return {k: untimed(v) for k, v in tree.items() if "time" not in k}
    return [untimed(v) for v in tree] if isinstance(tree, list) else tree


def test_a_new_app_version_runs_in_a_process_per_message(own_files):
    """A ClientApp process serves the app version (FAB) it imported first; a run of
    another version, submitted to the same SuperNodes, still completes: its tasks go to
    Flower's flwr-clientapp, a process per message, since an imported module stays."""
    dep = own_files.dep
    assert own_files.code == 0, "\n".join(dep.logs["flwr run"][-30:])
    assert own_files.new_version_code == 0, "\n".join(dep.logs["flwr run 2"][-30:])
    for i in range(3):
        log = dep.logs[f"clientapp {i}"]
        assert sum("belongs to another FAB" in line for line in log) >= 2, log[-20:]
    for run_dir in (own_files.run_dir, own_files.new_version_dir):
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_killed_supernode_run_completes_without_it(tmp_path):
    """SIGKILL one SuperNode's process tree mid-run: the others finish; summary says who dropped.

    Round 1 ends when the SuperLink declares node 2 offline (its heartbeat expires, at most
    2 x 30 s after the last one) and answers for it with NODE_UNAVAILABLE; round 2 gets that
    answer at once. ``server.round_timeout`` is far beyond both, a hang guard only, so the
    reason recorded never depends on which of the two ends round 1 first."""
    run_dir = tmp_path / "run"
    dep = Deployment(tmp_path / "work", tls=False, auth=False, echo=False)  # insecure, explicitly
    result: dict[str, int] = {}
    try:
        dep.start_superlink()
        for i in range(3):
            dep.start_supernode(i, {"partition-id": i, "num-partitions": 3})
        dep.wait_for_nodes(3)
        # node 2 sleeps 120 s in round 1, so the kill below always lands before its reply
        # (its start-up message is received before it sleeps): no race with a quick client
        overrides = [*RUN, "server.round_timeout=600", "server.min_train_clients=2",
                     "faults.slow.clients=[2]", "faults.slow.rounds=[1]", "faults.slow.seconds=120"]  # fmt: skip
        runner = threading.Thread(
            target=lambda: result.update(code=dep.submit(overrides, run_dir, timeout=840))
        )
        runner.start()
        deadline = time.monotonic() + 300  # hang guard: start-up on a loaded machine
        while not any("Receiving: train message" in ln for ln in dep.logs["node 2"]):
            assert runner.is_alive() and time.monotonic() < deadline, "round 1 never reached node 2"
            time.sleep(0.2)
        # SIGKILL, then wait until no process of node 2's tree is left (a loaded machine
        # may take a while to tear down a torch process): the grace is a hang guard only
        assert not stop_tree([dep.procs["node 2"]], grace=300), "node 2 survived SIGKILL"
        runner.join(timeout=900)
        assert result.get("code") == 0, "\n".join(dep.logs["flwr run"][-30:])
    finally:
        stopped(dep)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    dropped = summary["dropped_clients"]
    assert sorted(dropped) == ["2"], dropped
    # the SuperLink answered for the dead node in both rounds; nobody waited for the timeout
    assert dropped["2"] == {"client_unavailable": [1, 2]}, dropped
    table = (run_dir / "table.txt").read_text().splitlines()
    (row,) = [line for line in table if line.split("│")[1:2] and line.split("│")[1].strip() == "2"]
    assert "client_unavailable in rounds 1, 2" in row, row
    assert row.rstrip("│ ").endswith("never answered"), row
    rows = read_metrics(run_dir)
    assert sorted({(r["client"], r["round"]) for r in rows}) == [(0, 1), (0, 2), (1, 1), (1, 2)]


def test_bad_file_and_missing_node_are_two_lines_and_a_failed_exit(tmp_path):
    """Three partitions: node 0 is fine, node 1's file has 60 feature columns, node 2 never
    starts. Once both nodes that joined have answered the start-up query the run is known to
    fail: the ServerApp stops at once (server.round_timeout is only a hang guard, far beyond
    the submission's own timeout) with one line per client, naming node 2 as never joined,
    and the submission (fedkd-flwr-run) exits non-zero with the same two lines."""
    import pyarrow as pa
    from pyarrow import csv

    good, *_ = client_files(tmp_path / "data")
    bad = tmp_path / "data" / "bad.csv"
    rng = np.random.default_rng(0)
    csv.write_csv(
        pa.table({**{f"px{i}": rng.random(40) for i in range(60)}, "label": np.arange(40) % 10}),
        bad,
    )
    run_dir = tmp_path / "run"
    dep = Deployment(tmp_path / "work", tls=False, auth=False, echo=False)
    try:
        dep.start_superlink()
        for i, path in enumerate((good, bad)):
            dep.start_supernode(i, {"partition-id": i, "num-partitions": 3, "data-path": str(path)})
        dep.wait_for_nodes(2)
        # both nodes that joined answer the start-up query (the bad one once its ClientApp
        # has loaded the file): the server then stops without waiting out the timeout for
        # node 2, so a wait for it would end in the submission's timeout, not in these lines
        code = dep.submit([*RUN, "server.round_timeout=3600"], run_dir, timeout=600)
    finally:
        stopped(dep)
    log = dep.logs["flwr run"]
    assert code != 0, "\n".join(log[-30:])
    errors = [line.split("fedkd ERROR: ", 1)[1] for line in log if "fedkd ERROR: " in line]
    assert errors == [
        f"client 1 cannot start: local data '{bad}' samples have shape (60,); the run's dataset "
        "has input shape (1, 8, 8) (64 values per sample)",
        "client 2: no SuperNode joined (not started?)",
    ], "\n".join(log[-40:])
    assert [line for line in log if line.startswith("fedkd-flwr-run: error: ")] == [
        f"fedkd-flwr-run: error: run {run_id} finished:failed: {line}"
        for run_id in [_run_id(log)]
        for line in errors
    ]
    assert errors[0] in (run_dir / "run.log").read_text()
    assert not (run_dir / "summary.json").exists()  # no round ran


def _run_id(log: list[str]) -> str:
    (run_id,) = [m[1] for ln in log if (m := re.search(r"Successfully started run (\d+)", ln))]
    return run_id


def test_launcher_stops_everything_on_ctrl_c(tmp_path):
    """``fedkd-deploy`` interrupted once its SuperNodes are up leaves no process behind."""
    launch_id = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "simulations.deploy", "--nodes", "2"]
    cmd += ["--work-dir", str(tmp_path / "work"), "num_rounds=50"]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, MARKER: launch_id},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while sum("SuperNode ID:" in line for line in lines) < 2:
            assert proc.poll() is None, "".join(lines[-20:])
            assert time.monotonic() < deadline, "SuperNodes did not connect"
            time.sleep(0.2)
        assert len(marked(launch_id)) >= 5  # SuperLink, 2 SuperNodes and their SuperExecs
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=180) == 130  # stop grace 20 s + term per tree; slow under load
        left = marked(launch_id)  # what the launcher failed to stop, before we clean up
    finally:
        stop_tree([proc], launch_id)
    reader.join(timeout=5)
    assert not left, f"the launcher left processes running: {left}"
    assert "every process it started was stopped" in "".join(lines)
