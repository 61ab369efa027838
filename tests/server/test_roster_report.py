"""Start-up failures: one line per client that cannot start and per partition nobody answered."""

from __future__ import annotations

import pytest

from server.roster import startup_failures


def test_every_bad_client_gets_a_line_by_partition_id():
    failed = {
        7_000_000_000_000_000_002: "DataError: client 2: local data '/d/c2.csv' has 60 feature "
        "columns but the run's inputs have 64 values",
        7_000_000_000_000_000_001: "DataError: client 1: local data '/d/c1.npz' does not exist",
    }
    answers = {7_000_000_000_000_000_000: (0, 3)}
    assert startup_failures(failed, answers, 3).splitlines() == [
        "client 1 cannot start: local data '/d/c1.npz' does not exist",
        "client 2 cannot start: local data '/d/c2.csv' has 60 feature columns but the run's "
        "inputs have 64 values",
    ]


def test_after_the_wait_the_missing_partitions_are_named_too():
    failed = {11: "DataError: client 1: local data '/d/c1.npz' does not exist"}
    answers = {10: (0, 3)}
    assert startup_failures(failed, answers, 3, waited=600).splitlines() == [
        "client 1 cannot start: local data '/d/c1.npz' does not exist",
        "client 2: no SuperNode answered within 600s (not started?)",
    ]


def test_once_every_joined_node_has_answered_the_partitions_nobody_joined_for_are_named():
    """A failed client makes the run fail: the partitions no SuperNode joined for are named
    as such at once, not after a timeout; a client named by its error is not missing."""
    failed = {11: "DataError: client 1: local data '/d/c1.npz' does not exist"}
    answers = {10: (0, 4)}
    assert startup_failures(failed, answers, 4, unjoined=True).splitlines() == [
        "client 1 cannot start: local data '/d/c1.npz' does not exist",
        "client 2: no SuperNode joined (not started?)",
        "client 3: no SuperNode joined (not started?)",
    ]
    # nobody said how many partitions there are: only the failures can be named
    assert startup_failures(failed, {}, None, unjoined=True) == (
        "client 1 cannot start: local data '/d/c1.npz' does not exist"
    )


def test_errors_without_a_client_id_name_the_node():
    text = startup_failures({42: "ConfigError: node config needs 'partition-id'"}, {}, None)
    assert text == "client on node 42 cannot start: ConfigError: node config needs 'partition-id'"
    assert startup_failures({}, {}, None, waited=5) == (
        "no SuperNode said how many clients to expect within 5s"
    )


@pytest.mark.slow  # a Ray-backed simulation
def test_discover_reports_every_client_that_cannot_start():
    """A real simulation (2 SuperNodes): both clients fail to load their data at the start-up
    query; the server stops with one line per client."""
    import json

    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from fedkd.config import compose
    from fedkd.errors import ConfigError
    from server.roster import discover

    cfg = compose(["num_clients=2", "dataset=hf", "dataset.path=/no/such/folder"])
    errors: list[str] = []
    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context):
        try:
            discover(grid, timeout=300, cfg_json=json.dumps(cfg))  # hang guard only
        except ConfigError as err:
            errors.append(str(err))

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=2,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "include_dashboard": False, "address": "local"},
        },
    )
    reason = "'/no/such/folder' from the hub or disk: no such directory"
    lines = errors[0].splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "client 0 cannot start",
        "client 1 cannot start",
    ]
    assert all(reason in line for line in lines), lines


def test_a_ray_traceback_becomes_the_clients_one_line():
    from server.roster import client_error

    reason = (
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'ray::ClientAppActor.run() "
        'File "clients/app.py", line 213, in introduce raise type(err)(...) from None '
        "fedkd.errors.DataError: client 1: local data '/d/a.npz' does not exist The above "
        "exception was the direct cause of the following exception: ray::ClientAppActor.run() "
        "flwr.clientapp.client_app.ClientAppException: Exception ClientAppException occurred. "
        "Message: client 1: local data '/d/a.npz' does not exist'>"
    )
    assert client_error(reason) == "DataError: client 1: local data '/d/a.npz' does not exist"
