"""``fedkd-report RUN_DIR... [--out DIR]``: figures and a Markdown table from finished runs.

Reads each run's ``summary.json``, ``metrics.jsonl`` and ``config.yaml`` (a
sweep root such as ``multirun/<date>/<time>`` stands for all of its jobs) and
writes PNG figures (matplotlib, Agg) and ``summary.md`` into ``--out``:

- ``accuracy.png``: mean accuracy per round, band = ± std across clients (local and global test)
- ``clients.png``: per-client accuracy heatmap (clients x rounds) per run
- ``accuracy_vs_bytes.png``: mean accuracy against cumulative traffic (up + down, all clients)
- ``epsilon.png``: accuracy against the privacy budget (only if the runs record ``epsilon``)
- ``fusion_weights.png``: KnFu fusion weights, first and last round (only for runs that have them)
- ``confusion.png``: the mean client's confusion matrix on the global test set, last recorded
  round (only for runs with a ``confusion.json``)

Several runs are overlaid and labelled by the config keys whose values differ
across them (e.g. ``strategy.name=fd seed=1``).

    fedkd-report outputs/2026-01-01/12-00-00
    fedkd-report outputs/run-a outputs/run-b --out reports/a-vs-b
    fedkd-report multirun/2026-01-01/12-00-00            # every job of a sweep
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from simulations.sweep import (
    RunRecord,
    aggregate,
    differing_keys,
    find_runs,
    label,
    load_run,
    markdown_table,
)

DPI = 100
ACCURACIES = (("local_test_acc", "local test"), ("global_test_acc", "global test"))
WIDTH = 11.0  # inches; heights are multiples of 0.25 in so pixel sizes are exact
FIGURES = ("accuracy", "clients", "accuracy_vs_bytes", "epsilon", "fusion_weights", "confusion")


def figure_inches(name: str, rows: int = 1) -> tuple[float, float]:
    """Figure size of ``name`` with ``rows`` panel rows (one per run where it applies)."""
    if name in ("accuracy", "accuracy_vs_bytes", "epsilon"):
        return WIDTH, 4.5
    if name == "clients":
        return WIDTH, 0.5 + 2.5 * rows
    if name == "fusion_weights":
        return 9.0, 0.5 + 3.5 * rows
    if name == "confusion":
        return 6.0, 0.5 + 4.5 * rows
    raise KeyError(name)


def figure_pixels(name: str, rows: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of the PNG written for ``name``."""
    w, h = figure_inches(name, rows)
    return int(w * DPI), int(h * DPI)


