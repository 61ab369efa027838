"""Hydra multirun: one table at the sweep root, mean ± std over seeds per setting.

``fedkd-sim -m strategy=fd,knfu seed=0,1,2`` runs six jobs under
``multirun/<date>/<time>/<job>/``; when they are done, the ``SweepSummary``
callback (registered under ``hydra.callbacks`` in ``configs/config.yaml``)
writes ``summary.md`` and ``summary.csv`` at the sweep root. Runs are grouped
by every config key whose value differs across the jobs except ``seed``
(keys implied by a differing group choice such as ``strategy.name`` are not
repeated), and each group shows the mean ± sample std over its finished runs.

The functions here are pure (paths in, tables out) and are shared with
``fedkd-report``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from server.recorder import flatten_config
from simulations import tables

log = logging.getLogger("fedkd")

# (summary key, column title); accuracies in %, traffic in KB per round
METRICS = [
    ("local_test_acc.last", "local-test last"),
    ("global_test_acc.last", "global-test last"),
    ("kb_per_round", "KB/round"),
]
IGNORED_PREFIXES = ("logging.",)  # console and TensorBoard switches: not a setting
MISSING = "<missing>"


@dataclass
class RunRecord:
    """One run directory: its flattened config and its summary (None: did not finish)."""

    dir: Path
    config: dict[str, Any]
    summary: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.summary is not None and self.summary.get("status", "finished") == "finished"


def _load_yaml(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = OmegaConf.load(path)
    try:
        loaded = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # e.g. ${hydra:...} outside a Hydra app
        loaded = OmegaConf.to_container(cfg, resolve=False)
    if isinstance(loaded, dict):
        loaded.pop("hydra", None)
        return loaded
    return {}


def is_run_dir(path: Path) -> bool:
    return any(
        (path / name).is_file()
        for name in ("summary.json", "config.yaml", "metrics.jsonl", ".hydra/config.yaml")
    )


def _natural(path: Path) -> tuple:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def find_runs(root: str | Path) -> list[Path]:
    """``root`` itself if it is a run directory, else its run subdirectories (job order)."""
    root = Path(root)
    if is_run_dir(root) and not (root / "multirun.yaml").exists():
        return [root]
    return sorted((p for p in root.iterdir() if p.is_dir() and is_run_dir(p)), key=_natural)


def load_run(run_dir: str | Path) -> RunRecord:
    """The run's ``config.yaml`` (or Hydra's ``.hydra/config.yaml``) and ``summary.json``."""
    run_dir = Path(run_dir)
    config: dict[str, Any] = {}
    for name in ("config.yaml", ".hydra/config.yaml"):
        if (run_dir / name).is_file():
            config = _load_yaml(run_dir / name)
            break
    summary = None
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    return RunRecord(run_dir, flatten_config(config), summary)


def _shown(key: str) -> bool:
    return not key.startswith(IGNORED_PREFIXES)


def differing_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Flattened keys whose values differ across ``configs`` (a missing key is a value).

    A key under a group whose ``<group>.name`` also differs is left out when
    the group choice determines it (e.g. ``strategy.beta`` of ``strategy=knfu``
    next to ``strategy=fd``), but kept when it varies within one choice.
    """
    order: dict[str, None] = {}
    for cfg in configs:
        order.update(dict.fromkeys(k for k in cfg if _shown(k)))

    def value(cfg: Mapping[str, Any], key: str) -> str:
        return json.dumps(cfg[key], sort_keys=True) if key in cfg else MISSING

    differ = [k for k in order if len({value(c, k) for c in configs}) > 1]
    names = {k[: -len(".name")] for k in differ if k.endswith(".name")}
    keep = []
    for key in differ:
        groups = [g for g in names if key.startswith(g + ".") and key != g + ".name"]
        implied = any(
            all(
                len({value(c, key) for c in configs if value(c, g + ".name") == choice}) == 1
                for choice in {value(c, g + ".name") for c in configs}
            )
            for g in groups
        )
        if not implied:
            keep.append(key)
    return keep


def format_value(value: Any, limit: int = 40) -> str:
    text = json.dumps(value) if isinstance(value, bool) or value is None else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def label(config: Mapping[str, Any], keys: Iterable[str]) -> str:
    """``strategy.name=fd seed=1``: the run's values of ``keys`` (missing keys left out)."""
    return " ".join(f"{k}={format_value(config[k])}" for k in keys if k in config)


