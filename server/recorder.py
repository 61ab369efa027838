"""Everything a run writes: TensorBoard, metrics.jsonl, summary.json, console.

Written by the server process only. :class:`RunRecorder` buffers the metrics by
round and, once a round is complete, fans it out to its outputs, one small class
each with the same interface (``write_round``, ``end_round``, ``finish``):
:class:`JsonlOutput` (``metrics.jsonl``), :class:`TensorBoardOutput`,
:class:`ConsoleOutput` (progress bar, round lines, the per-client table and
``table.txt``) and :class:`SummaryOutput` (``summary.json``, ``confusion.json``). Per-client scalars go to
``tensorboard/client_<id>/`` (same tags for every client, so TensorBoard
overlays them), cross-client statistics to ``tensorboard/server/`` under their
own tags (``server/tags.py`` is the one table of tag names), and the run's
hyperparameters (the flattened config) to the server run's HParams session.
The final per-client table also goes to ``table.txt`` and a line per round to the ``fedkd.rounds``
logger (Hydra's ``run.log``; the console only at ``logging.level=verbose``).
Global-test confusion counts, when the strategy collects them, go to
``confusion.json`` and the mean client's matrix to the server's TensorBoard
image ``confusion/mean_client``.

A client's reply may evaluate a model from an earlier round (FedAvg evaluates
the global model it receives), so metrics are keyed by the round of the model
they describe and a round is written once it is complete.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedkd.console import CONSOLE, EtaColumn, RoundClock, clock, phase
from server.tags import client_tag, mapping_tag, server_tag

EVAL_PREFIXES = ("local_test", "global_test")  # metrics that describe an evaluated model
NOT_SCALARS = ("num_local_test",)  # kept in metrics.jsonl, not plotted
REDRAWS_PER_SECOND = 1  # the progress bar's redraws between rounds (its clocks)
MAX_OPEN_WRITERS = 64  # TensorBoard writers kept open at once (a file and a thread each)
TIMINGS = ("client_time",)  # wall-clock: TensorBoard only, so metrics.jsonl is reproducible
ACCURACIES = (
    "local_test_acc",
    "global_test_acc",
)  # headline metrics: progress line, table, summary


def is_eval_key(key: str) -> bool:
    return key.startswith(EVAL_PREFIXES)


log = logging.getLogger("fedkd")
round_log = logging.getLogger("fedkd.rounds")  # a line per round: run.log; console when verbose

# logging.level: what the console shows (run.log, table.txt and TensorBoard are always written)
LEVELS = ("quiet", "normal", "verbose")


def console_options(logs: Mapping[str, Any]) -> dict[str, bool]:
    """``progress``/``table``/``verbose`` after applying ``logging.level``.

    ``quiet`` turns all three off (the console shows warnings and errors only),
    ``verbose`` turns ``verbose`` on (per-round lines, Flower/Ray INFO logs) and
    ``normal`` keeps the three keys as they are.
    """
    from fedkd.errors import ConfigError

    level = logs["level"]
    if level not in LEVELS:
        raise ConfigError(f"logging.level must be one of {', '.join(LEVELS)} (got {level!r})")
    options = {key: bool(logs[key]) for key in ("progress", "table", "verbose")}
    if level == "quiet":
        options = dict.fromkeys(options, False)
    elif level == "verbose":
        options["verbose"] = True
    return options


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"strategy.name": "fd", ...}``: nested mappings joined by dots, lists as compact JSON."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = json.dumps(value, separators=(",", ":"))
        else:
            flat[name] = value
    return flat


def hparams_of(cfg: Mapping[str, Any]) -> dict[str, float | int | str]:
    """The flattened config as HParams values (numbers and strings; ``logging.*`` left out)."""
    out: dict[str, float | int | str] = {}
    for key, value in flatten_config(cfg).items():
        if key.startswith("logging."):
            continue
        if isinstance(value, bool) or value is None:  # torch would store bools as 1.0/0.0
            out[key] = json.dumps(value)
        elif isinstance(value, (int, float)):
            out[key] = value
        else:
            out[key] = str(value)
    return out


def finite_or_null(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


class Output:
    """One destination of a run's records; every hook is optional."""

    def write_round(
        self, rnd: int, clients: dict[int, dict[str, Any]], row: dict[str, Any], extra: dict
    ) -> None:
        """A complete round: each client's values, the round's row and its JSON extras."""

    def end_round(self, server_round: int) -> None:
        """The server finished ``server_round`` (whatever rounds it completed)."""

    def finish(self, summary: dict[str, Any]) -> None:
        """The run is over: ``summary`` is what ``summary.json`` holds."""


