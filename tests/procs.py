"""Subprocesses a test owns and stops by process id.

``run_fedkd_sim`` runs ``python -m simulations.run``; ``stop_tree``,
``process_tree`` and ``alive`` (from ``simulations.proctree``, shared with the
``fedkd-deploy`` launcher) stop a Flower process tree, including the
SuperExec processes Flower detaches into their own session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from simulations.proctree import alive, marked, process_tree, stop_tree

__all__ = ["ROOT", "alive", "marked", "process_tree", "run_fedkd_sim", "stop_tree"]

ROOT = Path(__file__).resolve().parent.parent


def run_fedkd_sim(
    args: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``fedkd-sim ARGS`` from the checkout; on timeout kill its whole process group."""
    cmd = [sys.executable, "-m", "simulations.run", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def start_fedkd_sim(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``fedkd-sim ARGS`` in its own process group (output to ``log_path``)."""
    log = open(log_path, "w")  # noqa: SIM115 (closed by the caller's process ending)
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.run", *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> int:
    """SIGKILL the process group ``start_fedkd_sim`` started; its return code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()
