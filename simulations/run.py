"""``fedkd-sim`` / ``python -m simulations.run``: one Ray-backed Flower simulation.

Hydra composes ``configs/``; the run directory is Hydra's (``hydra.run.dir``
overrides it). The config and the data are checked before Ray starts: a bad
value prints one line naming it and exits with status 1.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fedkd.errors import FedkdError

log = logging.getLogger("fedkd")


def backend_config(cfg: dict[str, Any]) -> dict[str, Any]:
    sim = cfg["simulation"]
    init_args: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": bool(cfg["logging"]["verbose"]),
        "logging_level": logging.INFO if cfg["logging"]["verbose"] else logging.ERROR,
    }
    if sim.get("ray_num_cpus"):
        init_args["num_cpus"] = int(sim["ray_num_cpus"])
    return {
        "client_resources": {
            "num_cpus": float(sim["num_cpus_per_client"]),
            "num_gpus": float(sim["num_gpus_per_client"]),
        },
        "init_args": init_args,
    }


def quiet_libraries(verbose: bool) -> None:
    """Flower logs every message at INFO; keep the console for the progress bar."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose and not any(isinstance(f, _ClientFailures) for f in flwr_logger.filters):
        flwr_logger.addFilter(_ClientFailures())


class _ClientFailures(logging.Filter):
    """Keep Flower's tracebacks of failing ClientApps off the console unless verbose: the
    server already logs one line per rejected reply, naming the client and the reason."""

    GENERIC = "An exception was raised when processing a message by"

    def filter(self, record: logging.LogRecord) -> bool:
        from clients.faults import MARK

        text = record.getMessage()
        return MARK not in text and not text.startswith(self.GENERIC)


class _CurrentStdout:
    """Writes to whatever ``sys.stdout`` is now: a live rich progress bar redirects it."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def console_logging(logs: dict[str, Any]) -> None:
    """Hydra's console handler per ``logging.level``; its file handler (run.log) keeps everything.

    quiet: warnings and errors only; normal: no per-round lines (the progress bar
    shows them); verbose: per-round lines too, printed above the progress bar.
    """
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.StreamHandler) or isinstance(
            handler, logging.FileHandler
        ):
            continue
        if logs.get("level") == "quiet":
            handler.setLevel(logging.WARNING)
        if logs["verbose"]:
            if handler.stream is sys.stdout:
                handler.setStream(_CurrentStdout())  # type: ignore[arg-type]
        else:
            handler.addFilter(lambda record: not record.name.startswith("fedkd.rounds"))


def simulate(cfg: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Check ``cfg``, then run the simulation and return its summary."""
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from server.app import make_server_app, prepare_run
    from server.recorder import console_options

    cfg["logging"].update(console_options(cfg["logging"]))  # logging.level -> the three switches
    info = prepare_run(cfg)  # raises FedkdError before Ray starts
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(cfg)), encoding="utf-8")
    quiet_libraries(bool(cfg["logging"]["verbose"]))
    summary: dict[str, Any] = {}

    server_app = make_server_app(cfg, run_dir, info)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=int(cfg["num_clients"]),
        backend_config=backend_config(cfg),
        verbose_logging=bool(cfg["logging"]["verbose"]),
    )
    summary_file = run_dir / "summary.json"
    if summary_file.exists():
        import json

        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    return summary


@hydra.main(config_path="../configs", config_name="config", version_base=None)
def _hydra_main(cfg: DictConfig) -> None:
    from server.recorder import console_options

    plain = OmegaConf.to_container(cfg, resolve=True)
    try:
        plain["logging"].update(console_options(plain["logging"]))
        console_logging(plain["logging"])
        simulate(plain, HydraConfig.get().runtime.output_dir)
    except FedkdError as err:
        print(f"fedkd-sim: error: {err}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
