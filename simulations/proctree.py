"""Find and stop every process a launcher started, by process id (Linux ``/proc``).

Flower's processes outlive their parents in two ways: the SuperLink starts
``flower-superexec`` in a new session (so killing a process group misses it),
and a process whose parent died is re-parented to init. Both keep a trace we
can follow: the child's parent id while the parent lives, and Flower's
``--parent-pid <pid>`` argument afterwards. Launchers may also tag what they
start with an environment variable (``MARKER``), which every descendant
inherits; that finds the rest after a crash. Nothing here kills by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

MARKER = "FEDKD_LAUNCH_ID"  # env var a launcher sets on every process it starts


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, or None if it is gone."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot): with the pid, a process's identity."""
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is neither a zombie nor dead."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _parent_pid_arg(pid: int) -> int | None:
    """The value of a ``--parent-pid`` argument (Flower's detached processes)."""
    try:
        args = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"--parent-pid" in args:
        i = args.index(b"--parent-pid")
        if i + 1 < len(args) and args[i + 1].isdigit():
            return int(args[i + 1])
    return None


def marked(launch_id: str) -> list[int]:
    """Live processes whose environment has ``MARKER=launch_id``."""
    needle = f"{MARKER}={launch_id}".encode()
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in environ and alive(pid):
            found.append(pid)
    return found


def process_tree(roots: Iterable[int]) -> list[int]:
    """``roots`` and every live process they started, by parent id or ``--parent-pid``.

    ``/proc`` is read once (each process's parents), then walked from ``roots``: a walk
    that re-read it for every process of the tree took seconds on a busy machine."""
    found = list(dict.fromkeys(roots))
    children: dict[int, list[int]] = {}
    for pid in _pids():
        stat = _stat(pid)
        if stat is None or stat[0] == "Z":
            continue
        for parent in {stat[1], _parent_pid_arg(pid)} - {None}:
            children.setdefault(parent, []).append(pid)
    seen = set(found)
    frontier = list(found)
    while frontier:
        for pid in children.get(frontier.pop(), []):
            if pid not in seen:
                seen.add(pid)
                found.append(pid)
                frontier.append(pid)
    return found


def stop_tree(
    procs: Iterable[subprocess.Popen | int],
    launch_id: str | None = None,
    grace: float = 20.0,
    term_first: float = 0.0,
) -> list[int]:
    """Kill ``procs`` and all they started (and, with ``launch_id``, all it marks) until none is left.

    ``term_first > 0`` sends SIGTERM and waits up to that many seconds before
    SIGKILL, so Flower's processes can deregister. Children spawned while we
    kill (or re-parented once their parent died) are caught by scanning again.
    Returns the pids still alive after ``grace`` seconds (empty on success).
    """
    popens = [p for p in procs if isinstance(p, subprocess.Popen)]
    roots = [p.pid if isinstance(p, subprocess.Popen) else p for p in procs]

    def scan() -> set[int]:
        pids = set(process_tree(roots))
        if launch_id is not None:
            pids.update(process_tree(marked(launch_id)))
        # a reaped child's pid may already belong to someone else: never kill it
        reaped = {p.pid for p in popens if p.returncode is not None}
        return {p for p in pids if p != os.getpid() and p not in reaped}

    # every process seen, with its start time: one that leaves the tree (its parent
    # died after SIGTERM) is still killed, and a reused pid is never mistaken for it
    seen: dict[int, int] = {}

    def remember(pids: Iterable[int]) -> set[int]:
        for pid in pids:
            if pid not in seen and (started := _start_time(pid)) is not None:
                seen[pid] = started
        return {pid for pid, started in seen.items() if _start_time(pid) == started}

    if term_first > 0:
        for pid in remember(scan()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + term_first
        while time.monotonic() < deadline and any(alive(p) for p in remember(scan())):
            _reap(popens)
            time.sleep(0.2)
    deadline = time.monotonic() + grace
    while True:
        for pid in remember(scan()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap(popens, timeout=1.0)
        left = [pid for pid in remember(scan()) if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _reap(popens: list[subprocess.Popen], timeout: float = 0.0) -> None:
    """Collect our own children's exit status so they do not linger as zombies."""
    for proc in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
