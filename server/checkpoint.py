"""Checkpoints and resume: the server's side.

Every ``checkpoint.every`` rounds, after the round is recorded, the server

1. asks every client (a ``query.save_state`` message) to write its state (the
   personal model and whatever else its ClientApp keeps in ``context.state``)
   to ``<run_dir>/checkpoints/clients/client_<id>.r<round>.ckpt``. In the
   simulation all clients share the run's filesystem; in a real deployment
   each node writes the same path on its own disk and keeps it there;
2. once every client has answered, writes ``<run_dir>/checkpoints/server.ckpt``
   atomically: the round, the strategy's ``state_dict()`` (fused knowledge,
   counters), the global RNG states, the recorder's metrics so far and the
   config it belongs to. If a client did not save, or the write fails (a full
   disk), one error line is logged and the previous checkpoint stays the
   good one; the run goes on.

``fedkd-sim resume=<run_dir>`` reads ``<run_dir>/config.yaml`` and the
checkpoint, checks that they belong together and to this code, restores the
strategy, the recorder (``metrics.jsonl`` truncated to the checkpoint,
TensorBoard purged from the first round to redo) and every client's state
(``query.restore_state``), and goes on with the next round. The server's random
streams are derived from (seed, round), the clients' batch order from (seed,
round, client), so the resumed run ends with the same metrics as a run that
was never stopped.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from fedkd import checkpoint as ckpt_io
from fedkd.checkpoint import client_file
from fedkd.errors import CheckpointError, ConfigError
from fedkd.schema import lookup
from server.options import check_checkpoint_config  # noqa: F401  (re-exported)

log = logging.getLogger("fedkd")

FORMAT = 1
FOLDER = "checkpoints"
SERVER_FILE = "server.ckpt"
# config keys a resumed run may change: they do not change what is computed (a straggle's
# length and rounds only delay replies; which clients straggle is fixed by faults.slow's
# clients and fraction, which also shape the later kinds' seeded draw)
MAY_CHANGE = (
    "logging", "simulation", "checkpoint", "resume", "server.round_timeout",
    "faults.slow.seconds", "faults.slow.rounds",
)  # fmt: skip


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir).resolve() / FOLDER


def server_file(run_dir: str | Path) -> Path:
    return checkpoint_dir(run_dir) / SERVER_FILE


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in MAY_CHANGE)


def fingerprint(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The config a checkpoint belongs to: everything but the keys a resume may change."""

    def strip(node: Any, prefix: str) -> Any:
        if not isinstance(node, Mapping):
            return node
        return {
            k: strip(v, f"{prefix}{k}.") for k, v in node.items() if not _may_change(f"{prefix}{k}")
        }

    return strip(cfg, "")


def first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The dotted key of the first value that differs between two config trees."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{prefix}{key}"
            found = first_difference(a[key], b[key], f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else prefix.rstrip(".") or "(root)"


def _set(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def resume_config(
    composed: Mapping[str, Any], overrides: list[str], run_dir: str | Path
) -> dict[str, Any]:
    """The config of a run to resume: its ``config.yaml``, plus the command line's
    overrides of keys that may change (``MAY_CHANGE``); any other override that changes
    a value is refused with one line."""
    run_dir = Path(run_dir)
    saved_file = run_dir / "config.yaml"
    if not saved_file.is_file():
        raise CheckpointError(f"resume: {run_dir} has no config.yaml (not a fedkd run directory)")
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_file), resolve=True)
    except Exception as err:  # a damaged YAML file
        raise CheckpointError(f"resume: cannot read {saved_file}: {err}".splitlines()[0]) from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"resume: {saved_file} is not a config mapping")
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+")
        if key == "resume" or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        if override.startswith("~") or "@" in key or key.startswith("experiment"):
            raise ConfigError(
                f"resume: '{override}' is not allowed; a resumed run keeps its config"
            )
        new, old = lookup(composed, key), lookup(saved, key)
        if new == old:
            continue
        if not _may_change(key):
            raise ConfigError(
                f"resume: {key}={new!r} differs from the run's {old!r}; a resumed run keeps its "
                f"config (only {', '.join(k for k in MAY_CHANGE if k != 'resume')} may change)"
            )
        _set(saved, key, new)
    saved["resume"] = str(run_dir)
    return saved


