"""``flwr run .`` runs this project as a Flower App (local simulation SuperLink).

The test starts the SuperLink itself on free loopback ports (so ``flwr`` finds
it instead of spawning a detached one) and kills its whole process group by id.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, stop_tree

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success
    except httpx.HTTPError:
        return False


def test_flwr_run_dot_completes(tmp_path):
    flwr = BIN / "flwr"
    if not flwr.exists():
        pytest.skip("flwr CLI not installed beside this interpreter")
    port = free_port()  # Flower 1.41 serves every SuperLink API over one HTTP port
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    project = tmp_path / "app"
    shutil.copytree(
        ROOT,
        project,
        ignore=shutil.ignore_patterns(".venv", ".git", "outputs", "multirun", "__pycache__"),
    )
    superlink = subprocess.Popen(
        [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-runtime-dependency-installation",
        ],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300  # hang guard: start-up on a loaded machine
        while not healthy(port):
            assert superlink.poll() is None, "flower-superlink exited during start-up"
            assert time.monotonic() < deadline, "flower-superlink did not become healthy"
            time.sleep(0.2)

        def wrapper(config: str) -> subprocess.CompletedProcess:
            """fedkd-flwr-run from the copied project (its modules, its configs)."""
            return subprocess.run(
                [sys.executable, "-m", "simulations.flwr_run", ".", "-c", config],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )

        run_dir = tmp_path / "run"
        result = wrapper(f"overrides='num_rounds=2 logging.progress=false' run_dir='{run_dir}'")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr
        assert "Successfully started run" in result.stdout, result.stdout + result.stderr
        summary = json.loads((run_dir / "summary.json").read_text())  # the run has ended
        assert summary["num_rounds"] == 2
        assert summary["num_clients"] == 2  # Flower's default local federation: 2 SuperNodes
        assert sorted(summary["clients"]) == ["0", "1"]
        written = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert written["num_rounds"] == 2 and written["num_clients"] == 2
        assert "round 2/2" in (run_dir / "run.log").read_text()

        # a bad override: fedkd-flwr-run refuses it in one line before submitting anything
        line = "strategy=fdd: no such strategy; did you mean fd?"
        early = wrapper(f"overrides='strategy=fdd' run_dir='{tmp_path / 'early'}'")
        assert early.returncode == 1
        assert early.stderr.startswith(f"fedkd-flwr-run: error: {line}"), early.stderr
        assert len(early.stderr.splitlines()) == 1 and early.stdout == ""
        assert not (tmp_path / "early").exists()

        # the same override submitted by plain flwr run: the ServerApp fails in one fedkd
        # line in the stream and in run.log, with no SuperNode asked
        bad_dir = tmp_path / "bad"
        bad = subprocess.run(
            [
                str(flwr),
                "run",
                ".",
                "--stream",
                "-c",
                f"overrides='strategy=fdd' run_dir='{bad_dir}'",
            ],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert f"fedkd ERROR: {line}" in bad.stdout + bad.stderr, bad.stdout[-3000:]
        assert line in (bad_dir / "run.log").read_text()
        assert not (bad_dir / "config.yaml").exists()

        # a run that fails on the ServerApp after the checks (the data cannot be split as
        # asked): fedkd-flwr-run reads the failed status and exits 1 with the error
        data_dir = tmp_path / "data"
        failed = wrapper(f"overrides='split.global_test_per_class=1000' run_dir='{data_dir}'")
        assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr
        why = "split.global_test_per_class asks for 1000"
        assert "fedkd ERROR: " in failed.stdout and why in failed.stdout
        last = failed.stderr.strip().splitlines()[-1]
        assert last.startswith("fedkd-flwr-run: error: run ") and "finished:failed" in last
        assert why in last
        assert why in (data_dir / "run.log").read_text()
    finally:
        survivors = stop_tree([superlink], grace=120)  # returns as soon as none is left
    assert not survivors, f"processes left running: {survivors}"
