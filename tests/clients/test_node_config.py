"""A SuperNode's node config: which data it holds, and the start-up checks of that data.

``introduce`` is what the ClientApp's ``hello`` query answers; the launcher's
pre-check (``fedkd-deploy --data``) fails before starting any process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from helpers import ROOT

from clients.app import introduce
from fedkd.config import compose
from fedkd.errors import ConfigError, DataError
from fedkd.plan import Plan
from protocol import wire
from server.roster import client_error
from simulations.deploy import DeployError, node_config_arg


def context(**node) -> Context:
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})


def with_config(cfg: dict) -> RecordDict:
    return RecordDict({wire.CONFIG: wire.make_config(0, json.dumps(cfg), Plan())})


@pytest.fixture(scope="module")
def cfg() -> dict:
    return compose(["num_clients=3"])


def digits_npz(path, n=40, labels=10):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((n, 1, 8, 8), dtype=np.float32), y=np.arange(n) % labels)
    return path


def test_partition_node_without_config_just_says_who_it_is():
    assert introduce(context(**{"partition-id": 2, "num-partitions": 3}), RecordDict()) == {
        "partition_id": 2,
        "num_partitions": 3,
    }


def test_node_without_ids_is_told_what_to_set():
    with pytest.raises(ConfigError, match=r"needs 'partition-id' .* 'num-partitions'"):
        introduce(context(**{"data-path": "/x.npz"}), RecordDict())


def test_local_data_node_loads_its_file_at_hello(tmp_path, cfg):
    path = digits_npz(tmp_path / "mine.npz")
    node = {"partition-id": 1, "num-partitions": 3, "data-path": str(path)}
    metrics = introduce(context(**node), with_config(cfg))
    assert metrics == {
        "partition_id": 1,
        "num_partitions": 3,
        "num_train": 30,
        "num_local_test": 10,
        "local_data": 1,
    }


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing.npz", r"local data '.*missing\.npz' does not exist"),
        (
            lambda p: digits_npz(p / "c.npz", labels=12),
            r"labels 0\.\.11 but the run's dataset has 10",
        ),
    ],
)
def test_bad_local_data_fails_at_hello(tmp_path, cfg, make, message):
    node = {"partition-id": 0, "num-partitions": 3, "data-path": str(make(tmp_path))}
    with pytest.raises(DataError, match=message):
        introduce(context(**node), with_config(cfg))


def test_flower_error_reason_becomes_one_line():
    reason = "<class 'fedkd.errors.DataError'>:<'local data '/d/a.npz' does not exist'>"
    assert client_error(reason) == "DataError: local data '/d/a.npz' does not exist"
    assert client_error("Error: Node\nUnavailable") == "Error: Node Unavailable"


def test_node_config_arg_quotes_strings():
    arg = node_config_arg({"partition-id": 0, "num-partitions": 2, "data-path": "/d/a b.csv"})
    assert arg == 'partition-id=0 num-partitions=2 data-path="/d/a b.csv"'
    with pytest.raises(DeployError, match="double quotes"):
        node_config_arg({"data-path": 'a"b'})


def test_check_data_command_reports_every_file(tmp_path):
    good = digits_npz(tmp_path / "good.npz")
    bad = digits_npz(tmp_path / "bad.npz", labels=12)
    cmd = [sys.executable, "-m", "simulations.check_data", str(good), str(bad), "num_clients=2"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout.strip().startswith(f"{good}: ok, ")
    assert "of the run's 10 classes" in result.stdout
    assert result.stderr.strip().splitlines() == [
        f"fedkd-check-data: local data '{bad}' has labels 0..11 but the run's dataset has "
        "10 classes (0..9)"
    ]
    ok = subprocess.run(cmd[:4], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stderr == ""


def test_launcher_checks_data_before_starting_anything(tmp_path):
    bad = digits_npz(tmp_path / "bad.npz", labels=12)
    cmd = [sys.executable, "-m", "simulations.deploy", "--insecure", "--data", str(bad)]
    cmd += ["--data", str(tmp_path / "missing.csv"), "--work-dir", str(tmp_path / "work")]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [  # every bad client, one line each
        f"fedkd-deploy: error: client 0: local data '{bad}' has labels 0..11 but the run's "
        "dataset has 10 classes (0..9)",
        f"fedkd-deploy: error: client 1: local data '{tmp_path / 'missing.csv'}' does not exist",
    ]
    assert not (tmp_path / "work").exists()  # no process was started


def test_deploy_uses_existing_keys_or_says_how_to_make_them(tmp_path):
    from simulations.deploy import existing_keys

    for i in range(2):
        (tmp_path / f"node_{i}").write_text("private")
        (tmp_path / f"node_{i}.pub").write_text("public")
    assert existing_keys(tmp_path, 2) == [
        tmp_path.resolve() / "node_0",
        tmp_path.resolve() / "node_1",
    ]
    with pytest.raises(DeployError, match=r"no node_2 for 3 nodes; run `make keys NODES=3`"):
        existing_keys(tmp_path, 3)
