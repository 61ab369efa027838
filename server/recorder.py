"""Everything a run writes: TensorBoard, metrics.jsonl, summary.json, console.

Written by the server process only. Per-client scalars go to
``tensorboard/client_<id>/`` (same tag names for every client, so TensorBoard
overlays them) and cross-client statistics to ``tensorboard/server/``.

A client's reply may evaluate a model from an earlier round (FedAvg evaluates
the global model it receives), so metrics are keyed by the round of the model
they describe and a round is written once it is complete.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

EVAL_PREFIXES = ("local_test", "global_test")  # metrics that describe an evaluated model
NOT_SCALARS = ("num_local_test",)  # kept in metrics.jsonl, not plotted
TIMINGS = ("client_time",)  # wall-clock: TensorBoard only, so metrics.jsonl is reproducible
ACCURACIES = (
    "local_test_acc",
    "global_test_acc",
)  # headline metrics: progress line, table, summary


def is_eval_key(key: str) -> bool:
    return key.startswith(EVAL_PREFIXES)


log = logging.getLogger("fedkd")


def finite_or_null(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


class RunRecorder:
    """Collects per-client metrics by round and writes them out."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        num_rounds: int,
        tensorboard: bool = True,
        progress: bool = True,
        table: bool = True,
        console: Console | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.num_rounds = num_rounds
        self.console = console or Console(stderr=False)
        self.show_table = table
        self._pending: dict[int, dict[int, dict[str, float]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        self._server: dict[int, dict[str, float]] = defaultdict(dict)
        self._rounds: list[dict[str, Any]] = []  # one row per written round
        self._clients: dict[int, list[dict[str, float]]] = defaultdict(list)
        self._written: set[int] = set()
        self._start = time.perf_counter()
        self._jsonl = (self.run_dir / "metrics.jsonl").open("w", encoding="utf-8")
        self._writers: dict[str, Any] = {}
        self._tensorboard = tensorboard
        self._progress: Progress | None = None
        if progress:
            self._progress = Progress(
                TextColumn("[bold]round {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=num_rounds)

    # ------------------------------------------------------------ input
    def client(self, server_round: int, client_id: int, metrics: dict[str, float]) -> None:
        """Record one client's reply; evaluation keys go to the round they describe."""
        eval_round = int(metrics.get("eval_round", server_round))
        for key, value in metrics.items():
            if key in ("eval_round", "partition_id"):
                continue
            target = eval_round if is_eval_key(key) else server_round
            self._pending[target][client_id][key] = float(value)

    def client_extra(self, server_round: int, client_id: int, values: dict[str, Any]) -> None:
        """JSON values (e.g. a row of fusion weights) for this client's metrics.jsonl line."""
        self._pending[server_round][client_id].update(values)

    def image(
        self, server_round: int, tag: str, matrix: np.ndarray, xlabel: str = "", ylabel: str = ""
    ) -> None:
        """A heatmap of ``matrix`` in the server's TensorBoard images (e.g. fusion weights)."""
        if not self._tensorboard:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4))
        shown = ax.imshow(matrix, cmap="viridis", vmin=0.0)
        fig.colorbar(shown, ax=ax)
        ax.set(title=f"{tag} (round {server_round})", xlabel=xlabel, ylabel=ylabel)
        self._writer("server").add_figure(tag, fig, server_round, close=True)

    def server(self, server_round: int, scalars: dict[str, float]) -> None:
        self._server[server_round].update({k: float(v) for k, v in scalars.items()})

    def end_round(self, server_round: int, complete_upto: int) -> None:
        """Write every round <= ``complete_upto`` that is still pending; advance progress."""
        for rnd in sorted(
            r for r in list(self._pending) + list(self._server) if r <= complete_upto
        ):
            if rnd not in self._written:
                self._write_round(rnd)
        if self._progress is not None:
            last = self._rounds[-1] if self._rounds else {}
            desc = " ".join(
                f"{k.replace('_test_acc', '')} {last[k]:.3f}"
                for k in ACCURACIES
                if k in last and not math.isnan(last[k])
            )
            self._progress.update(self._task, completed=server_round, description=desc)

    # ------------------------------------------------------------ output
    def _writer(self, name: str):
        if name not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[name] = SummaryWriter(log_dir=str(self.run_dir / "tensorboard" / name))
        return self._writers[name]

    def _write_round(self, rnd: int) -> None:
        self._written.add(rnd)
        clients = self._pending.pop(rnd, {})
        server = self._server.pop(rnd, {})
        for cid in sorted(clients):
            values = clients[cid]
            line = {
                "round": rnd,
                "client": cid,
                **{k: v for k, v in values.items() if k not in TIMINGS},
            }
            self._jsonl.write(json.dumps(finite_or_null(line)) + "\n")
            self._clients[cid].append({"round": rnd, **values})
            if self._tensorboard:
                writer = self._writer(f"client_{cid}")
                for key, value in values.items():
                    if (
                        isinstance(value, float)
                        and key not in NOT_SCALARS
                        and not math.isnan(value)
                    ):
                        writer.add_scalar(key, value, rnd)
        row: dict[str, Any] = {"round": rnd, "num_clients": len(clients)}
        acc_keys = sorted({k for c in clients.values() for k in c if k.endswith("_acc")})
        for key in acc_keys:
            vals = np.array(
                [
                    c[key]
                    for c in clients.values()
                    if isinstance(c.get(key), float) and not math.isnan(c[key])
                ]
            )
            if len(vals):
                row.update(
                    {
                        key: float(vals.mean()),
                        f"{key}_std": float(vals.std()),
                        f"{key}_min": float(vals.min()),
                        f"{key}_max": float(vals.max()),
                    }
                )
        for key in ("bytes_up", "bytes_down"):
            row[key] = float(sum(c.get(key, 0.0) for c in clients.values()))
        row.update(server)
        self._rounds.append(row)
        self._jsonl.flush()
        if self._tensorboard:
            writer = self._writer("server")
            for key, value in row.items():
                if key != "round" and isinstance(value, float) and not math.isnan(value):
                    writer.add_scalar(
                        key.replace("_std", "/std").replace("_min", "/min").replace("_max", "/max"),
                        value,
                        rnd,
                    )
            for w in self._writers.values():
                w.flush()

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write everything still pending, summary.json and the console table."""
        for rnd in sorted(set(self._pending) | set(self._server)):
            if rnd not in self._written:
                self._write_round(rnd)
        if self._progress is not None:
            self._progress.stop()
        self._jsonl.close()
        for writer in self._writers.values():
            writer.close()
        summary = self._summary(extra or {})
        text = json.dumps(finite_or_null(summary), indent=2)
        (self.run_dir / "summary.json").write_text(text, encoding="utf-8")
        if self.show_table:
            self._print_table(summary)
        return summary

    def _summary(self, extra: dict[str, Any]) -> dict[str, Any]:
        rounds = self._rounds
        final: dict[str, Any] = {}
        for key in sorted({k for r in rounds for k in r if k.endswith("_acc")}):
            series = [(r["round"], r[key]) for r in rounds if key in r]
            if series:
                best_round, best = max(series, key=lambda t: t[1])
                final[key] = {
                    "best": best,
                    "best_round": best_round,
                    "last": series[-1][1],
                    "last_round": series[-1][0],
                }
        traffic = [r for r in rounds if r.get("bytes_up", 0) or r.get("bytes_down", 0)]
        per_round = {
            key: float(np.mean([r[key] for r in traffic])) if traffic else 0.0
            for key in ("bytes_up", "bytes_down")
        }
        per_round["total"] = per_round["bytes_up"] + per_round["bytes_down"]
        clients = {}
        for cid, history in sorted(self._clients.items()):
            entry: dict[str, Any] = {}
            for key in sorted({k for h in history for k in h if k.endswith("_acc")}):
                vals = [h[key] for h in history if key in h and not math.isnan(h[key])]
                if vals:
                    entry[f"{key}_last"] = vals[-1]
                    entry[f"{key}_best"] = max(vals)
            entry["num_train"] = next((h["num_train"] for h in history if "num_train" in h), None)
            clients[str(cid)] = entry
        return {
            **extra,
            "wall_time_s": time.perf_counter() - self._start,
            "final": final,
            "bytes_per_round": per_round,
            "rounds": rounds,
            "clients": clients,
        }

    def _print_table(self, summary: dict[str, Any]) -> None:
        table = Table(title=f"per-client accuracy ({self.run_dir})")
        for col in ("client", "train n", "local last", "local best", "global last", "global best"):
            table.add_column(col, justify="right")
        for cid, entry in summary["clients"].items():
            table.add_row(
                cid,
                str(int(entry["num_train"])) if entry.get("num_train") is not None else "",
                *(
                    f"{entry.get(k, float('nan')):.3f}"
                    for k in (
                        "local_test_acc_last",
                        "local_test_acc_best",
                        "global_test_acc_last",
                        "global_test_acc_best",
                    )
                ),
            )
        final = summary["final"]
        if final:
            table.add_section()
            cells = [
                f"{final[key][which]:.3f}" if key in final else "n/a"
                for key in ACCURACIES
                for which in ("last", "best")
            ]
            table.add_row("mean", "", *cells)
        self.console.print(table)
        self.console.print(
            f"bytes/round up {summary['bytes_per_round']['bytes_up']:.0f} down {summary['bytes_per_round']['bytes_down']:.0f}"
            f"  wall {summary['wall_time_s']:.1f}s  -> {self.run_dir}"
        )
