"""``fedkd-fuzz``: hostile replies for every strategy, fed to the real ``aggregate_train``.

Property-based (``hypothesis``): each example is one round of three replies, two
honest ones (clients 0 and 2, well-formed knowledge of the strategy's kind) and one
hostile reply of client 1 drawn from a category of :data:`CATEGORIES`: ``.npy``
headers that lie about their size, random arrays (every dtype family numpy saves,
0-d, empty and odd shapes), encoded records with bad fields, metrics of every type,
extreme finite values and counts, bad public-set indices, bad meta (kinds, spaces,
value types), and plainly honest replies. The strategy is built once per run with
the real data (``server.app.prepare_run``) and keeps its state across examples, as
in a run. Invariants checked after every example (:func:`check_round`):

- no exception escapes ``aggregate_train``;
- both honest replies are accepted and never struck;
- the hostile reply is accepted, or rejected with a reason of ``fedkd.errors.REJECT_REASONS``;
- an accepted reply reaches fusion unchanged (its arrays equal a fresh decoding);
- the fused knowledge is finite and inside the run's ``bounds``.

``fedkd-fuzz`` (long profile, default 10,000 replies per strategy) prints the count
per strategy and writes the table of hostile inputs tried (category, examples,
outcome) to ``docs/fuzz.md``; the test suite runs the same property with a few hundred
examples per strategy (``tests/simulations/test_fuzz.py``). Needs the dev extras (``hypothesis``).

    fedkd-fuzz                                # every strategy, 10,000 replies each
    fedkd-fuzz --examples 500 --strategies fd dsfl --out /tmp/fuzz.md
    fedkd-fuzz --strategies feddf fedka --stats b.json --out ''   # in parallel with ...
    fedkd-fuzz --strategies fd fedproto fedmd dsfl knfu vote fedavg local --stats a.json --out ''
    fedkd-fuzz --merge a.json b.json                                 # ... one table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.app.metadata import Metadata

from fedkd.config import compose
from fedkd.encoding import encode
from fedkd.errors import REJECT_REASONS
from fedkd.knowledge import ClassLogits, ModelWeights, Payload, Prototypes, PublicLogits, Votes
from fedkd.metrics_schema import EXACT, RESERVED
from protocol import wire
from server.app import prepare_run
from server.roster import Roster
from server.strategies import STRATEGIES, FedkdStrategy

# strategy -> overrides: small budgets where fusion trains a server model; there fusion runs
# only when the hostile reply is accepted too (min_train_clients=3), on a small test split
CHEAP_FUSION = ["server.min_train_clients=3", "split.global_test_per_class=3"]
SETUPS: dict[str, list[str]] = {
    "fd": ["strategy=fd"],
    "fedproto": ["strategy=fedproto"],
    "fedmd": ["strategy=fedmd", "strategy.alignment_size=20"],
    "dsfl": ["strategy=dsfl", "strategy.open_size=20"],
    "knfu": ["strategy=knfu"],
    "vote": ["strategy=vote", "strategy.query_size=20"],
    "fedavg": ["strategy=fedavg", "model=mlp"],
    "feddf": [
        "strategy=feddf",
        "model=mlp",
        "split.server_val_per_class=2",
        "strategy.max_steps=1",
        "strategy.eval_every=1",
        "strategy.patience=1",
        *CHEAP_FUSION,
    ],
    "fedka": [
        "+experiment=fedka_digits_domains",
        "model=mlp",
        "strategy.vote_batches=1",
        "strategy.batch_size=8",
        *CHEAP_FUSION,
    ],
    "local": ["strategy=local"],
}
CATEGORIES = (
    "honest",
    "header_lie",
    "random_arrays",
    "encoded_fields",
    "metrics",
    "extreme_values",
    "counts",
    "indices",
    "meta",
)
HOSTILE = 1  # the hostile client; 0 and 2 are honest
DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "datetime64[s]",
    "timedelta64[ms]",
)
EXTREME_FLOATS = (
    0.0,
    -0.0,
    1e-45,
    1.0,
    -1.0,
    999.0,
    1e3,
    1.0001e3,
    1e4,
    1e30,
    -1e30,
    3.4e38,
    -3.4e38,
    1e300,
    float("nan"),
    float("inf"),
    -float("inf"),
)
EXTREME_INTS = (0, 1, -1, 255, 2**31 - 1, 2**31, 2**53, 2**62, 2**63 - 1, -(2**63), 10**400)


class Escape(AssertionError):
    """An invariant of the fuzzer broke (the message says which)."""


# ---------------------------------------------------------------- building replies
def build(name: str, extra: list[str] | None = None) -> FedkdStrategy:
    """The strategy ``name`` with the run's real data, every client on its own node."""
    cfg = compose(["num_rounds=20", "logging.tensorboard=false", *SETUPS[name], *(extra or [])])
    info = prepare_run(cfg)
    node_of = {cid: 100 + cid for cid in range(info.num_clients)}
    strategy = STRATEGIES.get(name)(info, None, Roster(node_of, info.num_clients))
    # a run accepts only its own encoding; the fuzzer lets every codec through to its decoder
    strategy.decode_limits = dataclasses.replace(strategy.decode_limits, encodings=None)
    return strategy