class JsonlOutput(Output):
    """``metrics.jsonl``: one line per client and round (wall-clock timings left out, so the
    file is reproducible); a resumed run cuts it back to the checkpoint's length."""

    def __init__(self, path: Path, resume_bytes: int | None = None) -> None:
        self.path = path
        if resume_bytes is None:
            self.file = path.open("w", encoding="utf-8")
            return
        from fedkd.errors import CheckpointError

        if not path.is_file() or path.stat().st_size < resume_bytes:
            raise CheckpointError(
                f"resume: {path} is shorter than the checkpoint's {resume_bytes} bytes; "
                "it was changed"
            )
        with path.open("r+b") as f:  # rows of rounds after the checkpoint are written again
            f.truncate(resume_bytes)
        self.file = path.open("a", encoding="utf-8")

    def size(self) -> int:
        self.file.flush()
        return self.path.stat().st_size

    def write_round(self, rnd, clients, row, extra) -> None:
        for cid in sorted(clients):
            values = clients[cid]
            line = {
                "round": rnd,
                "client": cid,
                **{k: v for k, v in values.items() if k not in TIMINGS},
            }
            self.file.write(json.dumps(finite_or_null(line)) + "\n")
        self.file.flush()

    def finish(self, summary) -> None:
        self.file.close()


def load_tensorboard_writer() -> None:
    """Import torch's ``SummaryWriter`` (and torch with it, about 1.5 s of CPU) now.

    The writer is opened when round 1's events are written, before the round is shown; a
    launcher that loads torch for nothing else (``simulations.run``) calls this while its
    workers warm up, as it loaded torch before, instead of between round 1 and its line."""
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401


class TensorBoardOutput(Output):
    """Per-client scalars in ``tensorboard/client_<id>/``, the round's row and its number
    mappings in ``tensorboard/server/`` (``server/tags.py``), images, and the HParams
    session of the run's config."""

    def __init__(self, run_dir: Path, purge_step: int | None, run_config) -> None:
        self.run_dir = run_dir
        self.purge_step = purge_step
        self.run_config = run_config  # summary -> the run's config (for HParams)
        self._writers: dict[str, Any] = {}  # open writers, least recently used first
        self._opened: set[str] = set()  # writer folders opened in this process
        self.last_round = 0

    def writer(self, name: str):
        """The TensorBoard writer of ``name`` (``client_<id>``, ``server``).

        At most ``MAX_OPEN_WRITERS`` stay open (each holds a file and a thread): with
        thousands of clients the least recently used is closed and, when its client
        reports again, reopened on a new event file in the same folder, which
        TensorBoard reads as one run.
        """
        writer = self._writers.pop(name, None)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            # resumed: events from the first round not yet written on are hidden (TensorBoard's
            # purge), so the rounds written again appear once; only on a folder's first open
            purge = None if name in self._opened else self.purge_step
            self._opened.add(name)
            writer = SummaryWriter(
                log_dir=str(self.run_dir / "tensorboard" / name), purge_step=purge
            )
            while len(self._writers) >= MAX_OPEN_WRITERS:
                self._writers.pop(next(iter(self._writers))).close()
        self._writers[name] = writer  # most recently used last
        return writer

    def image(self, server_round: int, tag: str, draw: Any, size, scale: str) -> None:
        from fedkd.plots import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        shown = draw(ax, f"{tag}, round {server_round}")
        fig.colorbar(shown, ax=ax, label=scale, shrink=0.9)
        self.writer("server").add_figure(tag, fig, server_round, close=True)

    def scalars(self, name: str, values: list[tuple[str, float]], step: int) -> None:
        """Write ``values`` (tag, number) of writer ``name`` at ``step`` as one event.

        ``SummaryWriter.add_scalar`` writes one event per scalar, and TensorBoard's writer
        thread appends each event to the file on its own (an open and a write each: a
        round of 20 clients made some 300); one summary holding the round's scalars reads
        back the same (each value keeps its tag, step and float32 value)."""
        writer = self.writer(name)
        if not values:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in values])
        writer.file_writer.add_summary(summary, step)

    def write_round(self, rnd, clients, row, extra) -> None:
        for cid in sorted(clients):
            values = [
                (client_tag(key), value)
                for key, value in clients[cid].items()
                if isinstance(value, float) and key not in NOT_SCALARS and not math.isnan(value)
            ]
            self.scalars(f"client_{cid}", values, rnd)
        values = [
            (server_tag(key), value)
            for key, value in row.items()
            if key != "round" and isinstance(value, float) and not math.isnan(value)
        ]
        for key, value in extra.items():
            if isinstance(value, Mapping):
                for name, number in value.items():
                    if isinstance(number, (int, float)) and not isinstance(number, bool):
                        values.append((mapping_tag(key, name), float(number)))
        self.scalars("server", values, rnd)
        for w in self._writers.values():
            w.flush()

    def finish(self, summary) -> None:
        try:
            self._write_hparams(summary)
        except Exception as err:  # the HParams record must not lose the run's results
            log.warning("could not write TensorBoard hparams: %s", err)
        for writer in self._writers.values():
            writer.close()

    def _write_hparams(self, summary: dict[str, Any]) -> None:
        """HParams session in the ``server`` run: the flattened config; its metrics are the
        server's own scalars (their last values), so no run of one-point charts is added.

        No experiment summary is written: TensorBoard then builds the HParams
        table from every run's session (so runs of different strategies show
        the union of their keys) and takes as metrics the scalars of the
        session's run.
        """
        from torch.utils.tensorboard.summary import hparams

        _, session_start, session_end = hparams(hparams_of(self.run_config(summary)), {})
        writer = self.writer("server")
        step = max((r["round"] for r in summary["rounds"]), default=0)
        writer.file_writer.add_summary(session_start, step)
        writer.file_writer.add_summary(session_end, step)
        writer.flush()