def metric_values(summary: Mapping[str, Any]) -> dict[str, float]:
    """The table's metrics of one finished run (accuracies in %, traffic in KB/round)."""
    out: dict[str, float] = {}
    for key, _ in METRICS:
        if key == "kb_per_round":
            total = summary.get("bytes_per_round", {}).get("total")
            if isinstance(total, (int, float)):
                out[key] = total / 1024
            continue
        name, which = key.split(".")
        value = summary.get("final", {}).get(name, {}).get(which)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = 100 * value
    return out


def aggregate(
    runs: Sequence[RunRecord], exclude: Sequence[str] = ("seed",)
) -> tuple[list[str], list[dict[str, Any]]]:
    """Group runs by their differing keys except ``exclude``; mean ± std per group.

    Returns the grouping keys and one row per group (first-appearance order):
    ``{"setting": {key: value}, "runs": finished, "total": jobs, "seeds": [...],
    "<metric>": (mean, std)}``.
    """
    keys = [k for k in differing_keys([r.config for r in runs]) if k not in exclude]
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        ident = json.dumps([run.config.get(k, MISSING) for k in keys], default=str)
        groups.setdefault(ident, []).append(run)
    rows = []
    for members in groups.values():
        done = [r for r in members if r.finished]
        per_run = [metric_values(r.summary or {}) for r in done]
        row: dict[str, Any] = {
            "setting": {k: members[0].config[k] for k in keys if k in members[0].config},
            "runs": len(done),
            "total": len(members),
            "seeds": [r.config.get("seed") for r in done],
        }
        for key, _ in METRICS:
            row[key] = tables.mean_std([m[key] for m in per_run if key in m])
        rows.append(row)
    return keys, rows


def markdown_table(keys: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table: one column per grouping key, then runs, seeds and the metrics."""
    head = [*(list(keys) or ["setting"]), "runs", "seeds", *(title for _, title in METRICS)]
    lines = tables.markdown(
        head,
        (
            [
                *(
                    [format_value(row["setting"].get(k, "")) for k in keys]
                    if keys
                    else ["all runs"]
                ),
                f"{row['runs']}/{row['total']}",
                " ".join(str(s) for s in row["seeds"]),
                *(
                    tables.cell(row[key], single=row["runs"] == 1, missing=missing(row["runs"]))
                    for key, _ in METRICS
                ),
            ]
            for row in rows
        ),
    )
    return "\n".join(lines) + "\n"


def missing(runs: int) -> str:
    """What a cell without a value says: no run of the setting finished, or none has it."""
    return "failed" if runs == 0 else "n/a"


def write_csv(path: Path, keys: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    tables.write_csv(
        path,
        [*keys, "runs", "total", "seeds", *tables.mean_std_columns(k for k, _ in METRICS)],
        (
            [
                *(row["setting"].get(k, "") for k in keys),
                row["runs"],
                row["total"],
                " ".join(str(s) for s in row["seeds"]),
                *tables.mean_std_values(row[k] for k, _ in METRICS),
            ]
            for row in rows
        ),
    )


NOTE = (
    "Accuracies in % (mean over clients, final round; no round is selected on the test set), "
    "KB/round = bytes up + down per round over all clients; mean ± sample std over the "
    "finished runs of each setting (runs = finished/jobs)."
)


def write_sweep_summary(root: str | Path) -> tuple[Path, Path]:
    """``summary.md`` and ``summary.csv`` at ``root`` for the runs under it."""
    root = Path(root)
    runs = [load_run(p) for p in find_runs(root)]
    keys, rows = aggregate(runs)
    md = root / "summary.md"
    title = f"# Sweep summary: {root}\n\n{len(runs)} runs, grouped by " + (
        ", ".join(f"`{k}`" for k in keys) if keys else "nothing (one setting)"
    )
    md.write_text(f"{title}.\n\n{markdown_table(keys, rows)}\n{NOTE}\n", encoding="utf-8")
    csv_path = root / "summary.csv"
    write_csv(csv_path, keys, rows)
    return md, csv_path


class SweepSummary(Callback):
    """Hydra callback: after a multirun, the aggregated table at ``hydra.sweep.dir``."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        root = Path(str(config.hydra.sweep.dir))
        if not root.is_dir():
            return
        md, csv_path = write_sweep_summary(root)
        print(md.read_text(encoding="utf-8"), flush=True)
        print(f"[sweep] wrote {md} and {csv_path}", flush=True)
