"""``fedkd-report RUN_DIR... [--out DIR]``: figures and a Markdown table from finished runs.

Reads each run's ``summary.json``, ``metrics.jsonl`` and ``config.yaml`` (a
sweep root such as ``multirun/<date>/<time>`` stands for all of its jobs) and
writes figures (matplotlib, Agg; ``--format png|pdf|svg``, ``--dpi`` for PNG) and
``summary.md`` into ``--out``:

- ``accuracy.png``: mean accuracy per round (local and global test); runs that differ only
  in ``seed`` form a method: one line per method, band = ± std over seeds; otherwise one
  line per run, band = ± std across clients
- ``clients.png``: per-client accuracy heatmap (clients x rounds) per run
- ``accuracy_vs_bytes.png``: mean accuracy against cumulative traffic (up + down, all clients)
- ``epsilon.png``: accuracy against the privacy budget (only if the runs record ``epsilon``)
- ``fusion_weights.png``: KnFu fusion weights, first and last round (only for runs that have them)
- ``confusion.png``: the mean client's confusion matrix on the global test set, last recorded
  round, one panel per method (only for runs with a ``confusion.json``); drawn by
  ``fedkd.plots``, as TensorBoard's confusion and fusion-weight images

Several runs are overlaid and labelled by the config keys whose values differ
across them (e.g. ``strategy.name=fd seed=1``).

    fedkd-report outputs/<date>/<time>
    fedkd-report outputs/run-a outputs/run-b --out reports/a-vs-b
    fedkd-report multirun/<date>/<time>            # every job of a sweep
    fedkd-report multirun/<date>/<time> --format pdf
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fedkd.plots import (
    CONFUSION_SCALE,
    FUSION_SCALE,
    draw_confusion,
    draw_fusion_weights,
    pyplot,
)
from simulations import cli
from simulations.sweep import (
    RunRecord,
    aggregate,
    differing_keys,
    find_runs,
    label,
    load_run,
    markdown_table,
)

DPI = 200  # --dpi: raster resolution (PNG); PDF and SVG are vector
FORMATS = ("png", "pdf", "svg")
ACCURACIES = (("local_test_acc", "local test"), ("global_test_acc", "global test"))
WIDTH = 11.0  # inches; heights are multiples of 0.25 in so pixel sizes are exact
FIGURES = ("accuracy", "clients", "accuracy_vs_bytes", "epsilon", "fusion_weights", "confusion")
GRID_COLUMNS = 3  # confusion panels per row


def grid(panels: int) -> tuple[int, int]:
    """(rows, columns) of a grid of ``panels`` square panels."""
    cols = max(1, min(GRID_COLUMNS, panels))
    return -(-panels // cols), cols


def figure_inches(name: str, rows: int = 1) -> tuple[float, float]:
    """Figure size of ``name`` with ``rows`` panel rows (one per run where it applies;
    for ``confusion``, ``rows`` is the number of panels, laid out on a grid)."""
    if name in ("accuracy", "accuracy_vs_bytes", "epsilon"):
        return WIDTH, 4.5
    if name == "clients":
        return WIDTH, 0.5 + 2.75 * rows
    if name == "fusion_weights":
        return 10.0, 0.5 + 4.5 * rows
    if name == "confusion":
        grid_rows, cols = grid(rows)
        return 1.25 + 4.5 * cols, 0.5 + 4.5 * grid_rows
    raise KeyError(name)


def figure_pixels(name: str, rows: int = 1, dpi: int = DPI) -> tuple[int, int]:
    """(width, height) in pixels of the PNG written for ``name``."""
    w, h = figure_inches(name, rows)
    return int(w * dpi), int(h * dpi)


@dataclass
class Output:
    """Where and how figures are written: folder, ``png``/``pdf``/``svg``, raster dpi."""

    dir: Path
    format: str = "png"
    dpi: int = DPI

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.{self.format}"


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


# ---------------------------------------------------------------- methods (runs over seeds)
@dataclass
class Method:
    """Runs that differ only in ``seed``: one line (mean ± std over seeds) in the figures."""

    label: str
    runs: list[Run]


def methods(runs: list[Run]) -> list[Method]:
    """Group runs by every differing config key except ``seed`` (first-appearance order)."""
    keys = [k for k in differing_keys([r.config for r in runs]) if k != "seed"]
    groups: dict[str, list[Run]] = {}
    for run in runs:  # "strategy=fd" for the group choice strategy.name=fd
        name = re.sub(r"(\w+)\.name=", r"\1=", label(run.config, keys))
        groups.setdefault(name or "all runs", []).append(run)
    return [Method(name, members) for name, members in groups.items()]


def _over_seeds(method: Method, key: str) -> tuple[list[int], list[float], list[float]]:
    """Rounds, mean over the method's runs of the clients' mean ``key``, and the std
    over runs (sample std; 0 for one run). Rounds missing in a run are left out."""
    by_round: dict[int, list[float]] = defaultdict(list)
    for run in method.runs:
        for r in run.rounds:
            if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]):
                by_round[int(r["round"])].append(float(r[key]))
    rounds = sorted(by_round)
    means = [float(np.mean(by_round[x])) for x in rounds]
    stds = [float(np.std(by_round[x], ddof=1)) if len(by_round[x]) > 1 else 0.0 for x in rounds]
    return rounds, means, stds


# ---------------------------------------------------------------- figures
def _pyplot():
    return pyplot()


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


def _save(fig, out: Output, name: str) -> Path:
    path = out.path(name)
    fig.savefig(path, dpi=out.dpi, metadata={"Date": None} if out.format == "svg" else None)
    _pyplot().close(fig)
    return path


def _band(ax, x, mean, std, color, text) -> None:
    ax.plot(x, mean, marker="o", markersize=3, color=color, label=text)
    ax.fill_between(
        x,
        [m - s for m, s in zip(mean, std, strict=True)],
        [m + s for m, s in zip(mean, std, strict=True)],
        color=color,
        alpha=0.18,
        linewidth=0,
    )


def _legend(fig, axes) -> None:
    """One legend for the figure, below the panels (never over a curve)."""
    handles, labels = axes[0].get_legend_handles_labels()
    if len(handles) > 1:  # one curve needs no legend
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3))


def figure_accuracy(runs: list[Run], out: Output) -> Path:
    """Accuracy per round: per method, mean ± std over seeds when a method has several
    runs; otherwise per run, mean ± std over its clients."""
    plt = _pyplot()
    groups = methods(runs)
    over_seeds = any(len(m.runs) > 1 for m in groups)
    fig, axes = plt.subplots(1, 2, figsize=figure_inches("accuracy"), layout="constrained")
    for ax, (key, title) in zip(axes, ACCURACIES, strict=True):
        if over_seeds:
            for method, color in zip(groups, _colors(len(groups)), strict=True):
                x, mean, std = _over_seeds(method, key)
                if x:
                    _band(ax, x, mean, std, color, f"{method.label} (n={len(method.runs)})")
            ax.set_title(f"{title}: mean over clients, ± std over seeds")
        else:
            for run, color in zip(runs, _colors(len(runs)), strict=True):
                rows = [r for r in run.rounds if isinstance(r.get(key), (int, float))]
                if rows:
                    std = [r.get(f"{key}_std") or 0.0 for r in rows]
                    _band(
                        ax,
                        [r["round"] for r in rows],
                        [r[key] for r in rows],
                        std,
                        color,
                        run.label,
                    )
            ax.set_title(f"{title}: mean ± std over clients")
        ax.set(xlabel="round", ylabel="accuracy", ylim=(0.0, 1.0))
        _integer_ticks(ax)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _save(fig, out, "accuracy")


def figure_clients(runs: list[Run], out: Output) -> Path:
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
            ax.set_title(f"{run.label}: {title}" if len(runs) > 1 else title)
    if shown is not None:
        fig.colorbar(shown, ax=axes, label="accuracy", shrink=0.9)
    return _save(fig, out, "clients")


def _cumulative_mb(run: Run) -> dict[int, float]:
    total, out = 0.0, {}
    for r in run.rounds:
        total += float(r.get("bytes_up") or 0.0) + float(r.get("bytes_down") or 0.0)
        out[int(r["round"])] = total / 1e6
    return out


def figure_bytes(runs: list[Run], out: Output) -> Path:
    """Mean accuracy against cumulative traffic (bytes up + down over all clients), always
    on a log axis; per method, mean ± std over seeds."""
    plt = _pyplot()
    groups = methods(runs)
    fig, axes = plt.subplots(1, 2, figsize=figure_inches("accuracy_vs_bytes"), layout="constrained")
    for ax, (key, title) in zip(axes, ACCURACIES, strict=True):
        for method, color in zip(groups, _colors(len(groups)), strict=True):
            traffic: dict[int, list[float]] = defaultdict(list)
            for run in method.runs:
                for rnd, mb in _cumulative_mb(run).items():
                    traffic[rnd].append(mb)
            x, mean, std = _over_seeds(method, key)
            points = [
                (float(np.mean(traffic[r])), m, s)
                for r, m, s in zip(x, mean, std, strict=True)
                if traffic.get(r) and np.mean(traffic[r]) > 0
            ]
            if points:
                mb, m, s = (list(v) for v in zip(*points, strict=True))
                name = (
                    method.label
                    if len(method.runs) == 1
                    else f"{method.label} (n={len(method.runs)})"
                )
                _band(ax, mb, m, s, color, name)
        ax.set_xscale("log")
        ax.set(
            title=f"{title} accuracy vs traffic",
            xlabel="cumulative MB, up + down, all clients (log)",
            ylabel="mean accuracy",
            ylim=(0.0, 1.0),
        )
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes)
    return _save(fig, out, "accuracy_vs_bytes")


def figure_epsilon(runs: list[Run], out: Output) -> Path | None:
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
        ax.set_ylim(0.0, 1.0)
    _legend(fig, axes)
    return _save(fig, out, "epsilon")


def figure_fusion(runs: list[Run], out: Output) -> Path | None:
    """KnFu fusion weights, first and last round, one row per run (the TensorBoard image's
    scale and axes: ``fedkd.plots.draw_fusion_weights``)."""
    fused = [(run, w) for run in runs if (w := run.fusion_weights())]
    if not fused:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(fused),
        2,
        figsize=figure_inches("fusion_weights", len(fused)),
        squeeze=False,
        layout="constrained",
    )
    shown = None
    for row, (run, weights) in zip(axes, fused, strict=True):
        rounds = sorted(weights)
        for ax, rnd in zip(row, (rounds[0], rounds[-1]), strict=True):
            prefix = f"{run.label}: " if len(fused) > 1 else ""
            shown = draw_fusion_weights(ax, weights[rnd], f"{prefix}round {rnd}")
    fig.colorbar(shown, ax=axes, label=FUSION_SCALE, shrink=0.9)
    return _save(fig, out, "fusion_weights")


def figure_confusion(runs: list[Run], out: Output) -> Path | None:
    """The mean client's global-test confusion matrix of the last recorded round, one square
    panel per method (averaged over its seeds), on a grid with one shared scale."""
    panels = []
    for method in methods(runs):
        found = [c for run in method.runs if (c := run.final_confusion())]
        if found:
            matrix = np.mean([np.asarray(m, dtype=float) for _, m in found], axis=0)
            rounds = sorted({r for r, _ in found})
            seeds = f", mean of {len(found)} runs" if len(found) > 1 else ""
            rnd = f"round {rounds[-1]}" if len(rounds) == 1 else f"rounds {rounds[0]}-{rounds[-1]}"
            title = f"{method.label}\n{rnd}{seeds}" if len(runs) > 1 else f"mean client, {rnd}"
            panels.append((title, matrix))
    if not panels:
        return None
    plt = _pyplot()
    grid_rows, cols = grid(len(panels))
    fig, axes = plt.subplots(
        grid_rows,
        cols,
        figsize=figure_inches("confusion", len(panels)),
        squeeze=False,
        layout="constrained",
    )
    shown = None
    for ax, (title, matrix) in zip(axes.flat, panels, strict=False):
        shown = draw_confusion(ax, matrix, title)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes, label=f"{CONFUSION_SCALE} (mean over clients)", shrink=0.8)
    return _save(fig, out, "confusion")


# ---------------------------------------------------------------- table
def _pct(summary: dict[str, Any], key: str, which: str) -> str:
    value = summary.get("final", {}).get(key, {}).get(which)
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "n/a"


def placement_markdown(runs: list[Run]) -> list[str]:
    """Where the clients ran (Ray nodes of a simulation) and the nodes lost on the way."""
    lines: list[str] = []
    for run in runs:
        nodes = (run.summary.get("placement") or {}).get("nodes") or {}
        lost = run.summary.get("node_loss") or []
        if len(nodes) < 2 and not lost:
            continue  # one machine, nothing lost: nothing to say
        lines += ["", f"## Placement: {run.label}", "", "| Ray node | IP | clients | messages |"]
        lines.append("|---|---|---|---|")
        for node, row in nodes.items():
            lines.append(
                f"| `{node[:12]}` | {row['ip']} | {len(row['clients'])} | {row['messages']} |"
            )
        for row in lost:
            node = row.get("node_id") or "unknown"
            lines.append(
                f"\nRound {row['round']}: node `{node[:12]}` ({row.get('node_ip')}) lost, clients "
                f"{', '.join(map(str, row['clients']))}, action {row['action']}"
                + (
                    f", no reply: {', '.join(map(str, row['no_reply']))}"
                    if row.get("no_reply")
                    else ""
                )
                + "."
            )
    return lines


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
        "| run | strategy | status | rounds | local-test last "
        "| global-test last | KB/round | wall s | directory |",
        "|---|---|---|---|---|---|---|---|---|",
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
            _pct(s, "local_test_acc", "last"),
            _pct(s, "global_test_acc", "last"),
            f"{kb / 1024:.1f}" if isinstance(kb, (int, float)) else "n/a",
            f"{wall:.1f}" if isinstance(wall, (int, float)) else "n/a",
            f"`{run.dir}`",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [
        "",
        "Accuracies in % (mean over clients, final round; no round is selected on the test set); "
        "KB/round = bytes up + down per round over all clients.",
    ]
    lines += placement_markdown(runs)
    records = [RunRecord(r.dir, r.config, r.summary) for r in runs]
    group_keys, rows = aggregate(records)
    if any(row["total"] > 1 for row in rows):
        lines += ["", "## Mean ± std over seeds", "", markdown_table(group_keys, rows).rstrip()]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in figures]
    return "\n".join(lines) + "\n"


def report(
    paths: list[str | Path], out: str | Path, fmt: str = "png", dpi: int = DPI
) -> list[Path]:
    """Write the figures (``fmt``: png, pdf or svg) and ``summary.md`` into ``out``;
    returns the written files."""
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    if not 20 <= dpi <= 1200:
        raise ValueError(f"--dpi {dpi}: use 20 to 1200 (300 for print)")
    runs = load_runs(paths)
    if not runs:
        raise FileNotFoundError("no finished run (summary.json) under " + " ".join(map(str, paths)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dest = Output(out, fmt, dpi)
    figures = [
        figure_accuracy(runs, dest),
        figure_clients(runs, dest),
        figure_bytes(runs, dest),
    ]
    optional = (figure_epsilon(runs, dest), figure_fusion(runs, dest), figure_confusion(runs, dest))
    figures += [p for p in optional if p]
    md = out / "summary.md"
    md.write_text(summary_markdown(runs, figures, out), encoding="utf-8")
    return [*figures, md]


def default_out(paths: list[str]) -> Path:
    if len(paths) == 1:
        return Path(paths[0]) / "report"
    return Path("outputs") / "report" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("fedkd-report", __doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run or sweep directories")
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default RUN_DIR/report for one directory, else outputs/report/<time>)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="png",
        help="figure file format (pdf and svg are vector; default png)",
    )
    parser.add_argument(
        "--dpi", type=int, default=DPI, help=f"PNG resolution in dots per inch (default {DPI})"
    )
    args = parser.parse_args(argv)
    out = args.out or default_out(args.runs)
    try:
        written = report(args.runs, out, args.format, args.dpi)
    except (FileNotFoundError, ValueError) as err:
        cli.fail("fedkd-report", err)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