def metadata(cid: int) -> Metadata:
    return Metadata(
        run_id=1,
        message_id=f"reply-{cid}",
        src_node_id=100 + cid,
        dst_node_id=0,
        reply_to_message_id=f"ins-{cid}",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=MessageType.TRAIN,
    )


def honest_payload(strategy: FedkdStrategy, rnd: int, cid: int, rng) -> Payload | None:
    """Well-formed knowledge of the strategy's kind, as an honest client sends it."""
    info, kind = strategy.info, strategy.upload_kind
    c = info.num_classes
    counts = rng.integers(0, 60, c).astype(np.int64)
    if kind == "class_logits":
        return ClassLogits(rng.normal(0, 3, (c, c)).astype(np.float32), counts)
    if kind == "prototypes":
        return Prototypes(rng.random((c, info.feature_dim)).astype(np.float32), counts)
    if kind == "public_logits":
        idx = strategy.indices_for(rnd)
        logits = rng.normal(0, 3, (len(idx), c))
        if strategy.upload_space == "probs":
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return PublicLogits(idx, (e / e.sum(axis=1, keepdims=True)).astype(np.float32), "probs")
        return PublicLogits(idx, logits.astype(np.float32), "logits")
    if kind == "votes":
        idx = strategy.indices_for(rnd)
        return Votes(idx, rng.integers(0, c, (len(idx), strategy.top_k)).astype(np.int64))
    if kind == "model_weights":
        ref = strategy.weights[strategy.group_of[cid]]
        return ModelWeights(
            {
                k: (v + rng.normal(0, 0.01, v.shape).astype(v.dtype)) if v.dtype.kind == "f" else v
                for k, v in ref.items()
            }
        )
    return None


def message(
    metrics: dict[str, Any],
    arrays: dict[str, Array] | None,
    meta: dict[str, Any] | None,
    cid: int,
) -> Message:
    content = RecordDict({wire.METRICS: MetricRecord({})})
    # MetricRecord refuses some types itself; a hostile peer's record is taken as it comes
    content.metric_records[wire.METRICS]._data.update(metrics)
    if arrays is not None:
        content[wire.KNOWLEDGE] = ArrayRecord(arrays)
    if meta is not None:
        record = ConfigRecord({})
        record._data.update(meta)
        content[wire.KNOWLEDGE_META] = record
    return Message(content=content, metadata=metadata(cid))


def npy(value: np.ndarray) -> Array:
    return Array(np.require(value, requirements="C"))


def lying(shape: tuple[int, ...], dtype: str, data: bytes) -> Array:
    header = f"{{'descr': '{np.dtype(dtype).str}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header = header.ljust(118) + "\n"
    raw = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data
    return Array(dtype=dtype, shape=(1,), stype="numpy.ndarray", data=raw)


def honest_metrics(rng) -> dict[str, Any]:
    return {
        "num_train": int(rng.integers(1, 300)),
        "num_local_test": int(rng.integers(1, 100)),
        "local_test_acc": float(rng.random()),
        "global_test_acc": float(rng.random()),
        "train_loss": float(rng.random() * 3),
        "distill_loss": float(rng.random()),
        "partition_id": 0,
        "client_time": 0.5,
    }


