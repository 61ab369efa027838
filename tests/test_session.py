"""One Ray session for many runs (simulations/vce_patches.py, simulations/runner.py)."""

from __future__ import annotations

import json

import pytest
from procs import run_fedkd_sim

from simulations import vce_patches
from simulations.runner import Runner

QUIET = [
    "num_clients=4",
    "logging.progress=false",
    "logging.table=false",
    "logging.tensorboard=false",
    "checkpoint.every=0",
]
# two different runs: the second one reuses the first one's Ray and warm workers
PAIR = {
    "fd": [*QUIET, "strategy=fd", "num_rounds=3", "seed=1"],
    "dsfl": [*QUIET, "strategy=dsfl", "num_rounds=3", "seed=2"],
}


def _accuracies(summary: dict) -> list:
    keys = ("local_test_acc", "global_test_acc", "num_clients")
    return [[r.get(k) for k in keys] for r in summary["rounds"]] + [summary["final"]]


def test_the_session_patch_fits_this_flower():
    assert vce_patches.install_session()
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    assert RayBackend.build.__name__ == "build_with_session_pool"
    assert RayBackend.terminate.__name__ == "terminate_or_keep"


class _Calls:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def remote(self, *args):
        self.calls.append(args)


class _Actor:
    def __init__(self) -> None:
        self.__ray_call__ = _Calls()


class _Pool:
    """What ``warm_new_actors`` uses of Flower's BasicActorPool: its factory."""

    def __init__(self) -> None:
        self.made: list[_Actor] = []

        def create() -> _Actor:
            self.made.append(_Actor())
            return self.made[-1]

        self.create_actor_fn = create


def test_every_actor_the_pools_factory_makes_warms_up_for_the_run_it_serves():
    pool = _Pool()
    vce_patches.warm_new_actors(pool, "run-1")
    first = pool.create_actor_fn()  # one of the pool's first actors
    vce_patches.warm_new_actors(pool, "run-2")  # the kept pool serves the next run
    replacement = pool.create_actor_fn()  # what simulations/nodeloss.py asks for a lost actor
    assert pool.made == [first, replacement]
    assert first.__ray_call__.calls == [(vce_patches._warm_worker, "run-1")]
    assert replacement.__ray_call__.calls == [(vce_patches._warm_worker, "run-2")]
    vce_patches.warm_new_actors(pool, None)
    assert pool.create_actor_fn().__ray_call__.calls == []


def test_a_failing_run_reports_one_line_and_the_runner_goes_on(tmp_path):
    """Config errors stop a run before Ray starts: each comes back as its status and its
    one-line error, and the same child process takes the next run."""
    with Runner() as runner:
        bad = runner.run([*QUIET, "num_rounds=-1", f"hydra.run.dir={tmp_path / 'a'}"])
        pid = runner._proc.pid
        unknown = runner.run([*QUIET, "strategy=nonexistent", f"hydra.run.dir={tmp_path / 'b'}"])
        assert runner._proc.pid == pid
    assert bad.status == 1 and "num_rounds" in bad.last_line, bad
    assert bad.last_line.startswith("fedkd-sim: error:")
    assert unknown.status == 1 and "strategy" in unknown.last_line, unknown


@pytest.mark.slow
def test_runs_sharing_one_session_compute_what_separate_runs_compute(tmp_path):
    separate = {}
    for name, args in PAIR.items():
        result = run_fedkd_sim([*args, f"hydra.run.dir={tmp_path / 'own' / name}"], timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        separate[name] = json.loads((tmp_path / "own" / name / "summary.json").read_text())
    with Runner() as runner:
        for name, args in PAIR.items():
            result = runner.run([*args, f"hydra.run.dir={tmp_path / 'shared' / name}"])
            assert result.status == 0, result
    for name in PAIR:
        shared = json.loads((tmp_path / "shared" / name / "summary.json").read_text())
        assert shared["status"] == "finished"
        assert _accuracies(shared) == _accuracies(separate[name]), name
    # the second run really ran in the first one's session and workers
    log = (tmp_path / "shared" / "dsfl" / "run.log").read_text()
    assert "Ray reused, actor pool reused warm" in log, log[-3000:]
