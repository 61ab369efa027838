"""Test-session settings shared by every test module."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import pytest

# the partition cache (fedkd/data/partition_cache.py) of this session only: tests never
# read or write the user's ~/.cache/fedkd; subprocesses inherit the variable
if "FEDKD_CACHE" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="fedkd-test-cache-")
    os.environ["FEDKD_CACHE"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


@pytest.fixture(scope="session")
def sim_session():
    """One Ray session for the simulation tests' plain runs (``helpers.SimSession``)."""
    from helpers import SimSession

    session = SimSession()
    yield session
    session.close()


# A test that starts Ray or a Flower process is marked slow (``make test-fast`` runs
# ``-m "not slow"``). Every process this pytest process starts passes the audit hook; a
# test not marked slow that starts one of these programs fails with one line naming it.
_SLOW_PROGRAMS = {
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr",
    "flwr-serverapp",
    "flwr-clientapp",
    "ray",
    "raylet",
    "gcs_server",
}
_started: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if event == "subprocess.Popen":
        executable, argv = args[0], args[1]
        if executable is None:
            executable = argv if isinstance(argv, (str, bytes, os.PathLike)) else argv[0]
        program = os.path.basename(os.fsdecode(executable))
        if program in _SLOW_PROGRAMS:
            _started.append(program)


sys.addaudithook(_audit)


def _check_not_slow(item: pytest.Item) -> None:
    started, _started[:] = list(_started), []
    if started and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} starts {', '.join(dict.fromkeys(started))}: mark it slow")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    _started.clear()
    result = yield
    _check_not_slow(item)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    _check_not_slow(item)
    return result