class ConsoleOutput(Output):
    """The progress bar, a ``fedkd.rounds`` line per written round (elapsed and ETA), and
    at the end the per-client table, printed and written to ``table.txt``."""

    def __init__(
        self,
        run_dir: Path,
        num_rounds: int,
        console: Console,
        clock_: RoundClock,
        started: float,
        *,
        progress: bool,
        table: bool,
        done: int = 0,
    ) -> None:
        self.run_dir, self.num_rounds, self.console = run_dir, num_rounds, console
        self.clock, self.started, self.show_table = clock_, started, table
        self.rows: list[dict[str, Any]] = []  # written, not yet logged
        self.history: dict[int, list[int]] = defaultdict(list)  # client -> rounds answered
        self._progress: Progress | None = None
        if progress:
            self._progress = Progress(
                TextColumn("[bold]round {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                EtaColumn(clock_),
                console=console,
                transient=False,
                # each round redraws the bar as it ends (end_round); between rounds only the
                # clocks move: rich's own 10 redraws a second took ~3 % of the driver's CPU
                refresh_per_second=REDRAWS_PER_SECOND,
            )
            self._progress.start()
            self._task = self._progress.add_task("", total=num_rounds)
            if done:
                self._progress.update(self._task, completed=done)
        self.last: dict[str, Any] = {}

    def write_round(self, rnd, clients, row, extra) -> None:
        self.rows.append(row)
        self.last = row
        for cid in clients:
            self.history[cid].append(rnd)

    def end_round(self, server_round: int) -> None:
        if not self.clock.started:
            phase("first round", f"round {server_round} done (includes the workers' start-up)")
        self.clock.record(server_round)
        if self._progress is not None:
            last = self.last
            desc = " ".join(
                f"{k.replace('_test_acc', '')} {last[k]:.3f}"
                for k in ACCURACIES
                if k in last and not math.isnan(last[k])
            )
            self._progress.update(
                self._task, completed=server_round, description=desc, refresh=True
            )
        self._log_rows(server_round)

    def _log_rows(self, server_round: int) -> None:
        rows, self.rows = self.rows, []
        for row in rows:
            elapsed = time.perf_counter() - self.started
            accs = "  ".join(
                f"{k} {row[k]:.4f} ± {row.get(f'{k}_std', 0.0):.4f}"
                for k in ACCURACIES
                if k in row and not math.isnan(row[k])
            )
            round_log.info(
                "round %d/%d  %s  bytes up %.0f down %.0f  elapsed %s eta %s",
                row["round"],
                self.num_rounds,
                accs or "no accuracy",
                row.get("bytes_up", 0.0),
                row.get("bytes_down", 0.0),
                clock(elapsed),
                clock(self.clock.remaining()),
            )

    def stop(self) -> None:
        """Before the summary: the bar stops and the last rounds get their lines."""
        if self._progress is not None:
            self._progress.stop()
        self._log_rows(self.num_rounds)

    def finish(self, summary) -> None:
        table = self._table(summary)
        plain = Console(file=io.StringIO(), width=200, color_system=None, force_terminal=False)
        plain.print(table)
        plain.print(self._traffic_line(summary))
        (self.run_dir / "table.txt").write_text(plain.file.getvalue(), encoding="utf-8")
        if self.show_table:
            self.console.print(table)
            self.console.print(self._traffic_line(summary))

    def _table(self, summary: dict[str, Any]) -> Table:
        table = Table(title=f"per-client accuracy ({self.run_dir})")
        for col in ("client", "train n", "local-test last", "global-test last"):
            table.add_column(col, justify="right")
        dropped = summary.get("dropped_clients") or {}
        if dropped:  # their "last" values are from the last round they answered
            table.add_column("dropped")
        for cid, entry in summary["clients"].items():
            notes = [self._dropped_note(int(cid), dropped[cid])] if cid in dropped else []
            table.add_row(
                cid,
                str(int(entry["num_train"])) if entry.get("num_train") is not None else "",
                *(
                    f"{entry.get(k, float('nan')):.3f}"
                    for k in (
                        "local_test_acc_last",
                        "global_test_acc_last",
                    )
                ),
                *(notes or ([""] if dropped else [])),
            )
        for cid in sorted(set(dropped) - set(summary["clients"]), key=int):  # never answered
            table.add_row(cid, "", *["n/a"] * 2, self._dropped_note(int(cid), dropped[cid]))
        final = summary["final"]
        if final:
            table.add_section()
            cells = [f"{final[key]['last']:.3f}" if key in final else "n/a" for key in ACCURACIES]
            table.add_row("mean", "", *cells)
        return table

    def _dropped_note(self, cid: int, reasons: Mapping[str, Sequence[int]]) -> str:
        """``no_reply in rounds 3, 4; last from round 2`` for a client that dropped out."""
        parts = []
        for reason, rounds in sorted(reasons.items()):
            listed = ", ".join(str(r) for r in sorted(set(rounds)))
            parts.append(f"{reason} in round{'s' if len(set(rounds)) > 1 else ''} {listed}")
        answered = self.history.get(cid, [])
        last = f"; last from round {max(answered)}" if answered else "; never answered"
        return "; ".join(parts) + last

    def _traffic_line(self, summary: dict[str, Any]) -> str:
        return (
            f"bytes/round up {summary['bytes_per_round']['bytes_up']:.0f} down {summary['bytes_per_round']['bytes_down']:.0f}"
            f"  wall {summary['wall_time_s']:.1f}s  -> {self.run_dir}"
        )


class SummaryOutput(Output):
    """``confusion.json`` (when confusion counts were collected) and ``summary.json``."""

    def __init__(self, run_dir: Path, confusion: dict[int, dict[str, Any]]) -> None:
        self.run_dir = run_dir
        self.confusion = confusion  # eval round -> entry, shared with the recorder

    def finish(self, summary) -> None:
        if self.confusion:
            doc = {
                "about": "global test set; rows true class, columns predicted class; clients: "
                "counts; mean_client: mean over clients of the row-normalised counts (empty "
                "rows 0)",
                "rounds": [self.confusion[r] for r in sorted(self.confusion)],
            }
            (self.run_dir / "confusion.json").write_text(json.dumps(doc), encoding="utf-8")
        text = json.dumps(finite_or_null(summary), indent=2)
        (self.run_dir / "summary.json").write_text(text, encoding="utf-8")


class RunRecorder:
    """Buffers per-client metrics by round and fans complete rounds out to the outputs."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        num_rounds: int,
        tensorboard: bool = True,
        progress: bool = True,
        table: bool = True,
        console: Console | None = None,
        config: Mapping[str, Any] | None = None,
        attackers: Sequence[int] = (),
        resume: Mapping[str, Any] | None = None,
    ) -> None:
        """``config``: the run's config for the HParams record (default: ``run_dir/config.yaml``);
        ``attackers``: hostile clients, left out of the ``honest_*`` accuracies; ``resume``:
        a ``state_dict()`` from a checkpoint to continue from (``metrics.jsonl`` is cut back to
        it and TensorBoard purged from the first round not yet written)."""
        self.run_dir = Path(run_dir)
        self.attackers = {int(c) for c in attackers}
        self.config = config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.num_rounds = num_rounds
        self._pending: dict[int, dict[int, dict[str, float]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        self._server: dict[int, dict[str, float]] = defaultdict(dict)
        self._server_extra: dict[int, dict[str, Any]] = defaultdict(dict)  # JSON values
        self._rounds: list[dict[str, Any]] = []  # one row per written round
        self._clients: dict[int, list[dict[str, float]]] = defaultdict(list)
        self._written: set[int] = set()
        self._confusion: dict[int, dict[str, Any]] = {}  # eval round -> confusion.json entry
        self._start = time.perf_counter()
        if resume is not None:
            self._restore(resume)
        path = self.run_dir / "metrics.jsonl"
        self.jsonl = JsonlOutput(path, None if resume is None else int(resume["jsonl_bytes"]))
        purge = None if resume is None else max(self._written, default=0) + 1
        self.tensorboard = (
            TensorBoardOutput(self.run_dir, purge, self._run_config) if tensorboard else None
        )
        self.console = ConsoleOutput(
            self.run_dir,
            num_rounds,
            console or CONSOLE,  # log lines print above the bar
            RoundClock(num_rounds),  # ETA from the rounds after the first
            self._start,
            progress=progress,
            table=table,
            done=0 if resume is None else int(resume["round"]),
        )
        for cid, history in self._clients.items():  # resumed: what was written before
            self.console.history[cid] = [h["round"] for h in history if "round" in h]
        self.console.last = self._rounds[-1] if self._rounds else {}
        self.outputs: list[Output] = [
            self.jsonl,
            *([self.tensorboard] if self.tensorboard is not None else []),
            self.console,
            SummaryOutput(self.run_dir, self._confusion),
        ]

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything recorded so far, and how long ``metrics.jsonl`` is, for a checkpoint."""

        def plain(table: Mapping[int, Any]) -> dict[int, Any]:
            return {r: {c: dict(v) for c, v in t.items()} for r, t in table.items()}

        size = self.jsonl.size()
        return {
            "pending": plain(self._pending),
            "server": {r: dict(v) for r, v in self._server.items()},
            "server_extra": {r: dict(v) for r, v in self._server_extra.items()},
            "rounds": list(self._rounds),
            "clients": {c: list(h) for c, h in self._clients.items()},
            "written": sorted(self._written),
            "confusion": dict(self._confusion),
            "logged": len(self._rounds) - len(self.console.rows),
            "elapsed_s": time.perf_counter() - self._start,
            "jsonl_bytes": size,
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        for rnd, table in state["pending"].items():
            for cid, values in table.items():
                self._pending[int(rnd)][int(cid)].update(values)
        for rnd, values in state["server"].items():
            self._server[int(rnd)].update(values)
        for rnd, values in state["server_extra"].items():
            self._server_extra[int(rnd)].update(values)
        self._rounds = list(state["rounds"])
        for cid, history in state["clients"].items():
            self._clients[int(cid)] = list(history)
        self._written = {int(r) for r in state["written"]}
        self._confusion.update({int(r): v for r, v in state["confusion"].items()})
        self._start = time.perf_counter() - float(state["elapsed_s"])

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
        self, server_round: int, tag: str, draw: Any, size: tuple[float, float], scale: str
    ) -> None:
        """A figure in the server's TensorBoard images: ``draw(ax, title)`` draws it with a
        ``fedkd.plots`` helper (the same one ``fedkd-report`` uses) and returns the image;
        ``scale`` labels the colour bar."""
        if self.tensorboard is not None:
            self.tensorboard.image(server_round, tag, draw, size, scale)

    def fusion_weights(self, server_round: int, weights: np.ndarray) -> None:
        """KnFu's fusion weights of one round as the image ``fusion/weights``."""
        from fedkd.plots import FUSION_SCALE, draw_fusion_weights

        side = 4.0 + 0.25 * min(len(weights), 24)
        self.image(
            server_round,
            "fusion/weights",
            lambda ax, title: draw_fusion_weights(ax, weights, title),
            (side + 1.5, side),
            FUSION_SCALE,
        )

    def confusion(
        self, eval_round: int, counts: Mapping[int, np.ndarray], mean_client: np.ndarray
    ) -> None:
        """Global-test confusion counts per client and the mean client's matrix of one round.

        The mean client's matrix (rows: true class, row-normalised) becomes the
        image ``confusion/mean_client`` at step ``eval_round``; everything goes
        to ``confusion.json`` when the run finishes.
        """
        from fedkd.plots import CONFUSION_SCALE, draw_confusion

        self._confusion[eval_round] = {
            "round": eval_round,
            "clients": {str(cid): np.asarray(counts[cid]).tolist() for cid in sorted(counts)},
            "mean_client": np.round(mean_client, 6).tolist(),
        }
        side = 4.0 + 0.25 * min(len(mean_client), 24)
        self.image(
            eval_round,
            "confusion/mean_client",
            lambda ax, title: draw_confusion(ax, mean_client, title),
            (side + 1.5, side),
            f"{CONFUSION_SCALE} (mean over clients)",
        )

    def server(self, server_round: int, scalars: dict[str, float]) -> None:
        self._server[server_round].update({k: float(v) for k, v in scalars.items()})

    def server_extra(self, server_round: int, values: dict[str, Any]) -> None:
        """JSON values for the round's server row in summary.json (e.g. who participated).

        A mapping of numbers (``rejected_replies`` by reason) also becomes TensorBoard
        scalars ``<key>/<name>``.
        """
        self._server_extra[server_round].update(values)

    def end_round(self, server_round: int, complete_upto: int) -> None:
        """Write every round <= ``complete_upto`` that is still pending; advance progress."""
        for rnd in sorted(
            r
            for r in list(self._pending) + list(self._server) + list(self._server_extra)
            if r <= complete_upto
        ):
            if rnd not in self._written:
                self._write_round(rnd)
        for output in self.outputs:
            output.end_round(server_round)

    # ------------------------------------------------------------ output
    def _write_round(self, rnd: int) -> None:
        self._written.add(rnd)
        pending = self._pending.pop(rnd, {})
        clients = {cid: pending[cid] for cid in sorted(pending)}  # reply order never matters
        server = self._server.pop(rnd, {})
        extra = self._server_extra.pop(rnd, {})
        for cid in sorted(clients):
            self._clients[cid].append({"round": rnd, **clients[cid]})
        row = self._row(rnd, clients)
        row.update(server)
        row.update(extra)
        self._rounds.append(row)
        for output in self.outputs:
            output.write_round(rnd, clients, row, extra)

    def _row(self, rnd: int, clients: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """The round's row: accuracy statistics over clients (and over honest ones) and
        the bytes moved."""
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
        if self.attackers:  # the honest clients' mean accuracy
            for key in acc_keys:
                vals = [
                    c[key]
                    for cid, c in clients.items()
                    if cid not in self.attackers
                    and isinstance(c.get(key), float)
                    and not math.isnan(c[key])
                ]
                if vals:
                    row[f"honest_{key}"] = float(np.mean(vals))
        for key in ("bytes_up", "bytes_down"):
            row[key] = float(sum(c.get(key, 0.0) for c in clients.values()))
        return row

    def finish(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write everything still pending, then every output's end: summary.json,
        confusion.json, HParams, table.txt and the console table."""
        for rnd in sorted(set(self._pending) | set(self._server) | set(self._server_extra)):
            if rnd not in self._written:
                self._write_round(rnd)
        self.console.stop()
        summary = self._summary(extra or {})
        for output in self.outputs:
            output.finish(summary)
        return summary

    def _run_config(self, summary: Mapping[str, Any]) -> dict[str, Any]:
        if self.config is not None:
            return dict(self.config)
        path = self.run_dir / "config.yaml"
        if path.exists():
            from omegaconf import OmegaConf

            loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
            if isinstance(loaded, dict):
                return loaded
        # no config.yaml (``flwr run``): what the summary knows, under the config's key names
        names = {"strategy": "strategy.name", "dataset": "dataset.name"}
        keys = ("strategy", "dataset", "num_clients", "num_rounds", "seed")
        return {names.get(k, k): summary[k] for k in keys if k in summary}

    def _summary(self, extra: dict[str, Any]) -> dict[str, Any]:
        rounds = self._rounds
        final: dict[str, Any] = {}
        for key in sorted({k for r in rounds for k in r if k.endswith("_acc")}):
            series = [(r["round"], r[key]) for r in rounds if key in r]
            if series:  # the last round only: a "best" round would be chosen on the test set
                final[key] = {
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
