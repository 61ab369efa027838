"""The ``flwr run`` ServerApp's main on a bad config: one line, run.log, no SuperNode asked.

``server.serverapp.main`` is called with a real Flower ``Context``; the config fails
before the grid is used (and before torch is imported), so no SuperLink is needed (``test_flwr_run.py`` runs
the whole ``flwr run`` and checks its run directory's config.yaml and run.log).
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from flwr.app import Context, RecordDict
from helpers import ROOT

from fedkd.errors import ConfigError
from server.serverapp import main


def context(run_dir, overrides: str) -> Context:
    return Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={"overrides": overrides, "run_dir": str(run_dir)},
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ("strategy=fdd", "strategy=fdd: no such strategy; did you mean fd?"),
        ("num_client=5", "did you mean num_clients?"),
        ("+num_client=5", "unknown top-level key 'num_client'"),
        ("partition.alpha=-1", "partition.alpha must be > 0"),
        ("strategy=knfu strategy.beta=-1", "strategy.beta must be a number >= 0"),
        ("privacy=central strategy=knfu", "privacy=central cannot protect strategy 'knfu'"),
    ],
)
def test_bad_config_fails_with_one_line_in_run_log(tmp_path, caplog, overrides, expected):
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.ERROR, logger="fedkd"), pytest.raises(ConfigError) as err:
        main(None, context(run_dir, overrides))  # the grid is never reached
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained traceback
    assert expected in (run_dir / "run.log").read_text()
    assert not (run_dir / "config.yaml").exists()  # nothing ran


def test_resume_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="flwr run starts new runs"):
        main(None, context(run_dir, f"resume={tmp_path}"))
    assert "flwr run starts new runs" in (run_dir / "run.log").read_text()
    assert not (run_dir / "config.yaml").exists()


PROBE = """
import sys
from flwr.app import Context, RecordDict
from fedkd.errors import ConfigError
from server.serverapp import main
ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
              run_config={"overrides": sys.argv[2], "run_dir": sys.argv[1]})
try:
    main(None, ctx)
except ConfigError as err:
    print("refused:", err)
print("torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    "overrides",
    ["strategy=fdd", "strategy=fedmd strategy.digest_loss=mse", "client.optimizer.name=sgdd"],
)
def test_serverapp_refuses_a_bad_config_before_importing_torch(tmp_path, overrides):
    """The process Flower starts for the ServerApp loads this module, then runs main."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "run"), overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "refused: " in result.stdout, result.stdout + result.stderr
    assert "torch imported: False" in result.stdout
