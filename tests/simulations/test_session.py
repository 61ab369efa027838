"""One Ray session for many runs (simulations/vce_patches.py, simulations/runner.py)."""

from __future__ import annotations

import json
import os

import pytest
from helpers import run_fedkd_sim

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


def _placed(summary: dict) -> tuple:
    """The Ray nodes, the clients each ran and the messages they ran (node ids differ
    between Ray sessions)."""
    nodes = summary["placement"]["nodes"].values()
    return len(nodes), [(row["clients"], row["messages"]) for row in nodes]


def _accuracies(summary: dict) -> list:
    keys = ("local_test_acc", "global_test_acc", "num_clients")
    return [[r.get(k) for k in keys] for r in summary["rounds"]] + [summary["final"]]


def _chain(method) -> list[str]:
    names = []
    while method is not None:
        names.append(method.__name__)
        method = getattr(method, "__wrapped__", None)
    return names


# the node-loss patches wrap the session's whichever is installed first
CHAIN = """
import json
from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
from simulations import nodeloss, vce_patches
first, second = {order}
assert first() and second()
print(json.dumps([_chain(RayBackend.build), _chain(RayBackend.terminate)]))
"""


@pytest.mark.parametrize("order", ["nodeloss", "session"])
def test_the_session_patch_fits_this_flower_under_the_node_loss_patch(order):
    import inspect
    import subprocess
    import sys

    from helpers import ROOT

    calls = '(lambda: nodeloss.install("replace")), vce_patches.install_session'
    if order == "session":
        calls = 'vce_patches.install_session, (lambda: nodeloss.install("replace"))'
    code = inspect.getsource(_chain) + CHAIN.format(order=calls)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    build, terminate = json.loads(result.stdout.strip().splitlines()[-1])
    assert build == ["patched_build", "build_with_session_pool", "build"]
    assert terminate == ["patched_terminate", "terminate_or_keep", "terminate"]


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
def test_runs_sharing_one_session_compute_what_separate_runs_compute(tmp_path, sim_session):
    """Two different runs (fd, then dsfl) in the tests' shared session (``sim_session``, a
    ``Runner`` that other test files' runs may have used before) end with the accuracies and
    placement of the same runs in their own ``fedkd-sim`` processes; the second one ran in
    the first one's Ray session and warm workers. ``metrics.jsonl`` is identical to the
    last digit: a fresh process and a reused session compute the same (the one same-seed
    check of the suite)."""
    separate = {}
    for name, args in PAIR.items():
        result = run_fedkd_sim([*args, f"hydra.run.dir={tmp_path / 'own' / name}"], timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        separate[name] = json.loads((tmp_path / "own" / name / "summary.json").read_text())
    for name, args in PAIR.items():
        result = sim_session.run([*args, f"hydra.run.dir={tmp_path / 'shared' / name}"])
        assert result.status == 0, result
    shared = {
        name: json.loads((tmp_path / "shared" / name / "summary.json").read_text()) for name in PAIR
    }
    for name in PAIR:
        assert shared[name]["status"] == "finished"
        assert _accuracies(shared[name]) == _accuracies(separate[name]), name
        metrics = [tmp_path / where / name / "metrics.jsonl" for where in ("own", "shared")]
        assert metrics[0].read_text() == metrics[1].read_text(), name
        # where the clients ran is each run's own record: nothing carried over from the
        # first run of the session (its messages counted again, a lost node's row)
        assert shared[name]["node_loss"] == [] and separate[name]["node_loss"] == []
        assert _placed(shared[name]) == _placed(separate[name]), name
    # one session: both runs' actors said they ran on its one node
    assert shared["fd"]["placement"]["nodes"].keys() == shared["dsfl"]["placement"]["nodes"].keys()
    # the second run really ran in the first one's session and workers
    log = (tmp_path / "shared" / "dsfl" / "run.log").read_text()
    assert "Ray reused, actor pool reused warm" in log, log[-3000:]


# a private two-CPU Ray instance, as fedkd-sim starts one: two actors of one CPU each
BACKEND = {
    "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
    "init_args": {
        "address": "local",
        "num_cpus": 2,
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": 40,
    },
}


def _answered(actors) -> None:
    """Wait until every actor being placed has said where it runs (a pool with an actor that
    has not is not kept when its run ends)."""
    import ray

    ray.get([ref for _, ref, _ in actors.pending], timeout=600)


@pytest.mark.slow
def test_a_kept_pool_is_placed_again_and_its_replacements_are_warm_client_workers():
    """Two runs of one shared session, driven as Flower's engine drives the backend: the
    second run's actors say again where they run, and a replacement for a lost actor is a
    ClientWorker that first warmed up for the second run's data."""
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    from fedkd.client.runtime import data_key
    from fedkd.config import compose
    from simulations import nodeloss
    from simulations.worker import fedkd_client_app

    runs = [compose(["num_clients=4", f"seed={seed}"]) for seed in (1, 2)]
    assert data_key(runs[0]) != data_key(runs[1])

    def what_it_is(actor, key):  # inside the actor: its class, and whether key's data is cached
        from fedkd.client.runtime import federated_data

        before = federated_data.cache_info().hits
        federated_data(key)
        return type(actor).__name__, federated_data.cache_info().hits - before

    vce_patches.share_session(True)
    try:
        assert nodeloss.install("replace")
        assert vce_patches.start_session(BACKEND, {}, json.dumps(runs[0]))
        vce_patches.wait_session()
        assert vce_patches._SESSION.error is None and vce_patches._SESSION.pool is not None
        first = RayBackend(BACKEND)
        first.build(fedkd_client_app)
        pool = first.pool
        actor = first.fedkd_actors.take(None)
        node = ray.get_runtime_context().get_node_id()
        assert first.fedkd_actors.where[actor][0] == node
        first.fedkd_actors.give_back(actor)
        nodeloss.WATCH.ran(0, first.fedkd_actors.where[actor])
        _answered(first.fedkd_actors)
        first.terminate()  # shared: Ray and the idle pool stay
        assert vce_patches._SESSION.pool is pool and ray.is_initialized()

        # the second run: what the first one saw is gone, its actors are placed again
        assert nodeloss.install("replace")
        assert nodeloss.WATCH.placement() == {"nodes": {}, "clients": {}}
        assert vce_patches.start_session(BACKEND, {}, json.dumps(runs[1]))
        vce_patches.wait_session()
        assert vce_patches.session_timings()["reused_pool"] == 1.0
        second = RayBackend(BACKEND)
        second.build(fedkd_client_app)
        actors = second.fedkd_actors
        assert second.pool is pool and actors is not first.fedkd_actors and not actors.where
        actor = actors.take(None)
        assert actors.where[actor][0] == node

        # that actor is lost: its replacement comes from the pool's factory
        capacity = pool.num_actors
        actors.drop(actor)
        actors.replace()
        replacement = actors.pending[-1][0]
        # Ray runs an actor's tasks in order: the warm-up, where it runs, then this
        kind, hits = ray.get(
            replacement.__ray_call__.remote(what_it_is, data_key(runs[1])), timeout=600
        )
        assert kind == "ClientWorker"
        assert hits == 1  # the second run's data was built by the warm-up
        _answered(actors)
        second.terminate()  # the replacement has answered: back among the idle actors
        assert vce_patches._SESSION.pool is pool
        assert replacement in pool.pool and len(pool.pool) == pool.num_actors == capacity
    finally:
        vce_patches.share_session(False)
        vce_patches.end_session()
