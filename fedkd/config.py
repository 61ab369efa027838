"""The run configuration: composed from ``configs/`` and checked before anything starts.

Hydra composes the same files for the launcher (``fedkd-sim``), for
``flwr run .`` (whose run config holds overrides, not a second set of
defaults) and for tests. ``check_config`` raises a one-line ConfigError naming
the key; strategy options are checked by the strategy itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedkd.confusion import check_confusion_every
from fedkd.encoding import check_spec as check_encoding
from fedkd.errors import ConfigError


def config_dir() -> Path:
    """``configs/`` beside the packages (installed as package data or in the checkout)."""
    import configs

    return Path(configs.__file__).resolve().parent


_COMPOSED: dict[tuple, dict[str, Any]] = {}  # (overrides, config files' stamp) -> config
_COMPOSED_MAX = 128


def _configs_stamp(folder: Path) -> tuple:
    """The config files under ``folder`` with their size and modification time."""
    return tuple(
        (str(p), st.st_mtime_ns, st.st_size)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and (st := p.stat())
    )


def compose(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Compose ``configs/config.yaml`` with Hydra overrides into a plain dict.

    Hydra's composition takes a few hundred milliseconds; a process composing the same
    overrides again (``fedkd-compare``'s presets, a session of runs, the tests) gets a
    copy of the first result while no file under ``configs/`` has changed.
    """
    import copy

    folder = config_dir()
    key = (tuple(overrides), str(folder), _configs_stamp(folder))
    if key not in _COMPOSED:
        if len(_COMPOSED) >= _COMPOSED_MAX:
            _COMPOSED.pop(next(iter(_COMPOSED)))
        _COMPOSED[key] = _compose(folder, overrides)
    return copy.deepcopy(_COMPOSED[key])


def _compose(folder: Path, overrides: Sequence[str]) -> dict[str, Any]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(folder), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
            cfg = OmegaConf.to_container(cfg, resolve=False)
    except (HydraException, OmegaConfBaseException) as err:
        from fedkd.schema import explain_compose_error

        text = str(err) if err.__cause__ is None else f"{err}\n{err.__cause__}"
        raise ConfigError(explain_compose_error(text, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    cfg.pop("hydra", None)
    return cfg


def _positive_int(cfg: Mapping[str, Any], path: str, minimum: int = 1) -> None:
    node: Any = cfg
    for part in path.split("."):
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int) or node < minimum:
        raise ConfigError(f"{path} must be an integer >= {minimum} (got {node!r})")


def check_config(cfg: Mapping[str, Any]) -> None:
    """Strategy-independent checks; unknown names fail at their registry lookup.

    First: every key ``configs/`` sets is present (``fedkd.schema.check_present``), so
    the code reads ``cfg["key"]`` with no default of its own."""
    from fedkd.schema import check_present

    check_present(cfg)
    for key in ("dataset", "partition", "model", "strategy", "client", "split", "server"):
        if not isinstance(cfg[key], Mapping):
            raise ConfigError(f"config section '{key}' must be a mapping (got {cfg[key]!r})")
    for path in (
        "num_clients",
        "num_rounds",
        "client.epochs",
        "client.batch_size",
        "client.eval_batch_size",
    ):
        _positive_int(cfg, path)
    _positive_int(cfg, "seed", minimum=0)
    _positive_int(cfg, "model.feature_dim")
    family = cfg["model"]["family"]
    if not isinstance(family, Sequence) or isinstance(family, str) or not family:
        raise ConfigError("model.family must be a non-empty list of model specs")
    server = cfg["server"]
    if not 0 < float(server["fraction_train"]) <= 1:
        raise ConfigError(
            f"server.fraction_train must be in (0, 1] (got {server['fraction_train']})"
        )
    if int(server["min_train_clients"]) < 1:
        raise ConfigError(
            f"server.min_train_clients must be >= 1 (got {server['min_train_clients']})"
        )
    if int(server["min_train_clients"]) > int(cfg["num_clients"]):
        raise ConfigError(
            f"server.min_train_clients={server['min_train_clients']} exceeds num_clients={cfg['num_clients']}"
        )
    timeout = server["round_timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 1e7:
        raise ConfigError(
            f"server.round_timeout must be a number of seconds in (0, 1e7) (got {timeout!r})"
        )
    try:
        check_encoding(cfg["knowledge"])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    poll = server["poll_interval"]
    if isinstance(poll, bool) or not isinstance(poll, (int, float)) or not 0.001 <= poll <= 60:
        raise ConfigError(f"server.poll_interval must be seconds in [0.001, 60] (got {poll!r})")
    for key in ("max_payload_bytes", "max_strikes", "max_starved_rounds"):
        value = server[key]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"server.{key} must be null or an integer >= 1 (got {value!r})")
    if cfg["client"]["device"] not in ("cpu", "cuda", "auto"):
        raise ConfigError(
            f"client.device must be cpu, cuda or auto (got '{cfg['client']['device']}')"
        )
    check_confusion_every(cfg["logging"]["confusion_every"])
