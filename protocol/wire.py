"""The wire format shared by the ClientApp and the ServerApp.

One round is one Flower message each way. A message's RecordDict holds:

- ``config`` (ConfigRecord): ``round``, ``cfg`` (the run config as JSON) and
  ``plan`` (the strategy's instructions to the client, a :class:`fedkd.plan.Plan` as
  JSON; the client rebuilds and checks it, a malformed plan gets an error reply);
- ``knowledge`` (ArrayRecord) + ``knowledge_meta`` (ConfigRecord, ``kind`` + the
  payload's scalar metadata): a typed payload from :mod:`fedkd.knowledge`,
  encoded as the run config's ``knowledge.encoding`` says (:mod:`fedkd.encoding`:
  ``encoding`` and ``encoding.*`` meta entries; decoded by ``get_payload``);
- ``request`` (ArrayRecord): e.g. the public-set ``indices`` to predict on;
- ``metrics`` (MetricRecord, replies only): training and evaluation metrics;
- ``eval`` (ArrayRecord, replies only, when the plan sets ``confusion``):
  evaluation arrays, ``global_confusion`` (int64 ``[C, C]`` counts on the
  global test set). Not knowledge: ``payload_bytes`` leaves it out.

``query.save_state`` / ``query.restore_state`` messages (checkpoints) carry one
``checkpoint`` ConfigRecord: ``dir``, ``round`` and, to save, ``keep`` (the
round of the previous good checkpoint, whose files stay).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, MutableMapping
from functools import lru_cache
from typing import Any, TypeVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedkd.confusion import GLOBAL_CONFUSION  # noqa: F401  (the key in EVAL)
from fedkd.encoding import DecodeLimits
from fedkd.encoding import decode as decode_knowledge
from fedkd.encoding import encode as encode_knowledge
from fedkd.errors import PayloadError
from fedkd.knowledge import decode
from fedkd.npy import load_npy, npy_bytes
from fedkd.plan import Plan, PlanError

R = TypeVar("R", ArrayRecord, ConfigRecord, MetricRecord)

CONFIG = "config"
KNOWLEDGE = "knowledge"
KNOWLEDGE_META = "knowledge_meta"
REQUEST = "request"
METRICS = "metrics"
EVAL = "eval"
NUMPY = "numpy.ndarray"  # an Array's stype for .npy bytes (Flower's SType.NUMPY)
CHECKPOINT = "checkpoint"  # save/restore_state messages: dir, round (, keep)


def get_record(content: RecordDict, key: str, kind: type[R]) -> R | None:
    """``content[key]`` if it is a ``kind`` record, else None.

    Ours, instead of Flower's typed views: ``content.config_records`` (and
    ``array_records``, ``metric_records``) builds a new mapping of every record of that
    type and writes each back into ``content``, on every access.
    """
    record = content.get(key)
    return record if isinstance(record, kind) else None


def records_of(content: RecordDict, kind: type[R]) -> dict[str, R]:
    """Every ``kind`` record of ``content`` by key, read only (see ``get_record``)."""
    return {key: found for key, found in content.items() if isinstance(found, kind)}


def record(content: RecordDict, key: str, kind: type[R]) -> R:
    """``content[key]``, a ``kind`` record; KeyError (as the typed view raises) if absent."""
    found = get_record(content, key, kind)
    if found is None:
        raise KeyError(key)
    return found


def arrays_to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """The arrays as an ArrayRecord of ``.npy`` bytes, as Flower's ``Array(ndarray)``
    writes them, the header of each (dtype, shape) built once (``fedkd.npy.npy_bytes``)."""
    record = ArrayRecord()
    for key, value in arrays.items():
        # np.require, not np.ascontiguousarray: the latter turns 0-d arrays (BatchNorm's
        # num_batches_tracked) into shape (1,)
        value = np.require(value, requirements="C")
        encoded = npy_bytes(value)
        record[key] = (
            Array(value)
            if encoded is None
            else Array(dtype=encoded[0], shape=value.shape, stype=NUMPY, data=encoded[1])
        )
    return record


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The record's arrays, each allocated only after its ``.npy`` header was checked
    against the bytes present (``fedkd.npy``): PayloadError (``malformed``) otherwise."""
    out = {}
    for key, array in record.items():
        if array.stype != NUMPY:
            raise PayloadError(
                f"array '{key}': serialisation {array.stype!r} is not .npy", "malformed"
            )
        out[key] = load_npy(key, array.data)
    return out


def put_payload(content: RecordDict, payload: Any, encoding: dict[str, Any] | None = None) -> None:
    """Store a knowledge payload (``fedkd.knowledge``) in a message's content.

    ``encoding``: the run config's ``knowledge`` section (``fedkd.encoding``); None: float32.
    """
    put_knowledge(content, payload.to_arrays(), {"kind": payload.kind, **payload.meta()}, encoding)


def put_knowledge(
    content: RecordDict,
    arrays: dict[str, np.ndarray],
    meta: dict[str, Any],
    encoding: dict[str, Any] | None = None,
) -> None:
    """Store knowledge arrays and meta, encoded under ``encoding`` (None: as they are)."""
    arrays, meta = encode_knowledge(arrays, meta, encoding)
    content[KNOWLEDGE] = arrays_to_record(arrays)
    content[KNOWLEDGE_META] = ConfigRecord(meta)


