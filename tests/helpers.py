"""Helpers shared by the test packages: subprocesses a test owns, and a small RunInfo.

Subprocesses are stopped by process id: ``run_fedkd_sim`` runs ``python -m simulations.run``; ``stop_tree``,
``process_tree`` and ``alive`` (from ``simulations.proctree``, shared with the
``fedkd-deploy`` launcher) stop a Flower process tree, including the
SuperExec processes Flower detaches into their own session. ``info_for`` builds the
RunInfo a strategy unit test needs: digits-shaped inputs, few classes and public samples.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.app.metadata import Metadata

from fedkd.config import compose
from fedkd.knowledge import ClassLogits, ModelWeights, Prototypes, PublicLogits, Votes
from protocol import wire
from server.recorder import RunRecorder
from server.roster import Roster
from server.strategies import STRATEGIES, RunInfo
from simulations.proctree import alive, marked, process_tree, stop_tree

__all__ = [
    "NODES",
    "ROOT",
    "SimSession",
    "alive",
    "default_cfg",
    "filled",
    "good_fd",
    "info_for",
    "kill_group",
    "make",
    "marked",
    "metadata",
    "process_tree",
    "reply",
    "run_fedkd_sim",
    "section",
    "start_fedkd_sim",
    "stop_tree",
    "uploads_for",
]

ROOT = Path(__file__).resolve().parent.parent


def python_stdout(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """What ``python -c CODE`` prints, run from the checkout in a fresh interpreter (what a
    module imports shows only there); its exit status must be 0."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def run_fedkd_sim(
    args: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``fedkd-sim ARGS`` from the checkout; on timeout kill its whole process group."""
    cmd = [sys.executable, "-m", "simulations.run", *args]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


class SimSession:
    """``fedkd-sim`` runs in one Ray session that stays up between runs (a
    ``simulations.runner.Runner``), one run at a time.

    Each run is still a whole ``fedkd-sim`` run with its own run directory; a shared
    session computes what separate processes compute (``test_session.py`` checks it).
    Only imports, Ray's start and the workers' start-up are paid once. A run still
    going after ``timeout`` seconds (a hang guard) has its process tree stopped by
    process id and fails with one line; the next run starts a new session.
    """

    def __init__(self) -> None:
        from simulations.runner import Runner

        self.runner = Runner()
        self.lock = threading.Lock()

    def run(self, args: list[str], timeout: float = 600):
        """``fedkd-sim ARGS`` in the session: a ``Result`` (status, last line printed)."""
        with self.lock:
            stopped = threading.Event()
            guard = threading.Timer(timeout, self._stop_child, args=(stopped,))
            guard.start()
            try:
                result = self.runner.run(args)
            finally:
                guard.cancel()
            if stopped.is_set():
                result.last_line = f"hang guard: the run took over {timeout:.0f}s and was stopped"
            return result

    @staticmethod
    def _stop_child(stopped: threading.Event) -> None:
        import multiprocessing

        stopped.set()
        children = [p.pid for p in multiprocessing.active_children() if p.name == "fedkd-runner"]
        stop_tree(children)

    def close(self) -> None:
        """Stop Ray and the session's process."""
        with self.lock:
            self.runner.close()


