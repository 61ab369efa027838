"""The ServerApp of ``flwr run .`` and of real deployments (``pyproject.toml`` names it).

The config is composed from ``configs/`` with the Flower run config's ``overrides`` (one
schema, one set of defaults) and checked before this process imports torch, the
strategies or the data: a bad value fails the run within a second or two of the
ServerApp starting, as one ``fedkd ERROR`` line in the log stream and in ``run.log``.
The ServerApp then raises, so Flower marks the run failed with that line as its details
(``flwr list``) and ``fedkd-flwr-run`` exits non-zero.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedkd.errors import FedkdError
from server.options import check_flwr_config, overrides_from_run_config

log = logging.getLogger("fedkd")

RUN_LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # as fedkd-sim's run.log


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run``: the run config overrides configs/; the clients say how many they are.

    The run directory gets ``config.yaml`` and ``run.log`` as under ``fedkd-sim``. A bad
    config fails before any SuperNode is asked, as one ``fedkd ERROR`` line in the log
    stream; the ServerApp then raises, so Flower marks the run failed with that line as its
    details (``flwr list``) and the ServerApp process exits non-zero.
    """
    if not log.handlers:  # flwr-serverapp configures only Flower's logger: show fedkd's lines too
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("fedkd %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    run_config = dict(context.run_config)
    default_dir = Path("outputs") / "flwr" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = Path(str(run_config.get("run_dir") or default_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    run_log = logging.FileHandler(run_dir / "run.log", encoding="utf-8")
    run_log.setFormatter(logging.Formatter(RUN_LOG_FORMAT))
    log.addHandler(run_log)
    try:
        _run_flwr(grid, run_config, run_dir)
    except FedkdError as err:
        for line in str(err).splitlines():  # one line (one per client that cannot start)
            log.error("%s", line)  # in the stream and in run.log
        raise err.with_traceback(None) from None  # Flower logs it: keep its traceback short
    finally:
        log.removeHandler(run_log)
        run_log.close()


def _write_config(cfg: dict[str, Any], run_dir: Path) -> None:
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(OmegaConf.create(cfg))
    (run_dir / "config.yaml").write_text(text, encoding="utf-8")


def _run_flwr(grid: Grid, run_config: dict[str, Any], run_dir: Path) -> None:
    overrides = overrides_from_run_config(run_config)
    cfg = check_flwr_config(overrides)  # fail on a bad config before loading torch
    from fedkd.errors import ConfigError, FedkdError
    from server import nodeloss
    from server.app import check_options, run_server
    from server.roster import discover

    check_options(cfg)  # and each optimiser built by torch
    _write_config(cfg, run_dir)
    roster = discover(grid, timeout=float(cfg["server"]["round_timeout"]), cfg_json=json.dumps(cfg))
    if (
        any(o.startswith("num_clients=") for o in overrides)
        and cfg["num_clients"] != roster.num_partitions
    ):
        raise ConfigError(
            f"overrides set num_clients={cfg['num_clients']} but the SuperNodes hold "
            f"{roster.num_partitions} partitions"
        )
    cfg["num_clients"] = roster.num_partitions
    _write_config(cfg, run_dir)  # with the number of clients the SuperNodes hold
    summary = run_server(grid, cfg, run_dir, roster=roster)
    if summary.get("status") in nodeloss.STOPPED:  # starved: Flower marks the run failed
        raise FedkdError(summary["stop_reason"])