def get_payload(content: RecordDict, limits: DecodeLimits | None = None) -> Any | None:
    """The typed payload in ``content`` or None; malformed records raise PayloadError.

    ``limits``: what the receiver accepts of encoded fields (``fedkd.encoding.DecodeLimits``;
    the server passes the run's classes and byte limit)."""
    knowledge = get_record(content, KNOWLEDGE, ArrayRecord)
    if knowledge is None:
        return None
    meta_record = get_record(content, KNOWLEDGE_META, ConfigRecord)
    if meta_record is None:
        raise PayloadError("knowledge arrays arrived without knowledge_meta", "malformed")
    arrays, meta = decode_knowledge(record_to_arrays(knowledge), dict(meta_record), limits)
    kind = meta.pop("kind", None)
    if not isinstance(kind, str):
        raise PayloadError("knowledge_meta has no 'kind'", "malformed")
    return decode(kind, arrays, meta)


def payload_bytes(content: RecordDict) -> int:
    """Bytes of array data a message carries (knowledge, incl. weights, and request).

    Evaluation arrays (``eval``) are measurement, not federated traffic: left out.
    """
    return sum(
        found.count_bytes()
        for key, found in records_of(content, ArrayRecord).items()
        if key in (KNOWLEDGE, REQUEST)
    )


def reply_bytes(content: RecordDict) -> int:
    """Bytes of every array a message carries (knowledge, request and eval): the size limit."""
    return sum(found.count_bytes() for found in records_of(content, ArrayRecord).values())


def get_eval_arrays(content: RecordDict) -> dict[str, np.ndarray]:
    """The reply's evaluation arrays (e.g. ``global_confusion``); empty if it has none."""
    found = get_record(content, EVAL, ArrayRecord)
    return {} if found is None else record_to_arrays(found)


def make_config(server_round: int, cfg_json: str, plan: Plan) -> ConfigRecord:
    """The ``config`` record: the round, the run config (JSON) and the plan (JSON)."""
    if not isinstance(plan, Plan):
        raise TypeError(f"make_config needs a fedkd.plan.Plan (got {type(plan).__name__})")
    return ConfigRecord(
        {"round": server_round, "cfg": cfg_json, "plan": json.dumps(plan.to_dict())}
    )


def read_config(content: RecordDict) -> tuple[int, dict[str, Any], Plan]:
    """The round, run config and plan of a message; the plan is rebuilt and checked
    (:meth:`fedkd.plan.Plan.from_dict`: a malformed one raises a one-line PlanError).

    Decoded once per distinct ``config`` record (``_decode_config``): a client reads its
    message's config in the privacy mod and in the ClientApp, and decoding the whole run
    config and plan each time was a tenth of a small client's round. So the returned
    config is shared with every other reader of the same record and is read-only
    (:class:`ReadOnlyDict`; copy it, ``dict(cfg)``, to change it); the plan is a frozen
    dataclass whose dict fields (``optimizer``, ``swing``) are read, never changed.
    """
    config = record(content, CONFIG, ConfigRecord)
    return _decode_config(int(config["round"]), str(config["cfg"]), str(config["plan"]))


@lru_cache(maxsize=8)
def _decode_config(server_round: int, cfg_json: str, plan_json: str) -> tuple[int, Any, Plan]:
    """``read_config``'s decoding; a failure raises and is not cached (every reader sees it)."""
    try:
        plan = json.loads(plan_json)
    except json.JSONDecodeError as err:
        raise PlanError(f"the plan is not JSON ({err})") from None
    plan = Plan.from_dict(plan)
    return server_round, json.loads(cfg_json, object_hook=ReadOnlyDict), plan


class ReadOnlyDict(dict):
    """A decoded run config that refuses changes: ``read_config`` hands the same one to
    every reader of a message. Copies (``dict(cfg)``, ``copy``, pickling) are plain dicts."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            "a message's run config is shared by its readers (protocol.wire.read_config) "
            "and read-only: change a copy, dict(cfg)"
        )

    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _refuse  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        return dict, (dict(self),)

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {key: copy.deepcopy(value, memo) for key, value in self.items()}


class PayloadStore(MutableMapping[str, Any]):
    """Knowledge payloads kept in a client's ``Context.state`` across rounds.

    The library sees a plain mapping (key -> payload); each entry is stored as an
    ArrayRecord ``key`` plus a ConfigRecord ``key + "_meta"`` (``kind`` and meta).
    """

    def __init__(self, state: RecordDict) -> None:
        self.state = state

    def __getitem__(self, key: str) -> Any:
        arrays = get_record(self.state, key, ArrayRecord)
        meta_record = get_record(self.state, f"{key}_meta", ConfigRecord)
        if arrays is None or meta_record is None:
            raise KeyError(key)
        meta = dict(meta_record)
        return decode(str(meta.pop("kind")), record_to_arrays(arrays), meta)

    def __setitem__(self, key: str, payload: Any) -> None:
        self.state[key] = arrays_to_record(payload.to_arrays())
        self.state[f"{key}_meta"] = ConfigRecord({"kind": payload.kind, **payload.meta()})

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        del self.state[key]
        del self.state[f"{key}_meta"]

    def __iter__(self) -> Iterator[str]:
        return (k for k in self.state.array_records if f"{k}_meta" in self.state.config_records)

    def __len__(self) -> int:
        return sum(1 for _ in self)