def honest_message(strategy: FedkdStrategy, rnd: int, cid: int, rng) -> Message:
    payload = honest_payload(strategy, rnd, cid, rng)
    arrays = meta = None
    if payload is not None:
        raw, meta = encode(
            payload.to_arrays(),
            {"kind": payload.kind, **payload.meta()},
            strategy.cfg["knowledge"],
        )
        arrays = {k: npy(v) for k, v in raw.items()}
    return message(honest_metrics(rng), arrays, meta, cid)


# ---------------------------------------------------------------- hostile replies
def _strategies():
    from hypothesis import strategies as st

    return st


def hostile_message(draw, strategy: FedkdStrategy, rnd: int, category: str) -> Message:
    """Client 1's reply of ``category``; ``draw`` is hypothesis's ``data.draw``."""
    st = _strategies()
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    payload = honest_payload(strategy, rnd, HOSTILE, rng)
    metrics = honest_metrics(rng)
    if payload is None:  # strategies that take no knowledge still read metrics and records
        payload = ClassLogits(np.zeros((2, 2), np.float32), np.ones(2, np.int64))
    plain = {k: np.asarray(v) for k, v in payload.to_arrays().items()}
    meta: dict[str, Any] = {"kind": payload.kind, **payload.meta()}
    keys = sorted(plain)
    if category == "honest":
        return honest_message(strategy, rnd, HOSTILE, rng)
    if category == "header_lie":
        key = draw(st.sampled_from(keys), label="key")
        dims = draw(st.lists(st.integers(0, 2**40), min_size=0, max_size=4), label="shape")
        dtype = draw(st.sampled_from(DTYPES[:14]), label="dtype")
        data = draw(st.binary(max_size=64), label="data")
        arrays = {k: npy(v) for k, v in plain.items()}
        arrays[key] = lying(tuple(dims), dtype, data)
        return message(metrics, arrays, meta, HOSTILE)
    if category == "random_arrays":
        names = draw(
            st.lists(st.sampled_from([*keys, "extra", "values", "logits", "counts"]), max_size=4),
            label="names",
        )
        arrays = {}
        for name in names:
            dtype = draw(st.sampled_from(DTYPES), label="dtype")
            shape = tuple(draw(st.lists(st.integers(0, 12), max_size=3), label="shape"))
            size = int(np.prod(shape)) if shape else 1
            raw = rng.integers(-(2**20), 2**20, size).astype(np.int64)
            with np.errstate(over="ignore", invalid="ignore"):
                arrays[name] = npy(raw.reshape(shape).astype(dtype))
        return message(metrics, arrays, meta, HOSTILE)
    if category == "encoded_fields":
        codec = draw(st.sampled_from(["float16", "int8", "topk", "nope", 7]), label="codec")
        spec = {"encoding": codec if codec in ("float16", "int8", "topk") else "float32"}
        spec["top_k"] = draw(st.integers(1, 4), label="top_k")
        encoded, enc_meta = encode(plain, meta, spec)
        enc_meta = {**enc_meta, "encoding": codec}
        arrays = {k: np.asarray(v) for k, v in encoded.items()}
        field = draw(
            st.sampled_from(["cols", "index", "scale", "values", "names", "dtype", "none"]),
            label="field",
        )
        target = next((k for k in arrays if k.endswith((".index", ".scale", ".values"))), None)
        if field == "cols":
            for k in [k for k in enc_meta if k.endswith(".cols")] or ["encoding.logits.cols"]:
                enc_meta[k] = draw(st.sampled_from([*EXTREME_INTS[:-1], 2**40, "3", 2.5]))
        elif field == "names":
            enc_meta["encoding.arrays"] = draw(
                st.sampled_from(["", "logits", "values,counts", "zzz", 5])
            )
        elif target is not None and field in ("index", "scale", "values"):
            value = arrays[target]
            kind = draw(st.sampled_from(["fill", "shape", "negative"]), label="mutation")
            if kind == "fill" and value.size:
                arrays[target] = np.full_like(value, draw(st.sampled_from(EXTREME_INTS[:7])) % 256)
            elif kind == "shape":
                arrays[target] = value.reshape(-1)[: max(value.size - 1, 0)]
            else:
                arrays[target] = -np.abs(value.astype(np.float32))
        elif target is not None and field == "dtype":
            arrays[target] = arrays[target].astype(draw(st.sampled_from(DTYPES[:14])))
        return message(metrics, {k: npy(v) for k, v in arrays.items()}, enc_meta, HOSTILE)
    if category == "metrics":
        names = [*EXACT, "local_test_acc", "train_loss", "x_time_s", *RESERVED, "zz", ""]
        values = st.one_of(
            st.sampled_from([*EXTREME_FLOATS, *EXTREME_INTS, True, [1, 2], [0.5], "x", None]),
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(),
        )
        metrics = draw(st.dictionaries(st.sampled_from(names), values, max_size=6))
        return message(metrics, {k: npy(v) for k, v in plain.items()}, meta, HOSTILE)
    if category == "extreme_values":
        floats = [k for k, v in plain.items() if v.dtype.kind == "f"]
        for key in draw(st.lists(st.sampled_from(floats or keys), max_size=3, unique=True)):
            value = draw(st.sampled_from(EXTREME_FLOATS), label="value")
            dtype = draw(st.sampled_from(["float32", "float64"]), label="dtype")
            with np.errstate(over="ignore"):
                plain[key] = np.full(plain[key].shape, value).astype(dtype)
        return message(metrics, {k: npy(v) for k, v in plain.items()}, meta, HOSTILE)
    if category == "counts":
        ints = [k for k, v in plain.items() if v.dtype.kind in "iu"]
        for key in ints:
            value = draw(st.sampled_from(EXTREME_INTS[:-1]), label="count")
            dtype = "uint64" if value >= 2**63 else "int64"
            plain[key] = np.full(plain[key].shape, value, dtype=dtype)
        metrics["num_train"] = draw(st.sampled_from(EXTREME_INTS), label="num_train")
        return message(metrics, {k: npy(v) for k, v in plain.items()}, meta, HOSTILE)
    if category == "indices":
        if "indices" in plain:
            idx = plain["indices"]
            change = draw(st.sampled_from(["dup", "range", "short", "neg", "uint", "shuffle"]))
            if change == "dup" and len(idx) > 1:
                idx = np.concatenate([idx[:-1], idx[:1]])
            elif change == "range" and len(idx):
                idx = idx.copy()
                idx[-1] = draw(st.sampled_from([strategy.info.num_public, 2**62, 2**31]))
            elif change == "short":
                idx = idx[:-1]
            elif change == "neg" and len(idx):
                idx = -idx - 1
            elif change == "uint":
                idx = idx.astype(np.uint64)
            else:
                idx = rng.permutation(idx)
            plain["indices"] = idx
        else:  # votes / class rows: class ids beyond the classes
            key = keys[0]
            plain[key] = np.full_like(plain[key], draw(st.sampled_from([-2, 10**6])))
        return message(metrics, {k: npy(v) for k, v in plain.items()}, meta, HOSTILE)
    # meta
    kinds = ["class_logits", "prototypes", "public_logits", "votes", "model_weights", "zz", 3]
    meta = dict(meta)
    change = draw(st.sampled_from(["kind", "space", "extra", "drop", "types"]), label="meta")
    if change == "kind":
        meta["kind"] = draw(st.sampled_from(kinds))
    elif change == "space":
        meta["space"] = draw(st.sampled_from(["logits", "probs", "", 1.5, b"probs"]))
    elif change == "extra":
        meta[draw(st.sampled_from(["encoding", "encoding.arrays", "x", "temperature"]))] = 1
    elif change == "drop":
        meta = {}
    else:
        meta = {k: [1, 2] for k in meta}
    return message(metrics, {k: npy(v) for k, v in plain.items()}, meta, HOSTILE)