@dataclass
class Run:
    dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    lines: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return sorted(self.summary.get("rounds", []), key=lambda r: r["round"])

    def client_matrix(self, key: str) -> tuple[list[int], list[int], list[list[float]]]:
        """(clients, rounds, values[client][round]) of a per-client metric; NaN where absent."""
        values = {
            (int(line["client"]), int(line["round"])): line[key]
            for line in self.lines
            if isinstance(line.get(key), (int, float))
        }
        clients = sorted({c for c, _ in values})
        rounds = sorted({r for _, r in values})
        matrix = [[values.get((c, r), math.nan) for r in rounds] for c in clients]
        return clients, rounds, matrix

    def epsilons(self) -> dict[int, float]:
        """Privacy budget per round: the server's ``epsilon`` or the largest client's."""
        out = {
            int(r["round"]): float(r["epsilon"])
            for r in self.rounds
            if isinstance(r.get("epsilon"), (int, float))
        }
        if out:
            return out
        per_round: dict[int, float] = {}
        for line in self.lines:
            eps = line.get("epsilon")
            if isinstance(eps, (int, float)) and math.isfinite(eps):
                rnd = int(line["round"])
                per_round[rnd] = max(per_round.get(rnd, -math.inf), float(eps))
        return per_round

    def fusion_weights(self) -> dict[int, list[list[float]]]:
        """Round -> weight matrix [client][other client] from the ``fusion_weights`` rows."""
        rows: dict[int, dict[int, dict[int, float]]] = defaultdict(dict)
        for line in self.lines:
            weights = line.get("fusion_weights")
            if isinstance(weights, dict) and weights:
                rows[int(line["round"])][int(line["client"])] = {
                    int(k): float(v) for k, v in weights.items() if v is not None
                }
        out = {}
        for rnd, by_client in sorted(rows.items()):
            n = 1 + max([*by_client, *(j for row in by_client.values() for j in row)])
            out[rnd] = [[by_client.get(i, {}).get(j, math.nan) for j in range(n)] for i in range(n)]
        return out

    def final_confusion(self) -> tuple[int, list[list[float]]] | None:
        """(round, mean client's matrix) of the last round in ``confusion.json``; None without."""
        path = self.dir / "confusion.json"
        if not path.is_file():
            return None
        rounds = json.loads(path.read_text(encoding="utf-8")).get("rounds") or []
        if not rounds:
            return None
        last = max(rounds, key=lambda r: r["round"])
        return int(last["round"]), last["mean_client"]


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Runs with a ``summary.json`` under ``paths`` (sweep roots expand to their jobs)."""
    records: list[RunRecord] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no such run directory: {path}")
        for run_dir in find_runs(path):
            record = load_run(run_dir)
            if record.summary is None:
                print(f"fedkd-report: skipping {run_dir}: no summary.json", file=sys.stderr)
                continue
            records.append(record)
    keys = differing_keys([r.config for r in records])
    runs = [
        Run(r.dir, r.config, r.summary or {}, read_lines(r.dir / "metrics.jsonl")) for r in records
    ]
    labels = [label(run.config, keys) or run.dir.name for run in runs]
    for run, text in zip(runs, labels, strict=True):
        run.label = text if labels.count(text) == 1 else f"{text} ({run.dir.name})".strip()
    return runs


# ---------------------------------------------------------------- figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_ticks(ax, *, x: bool = True, y: bool = False) -> None:
    from matplotlib.ticker import MaxNLocator

    if x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _colors(n: int) -> list:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def figure_accuracy(runs: list[Run], out: Path) -> Path:
    """Mean accuracy per round with a ± std band across clients."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=figure_inches("accuracy"), layout="constrained")
    for ax, (key, title) in zip(axes, ACCURACIES, strict=True):
        for run, color in zip(runs, _colors(len(runs)), strict=True):
            rows = [r for r in run.rounds if isinstance(r.get(key), (int, float))]
            if not rows:
                continue
            x = [r["round"] for r in rows]
            mean = [r[key] for r in rows]
            std = [r.get(f"{key}_std") or 0.0 for r in rows]
            ax.plot(x, mean, marker="o", markersize=3, color=color, label=run.label)
            ax.fill_between(
                x,
                [m - s for m, s in zip(mean, std, strict=True)],
                [m + s for m, s in zip(mean, std, strict=True)],
                color=color,
                alpha=0.15,
                linewidth=0,
            )
        ax.set(title=f"{title} accuracy (mean ± std over clients)", xlabel="round")
        _integer_ticks(ax)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    return _save(fig, out / "accuracy.png")


