"""Many ``fedkd-sim`` runs in one child process that keeps one Ray session.

``fedkd-compare`` used to start ``python -m simulations.run`` per run: every run paid
the imports, Ray's start and its workers' start-up again. A :class:`Runner` starts one
child process (``multiprocessing``, spawn) that runs the jobs it is sent one after the
other through ``simulations.run.launch`` with ``vce_patches.share_session``: Ray and its
warm workers stay up between runs. Each run is still a whole ``fedkd-sim`` run (Hydra,
its own run directory, run.log, summary.json), so its numbers are those of a separate
run.

A failing run does not stop the others: its exit status and the last line it printed
(stderr, else stdout) come back as the result, and the session is restarted for the
next run. If the child process itself dies, the run it was on fails with one line and
the next run starts a new child.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POLL = 0.5  # seconds between checks that the child process is still alive


@dataclass
class Result:
    """One run's exit status (0: finished) and the last line it printed."""

    status: int
    last_line: str


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


@contextlib.contextmanager
def _redirected(out: Path, err: Path):
    """File descriptors 1 and 2 (what Ray, rich and print write to) into two files."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with out.open("wb") as fo, err.open("wb") as fe:
        os.dup2(fo.fileno(), 1)
        os.dup2(fe.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_job(args: list[str]) -> Result:
    """One ``fedkd-sim ARGS`` in this process (its output captured); Ray stays up after a
    finished run and is stopped after a failed one."""
    from simulations import run, vce_patches

    vce_patches.share_session(True)
    environ = dict(os.environ)  # what one run sets (e.g. HYDRA_FULL_ERROR) is not the next's
    with tempfile.TemporaryDirectory(prefix="fedkd-job-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        status = 0
        with _redirected(out, err):
            sys.argv = ["fedkd-sim", *args]
            try:
                run.launch()
            except SystemExit as exit_:
                code = exit_.code
                status = code if isinstance(code, int) else (0 if code is None else 1)
                if isinstance(code, str):
                    print(code, file=sys.stderr)
            except BaseException:  # the run's traceback, as a subprocess would print it
                traceback.print_exc()
                status = 1
        last = _last_line(err) or _last_line(out)
    os.environ.clear()
    os.environ.update(environ)
    if status != 0:
        vce_patches.end_session()  # the next run starts from a fresh Ray
    return Result(status, last)


def _serve(jobs: Any, results: Any) -> None:
    """The child process: run jobs until ``None`` arrives, then stop Ray."""
    from simulations import vce_patches

    while (args := jobs.get()) is not None:
        results.put(run_job(args))
    vce_patches.end_session()


class Runner:
    """Runs ``fedkd-sim`` argument lists in one long-lived child process, one at a time."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._jobs: Any = None
        self._results: Any = None

    def _start(self) -> None:
        self._jobs, self._results = self._ctx.Queue(), self._ctx.Queue()
        self._proc = self._ctx.Process(
            target=_serve, args=(self._jobs, self._results), name="fedkd-runner"
        )
        self._proc.start()

    def run(self, args: list[str]) -> Result:
        """Run ``fedkd-sim ARGS``; a child that dies fails this run only."""
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._jobs.put(list(args))
        while True:
            try:
                return self._results.get(timeout=POLL)
            except queue.Empty:
                if not self._proc.is_alive():
                    code = self._proc.exitcode
                    self._proc = None
                    return Result(1, f"the run's process ended with status {code}")

    def close(self) -> None:
        """Let the child stop Ray and end (killed if it does not within a minute)."""
        if self._proc is None:
            return
        if self._proc.is_alive():
            self._jobs.put(None)
            self._proc.join(60)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._proc = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
