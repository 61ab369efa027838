"""What the config may contain, checked right after composition (no torch, no Flower).

The schema is ``configs/`` itself: every key of ``config.yaml`` and of each
group's option files, and the options of each group. ``explain_compose_error``
turns Hydra's composition errors into one line with a "did you mean";
``check_top_level`` refuses top-level keys that nothing declares (``+num_client=5``);
``check_early`` runs every check that needs neither torch nor the data, in
well under a second, so a bad value stops the run before anything heavy loads
(the strategies' options are in ``fedkd.strategy_options``).
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fedkd.config import check_config, config_dir
from fedkd.errors import ConfigError
from fedkd.strategy_options import check_strategy

GLOBAL_PACKAGE = "# @package _global_"
NOT_GROUPS = ("bench",)  # folders of configs/ that are not Hydra groups of config.yaml


def _load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return loaded if isinstance(loaded, dict) else {}


def _dotted(tree: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in tree.items():
        if key == "defaults":
            continue
        name = f"{prefix}{key}"
        yield name
        if isinstance(value, Mapping):
            yield from _dotted(value, f"{name}.")


@functools.cache
def groups(root: str | None = None) -> dict[str, tuple[str, ...]]:
    """``{group: (option, ...)}`` from the folders of ``configs/``."""
    base = Path(root) if root else config_dir()
    return {
        d.name: tuple(sorted(p.stem for p in d.glob("*.yaml")))
        for d in sorted(base.iterdir())
        if d.is_dir() and not d.name.startswith(("_", ".")) and d.name not in NOT_GROUPS
        if any(d.glob("*.yaml"))
    }


def _is_global(path: Path) -> bool:
    return path.read_text(encoding="utf-8").lstrip().startswith(GLOBAL_PACKAGE)


@functools.cache
def known_keys(root: str | None = None) -> frozenset[str]:
    """Every dotted key some file of ``configs/`` declares (experiments' keys included)."""
    base = Path(root) if root else config_dir()
    keys = set(_dotted({k: v for k, v in _load(base / "config.yaml").items() if k != "hydra"}))
    for group, options in groups(root).items():
        keys.add(group)
        for option in options:
            path = base / group / f"{option}.yaml"
            prefix = "" if _is_global(path) else f"{group}."
            keys.update(_dotted(_load(path), prefix))
    return frozenset(keys)


@functools.cache
def required_keys(group: str | None = None, option: str | None = None) -> tuple[str, ...]:
    """The dotted keys every composed config has: ``config.yaml``'s (``group`` None) or
    those of ``configs/<group>/<option>.yaml`` (empty when there is no such file)."""
    base = config_dir()
    if group is None:
        tree = {k: v for k, v in _load(base / "config.yaml").items() if k != "hydra"}
        return tuple(k for k in _dotted(tree) if k.split(".", 1)[0] not in groups())
    path = base / group / f"{option}.yaml"
    if not path.is_file():
        return ()
    prefix = "" if _is_global(path) else f"{group}."
    return tuple(_dotted(_load(path), prefix))


_ABSENT = object()


def lookup(tree: Mapping[str, Any], key: str, absent: Any = None) -> Any:
    """The value at the dotted ``key`` of a nested config (``absent`` when a part is missing)."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return absent
        node = node[part]
    return node


def _has(cfg: Mapping[str, Any], key: str) -> bool:
    return lookup(cfg, key, _ABSENT) is not _ABSENT


def check_present(cfg: Mapping[str, Any]) -> None:
    """Every key ``configs/`` gives a default must be in ``cfg``: the code reads
    ``cfg["key"]`` and has no fallback of its own. ``config.yaml``'s keys, the group
    sections, the keys of each group's chosen option file (by its ``name``) and those of
    a ``dataset.source``'s dataset."""
    wanted = [(k, "configs/config.yaml") for k in required_keys()]
    for group in groups():
        if group == "experiment":
            continue
        wanted.append((group, "configs/config.yaml's defaults"))
        section = cfg.get(group)
        name = section.get("name") if isinstance(section, Mapping) else None
        if isinstance(name, str):
            where = f"configs/{group}/{name}.yaml"
            wanted.extend((k, where) for k in required_keys(group, name))
        source = section.get("source") if group == "dataset" else None
        if isinstance(source, Mapping) and isinstance(source.get("name"), str):
            # dataset=partitioned: the public and global test sets' own dataset section
            where = f"configs/dataset/{source['name']}.yaml"
            for key in required_keys("dataset", source["name"]):
                if key.startswith("dataset."):
                    wanted.append((f"dataset.source.{key.removeprefix('dataset.')}", where))
    for key, where in wanted:
        if not _has(cfg, key):
            raise ConfigError(
                f"config has no '{key}' ({where} sets it): compose the config from configs/ "
                f"(fedkd.config.compose) rather than writing it by hand, or add the key"
            )


def declared_top_level(experiment: str | None, root: str | None = None) -> set[str]:
    """Top-level keys of ``config.yaml``, the group names and the chosen experiment's keys."""
    base = Path(root) if root else config_dir()
    keys = {k for k in _load(base / "config.yaml") if k not in ("defaults", "hydra")}
    keys.update(groups(root))
    if experiment:
        path = base / "experiment" / f"{experiment}.yaml"
        if path.exists():
            keys.update(k for k in _load(path) if k != "defaults")
    return keys


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean X?"`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _override_for(key: str, overrides: Sequence[str]) -> str:
    for item in overrides:
        if item.lstrip("+~").split("=", 1)[0] == key:
            return item
    return key


def explain_compose_error(message: str, overrides: Sequence[str] = ()) -> str:
    """One line for a Hydra composition error: what is wrong, what to write instead."""
    text = str(message)
    found = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if found:
        group, option = found.groups()
        options = groups().get(group, ())
        if not options:  # not a group at all: ``strategyy=fd``
            hint = did_you_mean(group, groups())
            return f"no config group '{group}' ({_override_for(group, overrides)}){hint}"
        return (
            f"{group}={option}: no such {group}{did_you_mean(option, options)} "
            f"(options: {', '.join(options)})"
        )
    found = re.search(r"Could not (?:override|delete) '([^']+)'", text)
    if found:
        key = found.group(1)
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        siblings = [
            k for k in known_keys() if k.startswith(parent) and k.count(".") == key.count(".")
        ]
        hint = did_you_mean(key, siblings)
        return (
            f"unknown config key '{key}' ({_override_for(key, overrides)}){hint} "
            f"(`fedkd-sim --cfg job` prints every key)"
        )
    found = re.search(r"An item is already at '([^']+)'", text)
    if found:
        key = found.group(1)
        item = _override_for(key, overrides)
        return f"{key} exists: write {item.lstrip('+')} without '+'"
    return text.strip().splitlines()[0] if text.strip() else "config composition failed"


def experiment_of(overrides: Sequence[str]) -> str | None:
    chosen = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("experiment=")]
    return chosen[-1] if chosen else None


