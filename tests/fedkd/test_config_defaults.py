"""Every default lives in ``configs/``: the code reads ``cfg["key"]`` with no fallback of its
own, and a config missing a key stops at ``check_config`` with one line naming it."""

from __future__ import annotations

import ast

import pytest
from helpers import ROOT, default_cfg

from fedkd.config import check_config
from fedkd.errors import ConfigError
from fedkd.schema import check_early, known_keys

PACKAGES = ("fedkd", "clients", "server", "simulations", "protocol")

# (file, key): ``.get(key, default)`` calls on dicts that are not the run config, or on
# sections some options of a group leave out. Each entry must still match a call.
ALLOWED = {
    ("fedkd/privacy/floor.py", "kind"): "a train plan's extract entry (wire data)",
    ("server/traits.py", "name"): "a strategy class's __dict__",
    ("server/strategies/base.py", "reducer"): "strategies without a reducer option",
    ("simulations/deploy.py", "clients"): "a summary",
    ("simulations/bench.py", "num_clients"): "a summary's round rows",
    ("simulations/bench.py", "rounds"): "a summary",
    ("simulations/report.py", "rounds"): "a summary",
    ("simulations/report.py", "strategy"): "a summary",
    ("simulations/report.py", "num_rounds"): "a summary; a run's flattened config",
}


def config_names() -> set[str]:
    """The last part of every dotted key some file of ``configs/`` declares."""
    return {key.rsplit(".", 1)[-1] for key in known_keys()}


def fallbacks(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``(line, key)`` of each ``x.get("<key>", <not None>)`` with ``key`` in ``names``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in names
        ):
            continue
        default = node.args[1]
        if not (isinstance(default, ast.Constant) and default.value is None):
            found.append((node.lineno, node.args[0].value))
    return found


def test_the_scan_finds_a_fallback_for_a_config_key():
    names = config_names()
    assert {"min_partition_size", "collapse_margin", "top_k"} <= names
    source = 'n = cfg.get("min_partition_size", 2)\nm = cfg.get("min_partition_size")\n'
    assert fallbacks(source, names) == [(1, "min_partition_size")]
    assert fallbacks('x = row.get("bytes_up", 0.0)\n', names) == []  # not a config key


def test_no_code_supplies_its_own_default_for_a_config_key():
    names = config_names()
    found: dict[tuple[str, str], list[int]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, key in fallbacks(path.read_text(encoding="utf-8"), names):
                found.setdefault((rel, key), []).append(line)
    bad = [f"{rel}:{lines[0]}: .get({key!r}, ...)" for (rel, key), lines in found.items()]
    bad = [b for (rel, key), b in zip(found, bad, strict=True) if (rel, key) not in ALLOWED]
    assert not bad, (
        "a default for a config key belongs in configs/ (read it as cfg[key]): " + "; ".join(bad)
    )
    stale = sorted(set(ALLOWED) - set(found))
    assert not stale, f"ALLOWED entries that match no call any more (remove them): {stale}"


def without(cfg: dict, dotted: str) -> dict:
    node = cfg
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    del node[last]
    return cfg


@pytest.mark.parametrize(
    ("overrides", "key", "source"),
    [
        ((), "partition.min_partition_size", "configs/partition/dirichlet.yaml"),
        (("partition=pathological",), "partition.class_assignment_mode", "pathological.yaml"),
        ((), "attack.kind", "configs/config.yaml"),
        ((), "knowledge.top_k", "configs/config.yaml"),
        ((), "logging.collapse_margin", "configs/config.yaml"),
        ((), "faults.bad_payload.mode", "configs/config.yaml"),
        ((), "split.canaries.repeats", "configs/config.yaml"),
        ((), "privacy", "defaults"),
        (("dataset=digits_domains",), "dataset.disjoint", "configs/dataset/digits_domains.yaml"),
        (("dataset=hf_domains",), "dataset.channels", "configs/dataset/hf_domains.yaml"),
        (("strategy=fedmd",), "strategy.reducer", "configs/strategy/fedmd.yaml"),
        (("dataset=partitioned",), "dataset.label_column", "configs/dataset/partitioned.yaml"),
    ],
)
def test_a_missing_key_is_one_line_naming_it_and_its_file(overrides, key, source):
    cfg = default_cfg(*overrides)
    check_config(cfg)
    with pytest.raises(ConfigError, match=f"config has no '{key}' .*{source}") as err:
        check_config(without(cfg, key))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=f"config has no '{key}'"):
        check_early(cfg)


def test_every_group_option_composes_and_passes_the_presence_check():
    from fedkd.schema import groups

    for group, options in groups().items():
        if group == "experiment":
            continue
        for option in options:
            check_config(default_cfg(f"{group}={option}"))
    for option in groups()["experiment"]:
        check_config(default_cfg(f"+experiment={option}"))


def test_the_default_config_holds_only_declared_keys():
    """What the presence check requires and what composition gives are the same keys."""

    def dotted(tree: dict, prefix: str = ""):
        for key, value in tree.items():
            yield f"{prefix}{key}"
            if isinstance(value, dict):
                yield from dotted(value, f"{prefix}{key}.")

    assert set(dotted(default_cfg())) <= known_keys()


def test_a_partitioned_datasets_source_needs_its_datasets_keys():
    cfg = default_cfg("dataset=partitioned")
    cfg["dataset"]["source"] = {"name": "synthetic", "num_samples": 100}
    with pytest.raises(
        ConfigError, match="config has no 'dataset.source.num_classes' .*dataset/synthetic.yaml"
    ):
        check_config(cfg)
    cfg["dataset"]["source"] = default_cfg("dataset=synthetic")["dataset"]
    check_config(cfg)
