"""Checkpoint files: a tree of arrays, payloads and scalars in one zip, written atomically.

A checkpoint is a zip archive holding ``state.json`` (the tree, with arrays
replaced by references) and one ``.npy`` member per array, read back with
``allow_pickle=False``: a checkpoint never executes code, and the zip's CRCs
catch a damaged file. What the tree may hold: ``None``, bools, ints, floats
(NaN and Inf included), strings, lists, tuples, dicts (any int or str keys),
numpy arrays and scalars, torch tensors (stored as numpy) and
:mod:`fedkd.knowledge` payloads.

:func:`write_atomic` writes a temporary file beside the target, flushes and
fsyncs it, then ``os.replace``-s it over the target (and fsyncs the folder):
the previous file stays complete until the new one is, whatever happens in
between (a kill, a full disk).
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fedkd.errors import CheckpointError, FedkdError
from fedkd.knowledge import Payload, decode
from fedkd.npy import load_npy

STATE = "state.json"
TMP_PREFIX = ".tmp-"


# ---------------------------------------------------------------- tree <-> JSON + arrays
def pack(tree: Any) -> tuple[Any, dict[str, np.ndarray]]:
    """``(JSON document, arrays)`` for a tree; arrays are referenced as ``{"$array": name}``."""
    arrays: dict[str, np.ndarray] = {}

    def enc(value: Any) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
            return int(value)
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, (float, np.floating)):
            value = float(value)
            return value if math.isfinite(value) else {"$float": repr(value)}
        if isinstance(value, np.ndarray):
            name = f"a{len(arrays)}"
            arrays[name] = value
            return {"$array": name}
        if type(value).__module__.startswith("torch"):
            return {"$tensor": enc(value.detach().cpu().numpy())}
        if isinstance(value, Payload):
            return {
                "$payload": value.kind,
                "arrays": {k: enc(v) for k, v in value.to_arrays().items()},
                "meta": value.meta(),
            }
        if isinstance(value, tuple):
            return {"$tuple": [enc(v) for v in value]}
        if isinstance(value, list):
            return [enc(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in value):
                return {k: enc(v) for k, v in value.items()}
            return {"$dict": [[enc(k), enc(v)] for k, v in value.items()]}
        raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")

    return enc(tree), arrays


def unpack(doc: Any, arrays: dict[str, np.ndarray]) -> Any:
    """The tree :func:`pack` stored."""

    def dec(value: Any) -> Any:
        if isinstance(value, list):
            return [dec(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "$array" in value:
            return arrays[value["$array"]]
        if "$float" in value:
            return float(value["$float"])
        if "$tensor" in value:
            import torch

            return torch.from_numpy(np.array(dec(value["$tensor"])))
        if "$payload" in value:
            parts = {k: dec(v) for k, v in value["arrays"].items()}
            return decode(value["$payload"], parts, value["meta"])
        if "$tuple" in value:
            return tuple(dec(v) for v in value["$tuple"])
        if "$dict" in value:
            return {dec(k): dec(v) for k, v in value["$dict"]}
        return {k: dec(v) for k, v in value.items()}

    return dec(doc)


def client_file(folder: str | Path, client_id: int, server_round: int) -> Path:
    """Where client ``client_id`` keeps its state for the checkpoint of ``server_round``."""
    return Path(folder) / f"client_{client_id}.r{server_round}.ckpt"


def client_rounds(folder: str | Path, client_id: int) -> list[int]:
    """Rounds of the state files client ``client_id`` has in ``folder``."""
    rounds = []
    for path in Path(folder).glob(f"client_{client_id}.r*.ckpt"):
        number = path.name[len(f"client_{client_id}.r") : -len(".ckpt")]
        if number.isdigit():
            rounds.append(int(number))
    return sorted(rounds)


# ---------------------------------------------------------------- files
def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> int:
    """Write ``path`` through ``write(file)`` atomically; returns the bytes written.

    On any error (OSError for a full disk) the temporary file is removed, the
    previous ``path`` is untouched and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    for stale in path.parent.glob(f"{TMP_PREFIX}{path.name}.*"):  # left by a killed writer
        stale.unlink(missing_ok=True)
    return size


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(path: str | Path, tree: Any) -> int:
    """Store ``tree`` at ``path`` atomically; returns the file's size in bytes."""
    doc, arrays = pack(tree)
    text = json.dumps(doc, allow_nan=False)

    def write(f: BinaryIO) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(STATE, text)
            for name, array in arrays.items():
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
                archive.writestr(f"{name}.npy", buffer.getvalue())

    return write_atomic(path, write)


def load(path: str | Path) -> Any:
    """The tree stored at ``path``; CheckpointError (one line) if it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise CheckpointError(f"checkpoint {path} is corrupt (bad CRC in {bad})")
            doc = json.loads(archive.read(STATE).decode("utf-8"))
            arrays = {}
            for name in archive.namelist():
                if name.endswith(".npy"):
                    with archive.open(name) as member:
                        data = io.BytesIO(member.read())
                    # header checked against the bytes present before allocating
                    arrays[name[: -len(".npy")]] = load_npy(name, data.getvalue())
        return unpack(doc, arrays)
    except CheckpointError:
        raise
    except Exception as err:  # zip, JSON, .npy or tree layer: whatever it is, one line
        if isinstance(err, FedkdError):
            detail = str(err)
        else:
            detail = " ".join(str(err).split()) or type(err).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {detail}") from None