def check_top_level(
    cfg: Mapping[str, Any], overrides: Sequence[str] = (), root: str | None = None
) -> None:
    """Refuse a top-level key that neither ``config.yaml``, a group nor the chosen
    experiment declares (``+num_client=5`` would otherwise run with the default)."""
    declared = declared_top_level(experiment_of(overrides), root)
    for key in cfg:
        if key not in declared and key != "hydra":
            raise ConfigError(
                f"unknown top-level key '{key}' ({_override_for(key, overrides)}): nothing "
                f"reads it{did_you_mean(key, declared)} (only an experiment in "
                f"configs/experiment/ may add top-level keys)"
            )


def check_early(cfg: Mapping[str, Any], overrides: Sequence[str] = ()) -> None:
    """The library's checks that need neither torch, Flower nor the data (a one-line
    ConfigError): keys, values, the dataset and partition sections and the strategy's options.
    The launchers add the server's (``server.options.check_options``: privacy, attacks,
    faults, optimisers), which are as light."""
    import fedkd.data  # noqa: F401  (registers the loaders and partitioners)
    from fedkd.data.registry import DATASETS, PARTITIONERS

    check_top_level(cfg, overrides)
    check_config(cfg)
    for group, registry in (("dataset", DATASETS), ("partition", PARTITIONERS)):
        registry.check(cfg[group]["name"], cfg[group])
    check_strategy(cfg)