def start_fedkd_sim(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start ``fedkd-sim ARGS`` in its own process group (output to ``log_path``)."""
    log = open(log_path, "w")  # noqa: SIM115 (closed by the caller's process ending)
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.run", *args],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> int:
    """SIGKILL the process group ``start_fedkd_sim`` started; its return code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


@functools.cache
def _composed(overrides: tuple[str, ...]) -> dict:
    return compose(list(overrides))


def default_cfg(*overrides: str, **values) -> dict:
    """The composed config of ``configs/`` with Hydra ``overrides``, top-level keys replaced
    by ``values``: a fresh copy (compositions are cached)."""
    return {**copy.deepcopy(_composed(tuple(overrides))), **values}


def section(group: str, option: str | None = None, **values) -> dict:
    """The ``group`` section of the composed config (``group=option``), ``values`` replacing
    its keys: what a test passes to a loader, partitioner or parser of that section."""
    cfg = default_cfg(*([f"{group}={option}"] if option else []))
    return {**cfg[group], **values}


def filled(group: str, values: dict) -> dict:
    """``values`` over the composed ``group`` section of option ``values["name"]`` (a name
    that is no option of the group, e.g. a misspelt one under test: ``values`` as given)."""
    from fedkd.schema import groups

    if values.get("name") not in groups().get(group, ()):
        return dict(values)
    return section(group, values["name"], **values)


def info_for(
    *overrides: str, num_clients: int = 3, num_classes: int = 2, num_public: int = 4
) -> RunInfo:
    """The RunInfo a strategy gets for the composed config ``overrides`` (no data loaded)."""
    cfg = compose([f"num_clients={num_clients}", *overrides])
    return RunInfo(
        num_clients=num_clients,
        num_classes=num_classes,
        num_public=num_public,
        input_shape=(1, 8, 8),
        feature_dim=int(cfg["model"]["feature_dim"]),
        cfg=cfg,
        cfg_json=json.dumps(cfg),
    )


def uploads_for(strategy) -> dict:
    """Three clients' seeded uploads of the kind ``strategy`` fuses (round 1)."""
    rng = np.random.default_rng(0)
    kind = strategy.upload_kind
    if kind == "class_logits":
        return {
            c: ClassLogits(rng.normal(size=(2, 2)).astype(np.float32), np.array([2, 1]))
            for c in range(3)
        }
    if kind == "prototypes":
        d = strategy.info.feature_dim
        return {
            c: Prototypes(rng.normal(size=(2, d)).astype(np.float32), np.array([1, 3]))
            for c in range(3)
        }
    if kind == "public_logits":
        idx = strategy.indices_for(1)
        probs = rng.dirichlet(np.ones(2), size=len(idx)).astype(np.float32)
        return {c: PublicLogits(idx, probs, strategy.upload_space) for c in range(3)}
    if kind == "votes":
        idx = strategy.indices_for(1)
        return {c: Votes(idx, rng.integers(0, 2, size=(len(idx), 1))) for c in range(3)}
    weights = strategy.weights[strategy.group_of[0]]
    return {
        c: ModelWeights({k: (v + 0.01 * c).astype(v.dtype) for k, v in weights.items()})
        for c in range(3)
    }


# ---------------------------------------------------------------- replies a server receives
NODES = {0: 10, 1: 11, 2: 12}  # client id -> node id


def make(name: str, tmp_path=None, *overrides: str):
    """A 4-round ``name`` strategy for three clients on nodes ``NODES``, recording to ``tmp_path``."""
    info = info_for("num_rounds=4", f"strategy={name}", *overrides)
    rec = None
    if tmp_path is not None:
        rec = RunRecorder(tmp_path, num_rounds=4, progress=False, table=False, tensorboard=False)
    strategy = STRATEGIES.get(name)(info, rec, Roster(dict(NODES), 3))
    # every client was sent this round's message
    strategy.current.bytes_down = dict.fromkeys(NODES, 0)
    return strategy


def metadata(cid: int) -> Metadata:
    """The metadata of client ``cid``'s TRAIN reply as it arrives from its SuperNode."""
    return Metadata(
        run_id=1,
        message_id=f"reply-{cid}",
        src_node_id=NODES[cid],
        dst_node_id=0,
        reply_to_message_id=f"ins-{cid}",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=MessageType.TRAIN,
    )


def reply(cid: int, payload=None, *, metrics: dict | None = None, arrays=None, meta=None):
    """A client's reply: metrics plus a payload, or raw knowledge arrays/meta records."""
    content = RecordDict()
    if metrics is not False:
        content[wire.METRICS] = MetricRecord(metrics or {"num_train": 5, "local_test_acc": 0.5})
    if payload is not None:
        wire.put_payload(content, payload)
    if arrays is not None:
        content[wire.KNOWLEDGE] = wire.arrays_to_record(arrays)
    if meta is not None:
        content[wire.KNOWLEDGE_META] = ConfigRecord(meta)
    return Message(content=content, metadata=metadata(cid))


def good_fd(value: float = 1.0) -> ClassLogits:
    """A valid ``fd`` upload (2 classes) filled with ``value``."""
    return ClassLogits(np.full((2, 2), value, np.float32), np.array([3, 2]))