# ---------------------------------------------------------------- invariants
def _arrays_of(value: Any):
    if isinstance(value, Payload):
        value = value.to_arrays()
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _arrays_of(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _arrays_of(item)


def knowledge_problems(strategy: FedkdStrategy) -> list[str]:
    """What is wrong with the strategy's fused knowledge (empty: nothing)."""
    problems = []
    bounds = strategy.bounds
    for key, value in strategy.state_dict().items():
        if key in strategy.not_knowledge:
            continue
        for array in _arrays_of(value):
            if array.dtype.kind != "f" or array.size == 0:
                continue
            if not np.isfinite(array).all():
                problems.append(f"fused {key} holds NaN/Inf")
                continue
            peak = float(np.abs(array).max())
            kind = strategy.upload_kind
            limit = {
                "class_logits": bounds.logits,
                "prototypes": bounds.prototypes,
                "model_weights": bounds.weights,
            }.get(kind or "")
            if kind == "public_logits" and strategy.upload_space == "logits":
                limit = bounds.logits
            if limit is not None and peak > limit * (1 + 1e-6):
                problems.append(f"fused {key} reaches {peak:.3g} > bound {limit:g}")
    return problems


def check_round(strategy: FedkdStrategy, rnd: int, replies: list[Message]) -> str:
    """Run one round; the hostile reply's outcome (``accepted`` or the reason); Escape if
    an invariant breaks."""
    seen: dict[int, Payload] = {}
    fuse = strategy.guard.fuse

    def spy(server_round, uploads, num_train):
        # what validation accepted; bounds.clip / weight_cap then act on fusion's inputs
        seen.update(uploads)
        return fuse(server_round, uploads, num_train)

    strategy.guard.fuse = spy  # type: ignore[method-assign]
    strategy.current.bytes_down = {cid: 0 for cid in (0, HOSTILE, 2)}
    strikes_before = {c: strategy.strikes[c] for c in (0, 2)}
    try:
        strategy.aggregate_train(rnd, replies)
    except Exception as err:
        raise Escape(f"{type(err).__name__} escaped aggregate_train: {err}") from err
    finally:
        del strategy.guard.fuse
    rejected = dict(strategy.replies.rejected_now)
    for cid in (0, 2):
        if cid in rejected:
            raise Escape(f"honest client {cid} rejected ({rejected[cid]})")
        if strategy.strikes[cid] != strikes_before[cid]:
            raise Escape(f"honest client {cid} struck")
    strategy.excluded.pop(HOSTILE, None)  # keep the hostile client in the game
    outcome = rejected.get(HOSTILE, "accepted")
    if outcome != "accepted" and outcome not in REJECT_REASONS:
        raise Escape(f"rejected with an unknown reason {outcome!r}")
    if outcome == "accepted" and HOSTILE in seen:
        fresh = wire.get_payload(replies[1].content, strategy.decode_limits).to_arrays()
        used = seen[HOSTILE].to_arrays()
        if set(fresh) != set(used) or not all(
            np.array_equal(fresh[k], used[k], equal_nan=True) for k in fresh
        ):
            raise Escape("an accepted reply reached fusion changed")
    problems = knowledge_problems(strategy)
    if problems:
        raise Escape("; ".join(problems))
    return outcome


# ---------------------------------------------------------------- running
def property_for(
    strategy: FedkdStrategy, record: Callable[[str, str], None], examples: int, long: bool
):
    """A hypothesis test feeding ``examples`` hostile rounds to ``strategy``."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    counter = {"round": 0}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate] if long else [Phase.generate, Phase.shrink],
    )
    @given(st.data())
    def run(data):
        counter["round"] += 1
        rnd = counter["round"] % 20 + 1
        category = data.draw(st.sampled_from(CATEGORIES), label="category")
        rng = np.random.default_rng(counter["round"])
        hostile = hostile_message(data.draw, strategy, rnd, category)
        replies = [
            honest_message(strategy, rnd, 0, rng),
            hostile,
            honest_message(strategy, rnd, 2, rng),
        ]
        try:
            outcome = check_round(strategy, rnd, replies)
        except Escape as err:
            record(category, "escape")
            if not long:
                raise
            print(f"ESCAPE ({strategy.name}, {category}): {err}", file=sys.stderr)
            return
        record(category, outcome)

    return run


def table(stats: dict[str, dict[str, Counter]], counts: dict[str, int], examples: int) -> str:
    """The Markdown table of hostile inputs tried, from the run's own counts."""
    lines = [
        "| category | examples | accepted | rejected (by reason) | escapes |",
        "|---|---|---|---|---|",
    ]
    by_category: dict[str, Counter] = defaultdict(Counter)
    for per in stats.values():
        for category, outcomes in per.items():
            by_category[category].update(outcomes)
    for category in CATEGORIES:
        outcomes = by_category.get(category, Counter())
        total = sum(outcomes.values())
        rejected = {k: v for k, v in outcomes.items() if k not in ("accepted", "escape")}
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items(), key=lambda x: -x[1]))
        lines.append(
            f"| {category} | {total} | {outcomes.get('accepted', 0)} | {reasons or '-'} "
            f"| {outcomes.get('escape', 0)} |"
        )
    per = ", ".join(f"{name} {n}" for name, n in counts.items())
    lines += [
        "",
        f"Replies per strategy (`fedkd-fuzz --examples {examples}`): {per}. Each reply is the "
        "hostile one of a round with two honest replies; `escapes` counts broken invariants "
        "(an exception out of `aggregate_train`, an honest reply rejected or struck, an "
        "accepted reply changed, fused knowledge non-finite or beyond `bounds`).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedkd-fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="replies per strategy")
    parser.add_argument("--strategies", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--out", default="docs/fuzz.md", help="the Markdown table ('' : none)")
    parser.add_argument("--stats", help="also write the counts as JSON (for --merge)")
    parser.add_argument(
        "--merge", nargs="+", help="no fuzzing: one table from the --stats files of earlier runs"
    )
    args = parser.parse_args(argv)
    if args.merge:
        return _merge(args.merge, args.out, args.examples)
    import logging

    logging.getLogger("fedkd").setLevel(logging.ERROR)  # one warning per rejected reply
    import torch

    torch.set_num_threads(1)  # as a client process; the fuzzer is one process per call
    stats: dict[str, dict[str, Counter]] = {}
    counts: dict[str, int] = {}
    for name in args.strategies:
        per: dict[str, Counter] = defaultdict(Counter)
        strategy = build(name)
        started = time.perf_counter()
        property_for(strategy, lambda c, o, per=per: per[c].update([o]), args.examples, True)()
        stats[name] = per
        counts[name] = sum(sum(c.values()) for c in per.values())
        escapes = sum(c.get("escape", 0) for c in per.values())
        print(
            f"{name}: {counts[name]} replies, {escapes} escapes "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    if args.stats:
        Path(args.stats).write_text(json.dumps({"stats": stats, "counts": counts}))
    return _report(stats, counts, args.out, args.examples)


def _report(stats: dict, counts: dict[str, int], out: str, examples: int) -> int:
    total_escapes = sum(c.get("escape", 0) for per in stats.values() for c in per.values())
    text = table(stats, counts, examples)
    print(text)
    if out:
        Path(out).write_text(
            "# Hostile replies tried (`fedkd-fuzz`)\n\nGenerated by `fedkd-fuzz"
            + (f" --examples {examples}" if examples != 10_000 else "")
            + "`; do not edit.\n\n"
            + text
        )
    print(f"total: {sum(counts.values())} replies, {total_escapes} escapes")
    return 1 if total_escapes else 0


def _merge(files: list[str], out: str, examples: int) -> int:
    """``--merge``: the table of several ``--stats`` files (e.g. strategies fuzzed in parallel)."""
    stats: dict[str, dict[str, Counter]] = {}
    counts: dict[str, int] = {}
    for name in files:
        doc = json.loads(Path(name).read_text())
        for strategy, per in doc["stats"].items():
            stats[strategy] = {c: Counter(o) for c, o in per.items()}
        counts.update(doc["counts"])
    order = [s for s in SETUPS if s in counts]
    return _report(stats, {s: counts[s] for s in order}, out, examples)


if __name__ == "__main__":
    sys.exit(main())
