"""Every check of the run config that needs neither torch, Flower nor the data.

``check_options`` is what ``fedkd-sim`` runs right after Hydra composes the config and what
the ServerApp runs first under ``flwr run``: a bad value stops the run in about a second,
with one line naming the key and what to set it to. The checks that need the data
(sample counts, the public set's size) or torch (building each model) follow in
``server.app.prepare_run``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from fedkd.bounds import Bounds
from fedkd.client import attacks, faults
from fedkd.config import check_config, compose
from fedkd.errors import ConfigError
from fedkd.privacy.noise import seeded_noise
from fedkd.strategy_options import StrategySpec, check_optimizer, check_strategy, swing_of
from server.privacy import check_privacy


def check_checkpoint_config(cfg: Mapping[str, Any]) -> None:
    every = cfg["checkpoint"]["every"]
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 0):
        raise ConfigError(
            f"checkpoint.every must be null or an integer >= 0 (got {every!r}), "
            f"e.g. checkpoint.every=5"
        )
    resume = cfg["resume"]
    if resume is not None and not isinstance(resume, str):
        raise ConfigError(f"resume must be a run directory (got {resume!r})")


def optimizer_specs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``{config key: optimizer spec}`` of every optimiser the run names."""
    specs = {
        "client.optimizer": cfg["client"]["optimizer"],
        "client.distill.optimizer": cfg["client"]["distill"]["optimizer"],
    }
    specs.update(
        {f"strategy.{k}": v for k, v in cfg["strategy"].items() if k.endswith("optimizer")}
    )
    distill = cfg["strategy"].get("distill")
    if isinstance(distill, Mapping) and "optimizer" in distill:
        specs["strategy.distill.optimizer"] = distill["optimizer"]
    return {k: v for k, v in specs.items() if v is not None}


def check_optimizers(cfg: Mapping[str, Any]) -> None:
    for where, spec in optimizer_specs(cfg).items():
        check_optimizer(where, spec)
    for key in ("epochs", "batch_size"):
        value = cfg["client"]["distill"][key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"client.distill.{key} must be an integer >= 1 (got {value!r}), "
                f"e.g. client.distill.{key}=1"
            )


def check_options(cfg: Mapping[str, Any]) -> StrategySpec:
    """Every check that needs no data and no torch; returns the strategy's spec."""
    check_config(cfg)
    spec = check_strategy(cfg)
    check_privacy(cfg, spec)
    swing_of(cfg, spec)
    check_optimizers(cfg)
    faults.check_faults(cfg)
    check_checkpoint_config(cfg)
    Bounds.from_config(cfg["bounds"])
    attacks.check_attack(cfg, spec.upload_kind, spec.name)
    if (
        faults.assignments(cfg).get("bad_payload")
        and faults.bad_mode(cfg, 1) == "indices"
        and spec.upload_kind not in ("public_logits", "votes")
    ):
        raise ConfigError(
            f"faults.bad_payload.mode=indices needs public-set knowledge; strategy "
            f"'{spec.name}' uploads {spec.upload_kind or 'nothing'}"
        )
    return spec


def check_deployment(cfg: dict[str, Any]) -> None:
    """What a deployment (``flwr run``, ``fedkd-deploy``, real SuperNodes) refuses."""
    if cfg["resume"]:
        raise ConfigError(
            "resume=DIR continues a simulation (fedkd-sim resume=DIR); flwr run starts new runs"
        )
    if seeded_noise(cfg):
        raise ConfigError(
            "simulation.seeded_noise=true is for simulations only: anyone who knows the run "
            "config could subtract the noise; drop the override (deployments use OS entropy)"
        )


def overrides_from_run_config(run_config: Mapping[str, Any]) -> list[str]:
    """The Flower run config's ``overrides`` string, split like a shell command line."""
    return shlex.split(str(run_config.get("overrides", "")))


def check_flwr_config(overrides: Sequence[str]) -> dict[str, Any]:
    """What the ``flwr run`` ServerApp checks first: compose ``configs/`` with the run
    config's overrides and run every check that needs no torch, Flower or data."""
    from fedkd.schema import check_early

    overrides = list(overrides)
    cfg = compose(overrides)
    check_early(cfg, overrides)  # the same checks as fedkd-sim, before anything else
    check_options(cfg)
    check_deployment(cfg)  # resume= and seeded noise are for simulations
    return cfg