# ---------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """The server process's global random states: python's, numpy's, and torch's if this
    process has loaded torch (a strategy that computes on the server imports it when it is
    looked up; a server that never loads torch never draws from it)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], np_state[1], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        state["torch"] = torch.get_rng_state().numpy().copy()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(i) for i in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    if "torch" in state:
        import torch

        torch.set_rng_state(torch.from_numpy(np.asarray(state["torch"], np.uint8)))


# ---------------------------------------------------------------- clients
SAVE = "query.save_state"
END = "'>"  # the tail Flower puts after a ClientApp's exception message
RESTORE = "query.restore_state"


def _exchange(
    grid, node_of: Mapping[int, int], message_type: str, spec: dict, timeout: float, poll: float
):
    """Send ``spec`` to every client; (client ids that answered well, first error or None).
    ``poll``: the longest pause between polls for the replies (``server.exchange``, not
    Flower's fixed 0.1 s: a checkpoint then costs its clients' time, not a poll's)."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from protocol import wire
    from server.exchange import send_and_receive

    client_of = {node: cid for cid, node in node_of.items()}
    messages = [
        Message(
            content=RecordDict({wire.CHECKPOINT: ConfigRecord(spec)}),
            dst_node_id=node,
            message_type=message_type,
        )
        for _, node in sorted(node_of.items())
    ]
    done, error = [], None
    for reply in send_and_receive(grid, messages, timeout, poll):
        cid = client_of.get(reply.metadata.src_node_id, -1)
        if reply.has_error():
            reason = " ".join(reply.error.reason.rsplit("Message: ", 1)[-1].split())
            error = error or f"client {cid}: {reason.removesuffix(END)}"
        else:
            done.append(cid)
    missing = sorted(set(node_of) - set(done))
    if missing and error is None:
        error = f"no answer within {timeout:g}s from client(s) {missing}"
    return sorted(done), error


def save_clients(
    grid, node_of, folder: Path, server_round: int, keep: int | None, timeout: float, poll: float
):
    """Ask every client to save its state for ``server_round`` (keeping only that round's
    and ``keep``'s files); returns the error or None."""
    spec = {"dir": str(folder), "round": server_round, "keep": -1 if keep is None else keep}
    _, error = _exchange(grid, node_of, SAVE, spec, timeout, poll)
    return error


def discard_round(folder: Path, clients: list[int], server_round: int) -> list[int]:
    """Remove the client files of a checkpoint that was not completed (some clients saved,
    another did not), so a checkpoint is complete or absent: the ids whose file was removed.

    In a simulation every client writes to the run's folder; in a deployment each node
    keeps its files on its own disk, where a resume never reads a round without a server
    checkpoint."""
    removed = []
    for cid in clients:
        path = client_file(folder, cid, server_round)
        if path.is_file():
            path.unlink()
            removed.append(cid)
    return removed


def restore_clients(
    grid, node_of, folder: Path, server_round: int, timeout: float, poll: float
) -> None:
    """Every client loads its state of ``server_round``; CheckpointError if one cannot."""
    spec = {"dir": str(folder), "round": server_round}
    _, error = _exchange(grid, node_of, RESTORE, spec, timeout, poll)
    if error is not None:
        raise CheckpointError(f"resume: a client could not restore its state: {error}")


# ---------------------------------------------------------------- the server checkpoint
class Checkpointer:
    """Writes the server's checkpoints of one run; knows the last good one."""

    def __init__(self, run_dir: str | Path, cfg: Mapping[str, Any], last_round: int | None = None):
        self.folder = checkpoint_dir(run_dir)
        self.clients_folder = self.folder / "clients"
        self.path = self.folder / SERVER_FILE
        self.every = int(cfg["checkpoint"]["every"] or 0)  # null/0: off
        self.cfg = cfg
        self.poll = float(cfg["server"]["poll_interval"])  # between polls for the replies
        self.last_round = last_round  # round of the last complete checkpoint

    def due(self, server_round: int) -> bool:
        return self.every > 0 and server_round % self.every == 0

    def save(self, grid, strategy: Any, server_round: int, timeout: float) -> bool:
        """Clients save their state, then the server writes the strategy's and the
        recorder's (atomically). Any failure is one error line and leaves the previous
        checkpoint the good one (no client file of the failed round stays)."""
        keep, node_of = self.last_round, strategy.node_of
        error = save_clients(
            grid, node_of, self.clients_folder, server_round, keep, timeout, self.poll
        )
        if error is not None:
            discard_round(self.clients_folder, sorted(node_of), server_round)
            log.error(
                "checkpoint of round %d not written: %s; the last good checkpoint is %s",
                server_round,
                error,
                f"round {keep}" if keep else "none",
            )
            return False
        recorder = strategy.recorder
        state = {
            "strategy_name": strategy.name,
            "strategy": strategy.state_dict(),
            "recorder": None if recorder is None else recorder.state_dict(),
            "rng": rng_state(),
        }
        return self.write(server_round, state, sorted(node_of))

    def restore(self, grid, node_of: Mapping[int, int], server_round: int, timeout: float):
        """Every client loads its state of ``server_round`` (the server's is loaded by
        the launcher); CheckpointError if one cannot."""
        restore_clients(grid, node_of, self.clients_folder, server_round, timeout, self.poll)
        log.info("resumed from the checkpoint of round %d", server_round)

    def write(self, server_round: int, state: dict[str, Any], clients: list[int]) -> bool:
        """Write the checkpoint of ``server_round``; False (and one error line) if it failed."""
        tree = {
            "format": FORMAT,
            "round": server_round,
            "created": time.time(),
            "config": fingerprint(self.cfg),
            "clients": clients,
            **state,
        }
        try:
            size = ckpt_io.save(self.path, tree)
        except OSError as err:
            log.error(
                "checkpoint of round %d not written (%s); the last good checkpoint is %s",
                server_round,
                " ".join(str(err).split()),
                f"round {self.last_round}" if self.last_round else "none",
            )
            return False
        self.last_round = server_round
        log.info("checkpoint of round %d written (%d bytes): %s", server_round, size, self.path)
        return True


def load_server_checkpoint(run_dir: str | Path, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint to resume ``run_dir`` from, checked against ``cfg`` and its client
    files (before Ray starts); CheckpointError with one line otherwise."""
    run_dir = Path(run_dir)
    summary = run_dir / "summary.json"
    if summary.is_file() and '"status": "finished"' in summary.read_text(encoding="utf-8"):
        raise CheckpointError(f"resume: the run in {run_dir} has already finished")
    path = server_file(run_dir)
    if not path.is_file():
        raise CheckpointError(
            f"resume: no checkpoint in {path.parent} (the run stopped before its first "
            "checkpoint, or checkpoint.every was off); start it again"
        )
    tree = ckpt_io.load(path)
    if not isinstance(tree, dict) or tree.get("format") != FORMAT:
        got = tree.get("format") if isinstance(tree, dict) else type(tree).__name__
        raise CheckpointError(f"checkpoint {path} has format {got!r}; this fedkd reads {FORMAT}")
    for key in ("round", "config", "clients", "strategy", "recorder", "rng"):
        if key not in tree:
            raise CheckpointError(f"checkpoint {path} is incomplete: no '{key}'")
    differs = first_difference(tree["config"], fingerprint(cfg))
    if differs:
        raise CheckpointError(
            f"resume: {differs} is {lookup(cfg, differs)!r} in config.yaml but "
            f"{lookup(tree['config'], differs)!r} in the checkpoint of round {tree['round']}; "
            "the config changed since the checkpoint"
        )
    if int(tree["round"]) >= int(cfg["num_rounds"]) and int(cfg["num_rounds"]) > 0:
        log.info("checkpoint of the last round: only the final evaluation is left")
    folder = path.parent / "clients"
    for cid in tree["clients"]:
        ckpt_io.load(client_file(folder, int(cid), int(tree["round"])))  # exists and is intact
    return tree
