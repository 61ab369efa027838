"""The fedkd ServerApp: builds the run from the config and drives the strategy.

``make_server_app(cfg, run_dir)`` is what the simulation launcher uses;
``server.serverapp.app`` is the ServerApp for ``flwr run .`` and real deployments,
which checks the config before it imports this module (and torch).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedkd.client import attacks, faults
from fedkd.client.runtime import data_key, federated_data
from fedkd.console import phase
from fedkd.errors import CheckpointError, ConfigError
from server import ledger_log, nodeloss
from server.checkpoint import Checkpointer, set_rng_state
from server.options import check_deployment  # noqa: F401  (re-exported)
from server.options import check_options as check_light_options
from server.privacy import check_record_delta, privacy_summary
from server.recorder import RunRecorder, console_options
from server.roster import Roster
from server.strategies import STRATEGIES, RunInfo

log = logging.getLogger("fedkd")


def prepare_run(cfg: dict[str, Any], build_models: bool = True) -> RunInfo:
    """Check the whole config and the data before any client starts.

    Raises a FedkdError (one line) for unknown names, bad values, data that
    cannot be split as asked, or a strategy that refuses the models.
    ``build_models=False`` leaves out building each client architecture once
    (``fedkd.models.check_client_models``, which loads torch): the simulation's launcher
    has a warm worker do it instead (``simulations.run``).
    """
    strategy = check_options(cfg)
    fed = federated_data(data_key(cfg))
    if strategy.needs_public_set and len(fed.public_x) == 0:
        raise ConfigError(
            f"strategy '{strategy.name}' needs a public set, but split.public_fraction gives none"
        )
    check_record_delta(cfg, max((len(c.train.y) for c in fed.clients), default=0))
    if build_models:
        from fedkd.models import check_client_models

        check_client_models(cfg["model"], len(fed.clients), tuple(fed.input_shape), fed.num_classes)
    return RunInfo(
        num_clients=int(cfg["num_clients"]),
        num_classes=fed.num_classes,
        num_public=len(fed.public_x),
        input_shape=tuple(fed.input_shape),
        feature_dim=int(cfg["model"]["feature_dim"]),
        cfg=cfg,
        cfg_json=json.dumps(cfg, sort_keys=True),
    )


def check_options(cfg: dict[str, Any]) -> type:
    """Every check that needs no data (``server.options``); returns the strategy class.

    The optimisers are checked there without being built, so without importing torch
    (``fedkd.strategy_options.check_optimizer`` refuses all torch refuses;
    docs/performance.md)."""
    spec = check_light_options(cfg)
    return STRATEGIES.get(spec.name)


def run_server(
    grid: Grid,
    cfg: dict[str, Any],
    run_dir: str | Path,
    info: RunInfo | None = None,
    roster: Roster | None = None,
    resume: dict[str, Any] | None = None,
    find_roster: Callable[[Grid, float], Roster | None] | None = None,
    cluster: Any = None,
) -> dict[str, Any]:
    """Run every round and write the run's outputs; returns the summary.

    ``resume``: a checkpoint (``server.checkpoint.load_server_checkpoint``) to continue from.
    ``find_roster``: who is who without the handshake (the simulation knows); None or
    a None answer: ``server.roster.discover``.
    ``cluster``: the simulation's lost nodes and placement (``server.nodeloss``).
    """
    info = info or prepare_run(cfg)
    strategy = STRATEGIES.get(cfg["strategy"]["name"])(
        info, None, roster
    )  # fails before any output
    strategy.find_roster = find_roster
    strategy.cluster = cluster
    if resume is not None:
        if resume.get("strategy_name") != strategy.name:
            raise CheckpointError(
                f"resume: the checkpoint is of strategy {resume.get('strategy_name')!r}, "
                f"the run's is {strategy.name!r}"
            )
        try:
            strategy.load_state_dict(resume["strategy"])
        except Exception as err:  # checked before Ray starts (server.resume_check); kept
            raise CheckpointError(
                f"resume: the checkpoint's strategy state does not fit this run: {err}"
            ) from None
        set_rng_state(resume["rng"])
    strategy.checkpointer = Checkpointer(
        run_dir, cfg, last_round=None if resume is None else int(resume["round"])
    )
    strategy.resume_from = resume
    ledger_log.attach(strategy, run_dir, resumed=resume is not None)  # append-only, on disk
    logs = {**cfg["logging"], **console_options(cfg["logging"])}
    strategy.recorder = recorder = RunRecorder(
        run_dir,
        num_rounds=int(cfg["num_rounds"]),
        tensorboard=bool(logs["tensorboard"]),
        progress=bool(logs["progress"]),
        table=bool(logs["table"]),
        attackers=attacks.attackers(cfg),
        resume=None if resume is None else {**resume["recorder"], "round": resume["round"]},
    )
    status: dict[str, Any] = {"status": "finished"}
    phase("first round", "the server is up; waiting for the clients' first replies")
    try:
        strategy.start(
            grid, num_rounds=int(cfg["num_rounds"]), timeout=float(cfg["server"]["round_timeout"])
        )
        if strategy.status.stop_reason is not None:
            stopped = strategy.status
            status = {"status": stopped.stop_status, "stop_reason": stopped.stop_reason}
    except BaseException as err:  # record what was computed, then re-raise
        status = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        raise
    finally:
        summary = recorder.finish(
            {
                **status,
                "strategy": cfg["strategy"]["name"],
                "dataset": cfg["dataset"]["name"],
                "num_clients": cfg["num_clients"],
                "num_rounds": cfg["num_rounds"],
                "seed": cfg["seed"],
                "rejected_replies": dict(sorted(strategy.dropped.items())),
                "excluded_clients": {str(c): r for c, r in sorted(strategy.excluded.items())},
                "fusion_failures": strategy.fusion_failures,
                "collapse_warnings": list(strategy.health.warnings),
                "faults": faults.assignments(cfg),
                "attack": cfg["attack"]["kind"],
                "attackers": attacks.attackers(cfg),
                **privacy_summary(strategy),
                "dropped_clients": {
                    str(cid): reasons for cid, reasons in sorted(strategy.dropped_clients.items())
                },
                **nodeloss.summary(strategy),
            }
        )
    return summary


def make_server_app(
    cfg: dict[str, Any],
    run_dir: str | Path,
    info: RunInfo | None = None,
    resume: dict[str, Any] | None = None,
    find_roster: Callable[[Grid, float], Roster | None] | None = None,
    cluster: Any = None,
) -> ServerApp:
    """A ServerApp bound to an already composed config (simulation launcher)."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(
            grid, cfg, run_dir, info, resume=resume, find_roster=find_roster, cluster=cluster
        )

    return server_app
