"""Everything a resumed run will do with its checkpoint, tried before Ray starts.

``server.checkpoint.load_server_checkpoint`` reads and checks the file; this module
then builds the strategy and feeds it the checkpoint's state, and walks the
recorder's state and the random-number states the same way ``run_server`` and
``RunRecorder`` will, so a damaged or foreign state is one ``CheckpointError``
line instead of a traceback from the ServerApp once the simulation is up. Nothing
is written: the recorder's files are left for ``RunRecorder`` to truncate.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedkd.errors import CheckpointError
from server.checkpoint import set_rng_state
from server.strategies import STRATEGIES, RunInfo


def _check_recorder(state: Mapping[str, Any]) -> None:
    """The conversions ``RunRecorder._restore`` makes, without touching the run's files."""
    for rnd, table in state["pending"].items():
        int(rnd)
        for cid, values in table.items():
            int(cid)
            dict(values)
    for key in ("server", "server_extra"):
        for rnd, values in state[key].items():
            int(rnd)
            dict(values)
    list(state["rounds"])
    for cid, history in state["clients"].items():
        int(cid)
        list(history)
    {int(r) for r in state["written"]}
    {int(r): v for r, v in state["confusion"].items()}
    int(state["logged"])
    float(state["elapsed_s"])
    int(state["jsonl_bytes"])


def check_resume(info: RunInfo, tree: Mapping[str, Any]) -> None:
    """CheckpointError (one line) if the checkpoint's state cannot be restored into this run."""
    where = f"resume: the checkpoint of round {tree.get('round')!r}"
    name = info.cfg["strategy"]["name"]
    if tree.get("strategy_name") != name:
        raise CheckpointError(
            f"{where} is of strategy {tree.get('strategy_name')!r}, the run's is {name!r}"
        )
    rng = tree.get("rng")
    if isinstance(rng, Mapping) and "torch" in rng:  # saved by a server that had loaded torch
        import torch  # noqa: F401  (its state is saved below and restored after the trial)
    torch = sys.modules.get("torch")
    saved = (
        random.getstate(),
        np.random.get_state(),
        None if torch is None else torch.get_rng_state(),
    )
    try:
        strategy = STRATEGIES.get(name)(info, None, None)
        strategy.load_state_dict(tree["strategy"])
        _check_recorder(tree["recorder"])
        set_rng_state(tree["rng"])
    except CheckpointError:
        raise
    except Exception as err:  # any layer of a foreign or damaged state: one line
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise CheckpointError(f"{where} does not fit this run ({detail})") from None
    finally:  # run_server restores them itself
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        if saved[2] is not None:
            torch.set_rng_state(saved[2])