def figure_clients(runs: list[Run], out: Path) -> Path:
    """Per-client accuracy, clients x rounds, one row of panels per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(runs),
        2,
        figsize=figure_inches("clients", len(runs)),
        squeeze=False,
        layout="constrained",
    )
    shown = None
    for row, run in zip(axes, runs, strict=True):
        for ax, (key, title) in zip(row, ACCURACIES, strict=True):
            clients, rounds, matrix = run.client_matrix(key)
            if not clients:
                ax.set_axis_off()
                continue
            shown = ax.imshow(
                matrix,
                aspect="auto",
                cmap="viridis",
                vmin=0.0,
                vmax=1.0,
                interpolation="nearest",
                extent=(rounds[0] - 0.5, rounds[-1] + 0.5, clients[-1] + 0.5, clients[0] - 0.5),
            )
            ax.set(xlabel="round", ylabel="client")
            _integer_ticks(ax, y=True)
            ax.set_title(f"{run.label}: {title}", fontsize=8)
    if shown is not None:
        fig.colorbar(shown, ax=axes, label="accuracy", shrink=0.9)
    return _save(fig, out / "clients.png")


def figure_bytes(runs: list[Run], out: Path) -> Path:
    """Mean accuracy against cumulative traffic (bytes up + down over all clients)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=figure_inches("accuracy_vs_bytes"), layout="constrained")
    series = []
    for run in runs:
        total, points = 0.0, []
        for r in run.rounds:
            total += float(r.get("bytes_up") or 0.0) + float(r.get("bytes_down") or 0.0)
            points.append((total / 1e6, r))
        series.append(points)
    positive = [mb for points in series for mb, _ in points if mb > 0]
    log_x = bool(positive) and max(positive) / min(positive) > 100
    for ax, (key, title) in zip(axes, ACCURACIES, strict=True):
        for run, points, color in zip(runs, series, _colors(len(runs)), strict=True):
            xy = [
                (mb, r[key])
                for mb, r in points
                if isinstance(r.get(key), (int, float)) and (mb > 0 or not log_x)
            ]
            if xy:
                ax.plot(
                    *zip(*xy, strict=True), marker="o", markersize=3, color=color, label=run.label
                )
        ax.set(
            title=f"{title} accuracy vs traffic", xlabel="cumulative MB (up + down, all clients)"
        )
        ax.set_ylabel("mean accuracy")
        if log_x:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    return _save(fig, out / "accuracy_vs_bytes.png")


def figure_epsilon(runs: list[Run], out: Path) -> Path | None:
    """Mean accuracy against the per-round privacy budget; None if no run records one."""
    budgets = [run.epsilons() for run in runs]
    if not any(budgets):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=figure_inches("epsilon"), layout="constrained")
    for ax, (key, title) in zip(axes, ACCURACIES, strict=True):
        for run, eps, color in zip(runs, budgets, _colors(len(runs)), strict=True):
            xy = [
                (eps[r["round"]], r[key])
                for r in run.rounds
                if r["round"] in eps and isinstance(r.get(key), (int, float))
            ]
            seeded = (run.summary.get("privacy") or {}).get("seeded_noise") is True
            label = f"{run.label} (seeded noise: epsilon not a guarantee)" if seeded else run.label
            if xy:
                ax.plot(*zip(*xy, strict=True), marker="o", markersize=3, color=color, label=label)
        ax.set(title=f"{title} accuracy vs privacy budget", xlabel="epsilon")
        ax.set_ylabel("mean accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    return _save(fig, out / "epsilon.png")


def figure_fusion(runs: list[Run], out: Path) -> Path | None:
    """KnFu fusion weights (row: client, column: the client whose knowledge it weights)."""
    fused = [(run, w) for run in runs if (w := run.fusion_weights())]
    if not fused:
        return None
    from matplotlib.colors import LogNorm

    plt = _pyplot()
    fig, axes = plt.subplots(
        len(fused),
        2,
        figsize=figure_inches("fusion_weights", len(fused)),
        squeeze=False,
        layout="constrained",
    )
    norm = LogNorm(vmin=1e-4, vmax=1.0, clip=True)
    shown = None
    for row, (run, weights) in zip(axes, fused, strict=True):
        rounds = sorted(weights)
        for ax, rnd in zip(row, (rounds[0], rounds[-1]), strict=True):
            matrix = [[max(v, 1e-4) if v == v else v for v in line] for line in weights[rnd]]
            shown = ax.imshow(matrix, cmap="magma", norm=norm, interpolation="nearest")
            ax.set(xlabel="other client", ylabel="client")
            _integer_ticks(ax, y=True)
            ax.set_title(f"{run.label}: round {rnd}", fontsize=8)
    fig.colorbar(shown, ax=axes, label="fusion weight (log)", shrink=0.9)
    return _save(fig, out / "fusion_weights.png")


def figure_confusion(runs: list[Run], out: Path) -> Path | None:
    """The mean client's global-test confusion matrix (rows: true class), one panel per run."""
    found = [(run, c) for run in runs if (c := run.final_confusion())]
    if not found:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(found),
        1,
        figsize=figure_inches("confusion", len(found)),
        squeeze=False,
        layout="constrained",
    )
    shown = None
    for ax, (run, (rnd, matrix)) in zip(axes[:, 0], found, strict=True):
        shown = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        if len(matrix) <= 30:
            ax.set_xticks(range(len(matrix)))
            ax.set_yticks(range(len(matrix)))
        ax.set(xlabel="predicted class", ylabel="true class")
        ax.set_title(f"{run.label}: mean client, round {rnd}", fontsize=8)
    fig.colorbar(shown, ax=axes, label="share of the true class (mean over clients)", shrink=0.9)
    return _save(fig, out / "confusion.png")


# ---------------------------------------------------------------- table
def _pct(summary: dict[str, Any], key: str, which: str) -> str:
    value = summary.get("final", {}).get(key, {}).get(which)
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "n/a"


def summary_markdown(runs: list[Run], figures: list[Path], out: Path) -> str:
    keys = differing_keys([r.config for r in runs])
    lines = [
        "# fedkd report",
        "",
        f"{len(runs)} run(s)"
        + (
            "; labels are the config keys that differ across them: "
            + ", ".join(f"`{k}`" for k in keys)
            if keys
            else ""
        )
        + ".",
        "",
        "| run | strategy | status | rounds | local-test best | local-test last "
        "| global-test best | global-test last | KB/round | wall s | directory |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        s = run.summary
        kb = s.get("bytes_per_round", {}).get("total")
        wall = s.get("wall_time_s")
        cells = [
            run.label,
            str(s.get("strategy", run.config.get("strategy.name", ""))),
            str(s.get("status", "finished")),
            str(s.get("num_rounds", run.config.get("num_rounds", ""))),
            _pct(s, "local_test_acc", "best"),
            _pct(s, "local_test_acc", "last"),
            _pct(s, "global_test_acc", "best"),
            _pct(s, "global_test_acc", "last"),
            f"{kb / 1024:.1f}" if isinstance(kb, (int, float)) else "n/a",
            f"{wall:.1f}" if isinstance(wall, (int, float)) else "n/a",
            f"`{run.dir}`",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [
        "",
        "Accuracies in % (mean over clients; best = best round of that mean, last = final round); "
        "KB/round = bytes up + down per round over all clients.",
    ]
    records = [RunRecord(r.dir, r.config, r.summary) for r in runs]
    group_keys, rows = aggregate(records)
    if any(row["total"] > 1 for row in rows):
        lines += ["", "## Mean ± std over seeds", "", markdown_table(group_keys, rows).rstrip()]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in figures]
    return "\n".join(lines) + "\n"


def report(paths: list[str | Path], out: str | Path) -> list[Path]:
    """Write the figures and ``summary.md`` into ``out``; returns the written files."""
    runs = load_runs(paths)
    if not runs:
        raise FileNotFoundError("no finished run (summary.json) under " + " ".join(map(str, paths)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = [
        figure_accuracy(runs, out),
        figure_clients(runs, out),
        figure_bytes(runs, out),
    ]
    optional = (figure_epsilon(runs, out), figure_fusion(runs, out), figure_confusion(runs, out))
    figures += [p for p in optional if p]
    md = out / "summary.md"
    md.write_text(summary_markdown(runs, figures, out), encoding="utf-8")
    return [*figures, md]


def default_out(paths: list[str]) -> Path:
    if len(paths) == 1:
        return Path(paths[0]) / "report"
    return Path("outputs") / "report" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="fedkd-report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run or sweep directories")
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default RUN_DIR/report for one directory, else outputs/report/<time>)",
    )
    args = parser.parse_args(argv)
    out = args.out or default_out(args.runs)
    try:
        written = report(args.runs, out)
    except FileNotFoundError as err:
        print(f"fedkd-report: error: {err}", file=sys.stderr)
        sys.exit(1)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
