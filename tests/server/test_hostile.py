"""Hostile replies: none can crash the server, poison the honest clients or exclude them.

Each reply is a real Flower ``Message`` as a hostile SuperNode could send it
(records built by hand where the project's own encoder would refuse), fed to the
real ``aggregate_train`` next to honest replies.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers import NODES, default_cfg, good_fd, make, metadata, reply

from fedkd.bounds import Bounds, cap_class_counts, cap_weights, clip_to_median
from fedkd.encoding import DecodeLimits
from fedkd.encoding import decode as decode_knowledge
from fedkd.errors import ConfigError, PayloadError
from fedkd.knowledge import ClassLogits, ModelWeights, Prototypes
from fedkd.metrics_schema import check_metrics
from fedkd.npy import load_npy
from protocol import wire
from server import rounds


def npy_declaring(shape: tuple[int, ...], dtype: str = "<f4", data: bytes = b"\0" * 8) -> bytes:
    """``.npy`` bytes whose header declares ``shape`` but which carry only ``data``."""
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape!r}, }}"
    header = header.ljust(118) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data


def lying_array(shape: tuple[int, ...]) -> Array:
    return Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=npy_declaring(shape))


def three(fd, bad: Message, rnd: int = 1):
    return fd.aggregate_train(rnd, [reply(0, good_fd(1.0)), bad, reply(2, good_fd(3.0))])


# ---------------------------------------------------------------- bounded decoding
def test_load_npy_checks_the_declared_size_before_allocating():
    with pytest.raises(PayloadError, match=r"declares \[68719476736\] float32"):
        load_npy("logits", npy_declaring((2**36,)))
    with pytest.raises(PayloadError, match="not a plain numeric dtype"):
        load_npy("x", npy_declaring((1,), "|O", b""))
    buffer = io.BytesIO()
    np.save(buffer, np.arange(6, dtype=np.int16).reshape(2, 3))
    np.testing.assert_array_equal(load_npy("x", buffer.getvalue()), [[0, 1, 2], [3, 4, 5]])


@pytest.mark.parametrize("record", [wire.KNOWLEDGE, wire.EVAL])
def test_a_header_declaring_2_36_elements_is_rejected_and_the_round_fuses(record, tmp_path):
    fd = make("fd", tmp_path)
    content = RecordDict({wire.METRICS: MetricRecord({"num_train": 5})})
    wire.put_payload(content, good_fd(2.0))
    if record == wire.KNOWLEDGE:
        content[wire.KNOWLEDGE]["logits"] = lying_array((2**36,))
    else:
        content[wire.EVAL] = ArrayRecord({"global_confusion": lying_array((2**18, 2**18))})
    _, diagnostics = three(fd, Message(content=content, metadata=metadata(1)))
    if record == wire.KNOWLEDGE:
        assert dict(fd.dropped) == {"malformed": 1}
        np.testing.assert_allclose(fd.global_teacher.logits, 2.0)
    else:  # a bad measurement loses only itself
        assert diagnostics["replies"] == 3 and not fd.dropped


def topk_record(cols: int) -> RecordDict:
    content = RecordDict({wire.METRICS: MetricRecord({"num_train": 5})})
    content[wire.KNOWLEDGE] = wire.arrays_to_record(
        {
            "logits.values": np.zeros((2, 2), np.float32),
            "logits.index": np.zeros((2, 1), np.uint8),
            "counts": np.array([1, 1]),
        }
    )
    content[wire.KNOWLEDGE_META] = ConfigRecord(
        {
            "kind": "class_logits",
            "encoding": "topk",
            "encoding.arrays": "logits",
            "encoding.logits.cols": cols,
        }
    )
    return content


def test_topk_columns_beyond_the_classes_are_rejected_before_the_table_exists():
    fd = make("fd", None, "knowledge.encoding=topk", "knowledge.top_k=1")
    three(fd, Message(content=topk_record(2**40), metadata=metadata(1)))
    assert dict(fd.dropped) == {"malformed": 1}
    limits = DecodeLimits(max_columns=None, max_bytes=1000)
    arrays = wire.record_to_arrays(topk_record(2**26)[wire.KNOWLEDGE])
    with pytest.raises(PayloadError, match="would decode to 536870912 bytes") as err:
        decode_knowledge(arrays, dict(topk_record(2**26)[wire.KNOWLEDGE_META]), limits)
    assert err.value.reason == "too_large"


def test_an_encoding_the_run_does_not_use_is_malformed():
    fd = make("fd")  # knowledge.encoding=float32
    three(fd, Message(content=topk_record(2), metadata=metadata(1)))
    assert dict(fd.dropped) == {"malformed": 1}


# ---------------------------------------------------------------- metrics schema
@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"num_train": 5, "local_test_acc": [0.5, 0.5]}, "must be a finite number in"),
        ({"num_train": 10**400}, r"must be an integer in \[0, 10000000\]"),
        ({"num_train": 5, "train_loss": 10**400}, "beyond 2\\^53"),
        ({"num_train": 5, "global_test_acc": float("inf")}, "got inf"),
        ({"num_train": 5, "train_loss": 1e300}, None),  # finite and >= 0: a loss may be large
        ({"num_train": 5, "train_loss": -5.0}, "got -5"),
        ({"num_train": 5, "local_test_acc": 1.5}, r"in \[0, 1\]"),
        ({"num_train": 2**62}, "got 4611686018427387904"),
        ({"num_train": 5, "round": 99}, "'round' is reserved"),
        ({"num_train": 5, "client": 7}, "'client' is reserved"),
        ({"num_train": 5, "mystery": 1.0}, "unknown metric 'mystery'"),
        ({"num_train": True}, "got bool"),
        ({"num_train": 5.0}, "got a float"),
    ],
)
def test_metrics_outside_the_schema_are_bad_metrics(metrics, message, tmp_path):
    fd = make("fd", tmp_path)
    if message is not None:
        with pytest.raises(PayloadError, match=message) as err:
            check_metrics(metrics, 10_000_000)
        assert err.value.reason == "bad_metrics" and "\n" not in str(err.value)
    bad = Message(content=RecordDict({wire.METRICS: MetricRecord({})}), metadata=metadata(1))
    # MetricRecord refuses bools itself; what a protocol bug could still deliver goes in raw
    bad.content.metric_records[wire.METRICS]._data.update(metrics)
    wire.put_payload(bad.content, good_fd(2.0))
    three(fd, bad)
    fd.recorder.end_round(1, complete_upto=1)
    summary = fd.recorder.finish()
    if message is None:
        assert not fd.dropped
        return
    assert dict(fd.dropped) == {"bad_metrics": 1}
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [(line.count('"round": 1'), line.count('"client"')) for line in lines] == [(1, 1)] * 2
    assert summary["rounds"][0]["participants"] == [0, 2]


# ---------------------------------------------------------------- nothing escapes
def test_a_fusion_that_raises_keeps_the_last_good_knowledge(tmp_path, caplog):
    fd = make("fd", tmp_path)
    three(fd, reply(1, good_fd(2.0)))
    np.testing.assert_allclose(fd.global_teacher.logits, 2.0)

    def broken(*args, **kwargs):
        raise IndexError("index 7 is out of bounds")

    fd.fuse = broken
    with caplog.at_level(logging.WARNING, logger="fedkd"):
        _, diagnostics = three(fd, reply(1, good_fd(5.0)), rnd=2)
    assert fd.fusion_failures == 1 and diagnostics["replies"] == 3
    np.testing.assert_allclose(fd.global_teacher.logits, 2.0)
    assert any("IndexError: index 7" in r.getMessage() for r in caplog.records)


def test_any_exception_while_reading_a_reply_rejects_only_that_reply(monkeypatch):
    fd = make("fd")
    real = wire.get_payload

    def explode(content, limits=None):
        if content.metric_records[wire.METRICS]["num_train"] == 13:
            raise MemoryError("cannot allocate")
        return real(content, limits)

    monkeypatch.setattr(wire, "get_payload", explode)
    three(fd, reply(1, good_fd(), metrics={"num_train": 13}))
    assert dict(fd.dropped) == {"malformed": 1}
    np.testing.assert_allclose(fd.global_teacher.logits, 2.0)


# ---------------------------------------------------------------- magnitude bounds
def protos(value: float, counts=(3, 2)) -> Prototypes:
    return Prototypes(np.full((2, 4), value, np.float32), np.array(counts))


def test_1e30_prototypes_are_value_range_and_the_honest_mean_is_kept():
    fp = make("fedproto", None, "model.feature_dim=4")
    fp.aggregate_train(1, [reply(0, protos(1.0)), reply(1, protos(1e30)), reply(2, protos(3.0))])
    assert dict(fp.dropped) == {"value_range": 1} and fp.strikes[1] == 1
    np.testing.assert_allclose(fp.global_prototypes.prototypes, 2.0)


def test_1e30_weights_and_int64_max_counts_are_value_range():
    fd = make("fd")
    three(fd, reply(1, ClassLogits(np.full((2, 2), 1e30, np.float32), np.array([1, 1]))))
    three(fd, reply(1, ClassLogits(np.ones((2, 2), np.float32), np.array([2**63 - 1, 1]))), 2)
    assert dict(fd.dropped) == {"value_range": 2}
    avg = make("fedavg", None, "model=mlp")
    good = avg.weights[next(iter(avg.weights))]
    huge = ModelWeights({k: np.full_like(v, 1e30) for k, v in good.items()})
    avg.aggregate_train(
        1, [reply(0, ModelWeights(good)), reply(1, huge), reply(2, ModelWeights(good))]
    )
    assert dict(avg.dropped) == {"value_range": 1}


def test_num_train_2_62_cannot_take_over_fedavg():
    avg = make("fedavg", None, "model=mlp")
    key = next(iter(avg.weights))
    ones = ModelWeights({k: np.ones_like(v) for k, v in avg.weights[key].items()})
    threes = ModelWeights({k: np.full_like(v, 3) for k, v in avg.weights[key].items()})
    avg.aggregate_train(
        1,
        [
            reply(0, ones, metrics={"num_train": 100}),
            reply(1, threes, metrics={"num_train": 2**62}),
            reply(2, ones, metrics={"num_train": 100}),
        ],
    )
    assert dict(avg.dropped) == {"bad_metrics": 1}
    name = next(k for k, v in avg.weights[key].items() if v.dtype == np.float32)
    np.testing.assert_allclose(avg.weights[key][name], 1.0)


def test_weight_caps_and_clipping_by_hand():
    # median of (100, 120, 10^9) is 120: capped at 4 x 120 = 480
    assert cap_weights({0: 100, 1: 120, 2: 10**9}, 4.0) == {0: 100, 1: 120, 2: 480}
    assert cap_weights({0: 100, 1: 10**9}, None) == {0: 100, 1: 10**9}
    counts = np.array([[10, 0], [20, 5], [10**7, 5]])
    np.testing.assert_array_equal(cap_class_counts(counts, 4.0), [[10, 0], [20, 5], [99, 1]])
    # one row, four clients at 0, 1, 2 and 100 (1-D): median 1.5; distances 1.5, .5, .5, 98.5;
    # median distance 1.0, factor 2: the last row is pulled to 1.5 + 2 = 3.5
    values = np.array([0.0, 1.0, 2.0, 100.0]).reshape(4, 1, 1)
    clipped = clip_to_median(values, np.ones((4, 1), bool), 2.0)
    np.testing.assert_allclose(clipped.ravel(), [0.0, 1.0, 2.0, 3.5])
    # a masked-out row is neither clipped nor counted
    mask = np.array([[True], [True], [True], [False]])
    np.testing.assert_allclose(clip_to_median(values, mask, 2.0).ravel(), [0, 1, 2, 100])


def test_bounds_options_are_checked():
    with pytest.raises(ConfigError, match="bounds.weight_cap must be >= 1"):
        Bounds.from_config({**default_cfg()["bounds"], "weight_cap": 0.5})
    with pytest.raises(ConfigError, match=r"bounds.max_count must be an integer in \[1, 2\^53\]"):
        Bounds.from_config({**default_cfg()["bounds"], "max_count": 2**60})
    with pytest.raises(ConfigError, match=r"bounds: missing key\(s\) \['max_count'\]"):
        Bounds.from_config({k: v for k, v in default_cfg()["bounds"].items() if k != "max_count"})


# ---------------------------------------------------------------- strikes hit the guilty
def test_poisoned_knowledge_is_rolled_back_and_no_honest_client_is_struck(tmp_path):
    """The 1e30-prototype case with the bounds off: the fused prototypes are finite, every
    honest model turns NaN the round after; no strike, the knowledge rolls back."""
    fp = make("fedproto", tmp_path, "model.feature_dim=4", "bounds.prototypes=null")
    fp.max_strikes = 1
    fp.aggregate_train(1, [reply(0, protos(1.0)), reply(1, protos(1e30)), reply(2, protos(3.0))])
    assert not fp.dropped and fp.global_prototypes.prototypes.max() > 1e29  # accepted: poison
    nan = protos(np.nan)
    _, diagnostics = fp.aggregate_train(2, [reply(0, nan), reply(1, protos(1.0)), reply(2, nan)])
    assert dict(fp.dropped) == {"non_finite": 2}
    assert not fp.strikes and not fp.excluded and rounds.sample(fp, 3) == sorted(NODES)
    assert fp.global_prototypes is None and diagnostics["knowledge_rolled_back"] == 1.0
    # the broken honest models keep sending NaN, and report NaN losses (bad_metrics, checked
    # first): still not their clients' fault
    nan_loss = {"num_train": 5, "train_loss": float("nan")}
    fp.aggregate_train(3, [reply(0, nan, metrics=nan_loss), reply(1, protos(1.0)), reply(2, nan)])
    assert fp.dropped["bad_metrics"] == 1 and not fp.strikes and not fp.excluded
    # a single NaN reply in a healthy round is the client's own fault
    fp.aggregate_train(4, [reply(0, protos(1.0)), reply(1, nan), reply(2, protos(2.0))])
    assert fp.strikes == {1: 1} and fp.excluded == {1: 4}


def test_a_nan_majority_with_no_fusion_to_blame_strikes_the_clients():
    fd = make("fd", None, "server.max_strikes=1")
    nan = ClassLogits(np.full((2, 2), np.nan, np.float32), np.ones(2, np.int64))
    fd.aggregate_train(1, [reply(0, nan), reply(1, nan), reply(2, good_fd())])
    assert fd.excluded == {0: 1, 1: 1}


# ---------------------------------------------------------------- checkpoints
def zip_checkpoint(path, state: str, members: dict[str, bytes] | None = None):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("state.json", state)
        for name, data in (members or {}).items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize(
    ("state", "members"),
    [
        ('{"a": {"$float": {"x": 1}}}', None),  # TypeError in the tree layer
        ('{"a": {"$payload": "class_logits", "arrays": [1], "meta": {}}}', None),
        ('{"a": {"$payload": "class_logits", "arrays": {}, "meta": 5}}', None),
        ('{"a": {"$tuple": 5}}', None),
        ('{"a": {"$dict": [[1]]}}', None),
        ("[" * 100_000 + "]" * 100_000, None),  # RecursionError
        ('{"a": {"$array": "big"}}', {"big.npy": npy_declaring((2**36,))}),
        ('{"a": 1}', {"x.npy": b"\x93NUMPY garbage"}),
        ("\xff\xfe not json", None),
    ],
)
def test_any_damage_inside_a_checkpoint_is_one_line(tmp_path, state, members):
    from fedkd import checkpoint as ckpt_io
    from fedkd.errors import CheckpointError

    path = zip_checkpoint(tmp_path / "server.ckpt", state, members)
    with pytest.raises(CheckpointError) as err:
        ckpt_io.load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_strategy_state_that_does_not_fit_is_one_line_before_ray(tmp_path):
    from helpers import info_for

    from fedkd.errors import CheckpointError
    from server.resume_check import check_resume

    info = info_for("strategy=fedavg", "model=mlp")
    good = {
        "round": 2,
        "strategy_name": "fedavg",
        "strategy": {"base": {}, "weights": {"other-architecture": {}}},
        "recorder": {},
        "rng": {},
    }
    with pytest.raises(CheckpointError, match=r"^resume: the checkpoint of round 2 does not fit"):
        check_resume(info, good)
    with pytest.raises(CheckpointError, match="is of strategy 'fd', the run's is 'fedavg'"):
        check_resume(info, {**good, "strategy_name": "fd"})


def test_a_checkpoint_of_this_run_passes_the_resume_check(tmp_path):
    from helpers import info_for

    from fedkd import checkpoint as ckpt_io
    from server.checkpoint import rng_state
    from server.resume_check import check_resume

    fd = make("fd", tmp_path)
    three(fd, reply(1, good_fd(2.0)))
    fd.recorder.end_round(1, complete_upto=1)
    tree = {
        "round": 1,
        "strategy_name": "fd",
        "strategy": fd.state_dict(),
        "recorder": fd.recorder.state_dict(),
        "rng": rng_state(),
    }
    ckpt_io.save(tmp_path / "server.ckpt", tree)
    before = np.random.get_state()[1].copy()
    check_resume(info_for("num_rounds=4", "strategy=fd"), ckpt_io.load(tmp_path / "server.ckpt"))
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # nothing changed here


# ---------------------------------------------------------------- the end-to-end attacker
def test_count_claim_lies_about_counts_only():
    from fedkd.client import attacks
    from fedkd.config import compose

    cfg = compose(["num_clients=3", "attack.kind=count_claim", "attack.clients=[1]"])
    honest = Prototypes(np.ones((2, 4), np.float32), np.array([5, 0]))
    sent = attacks.apply(cfg, 1, 1, honest, RecordDict(), 2)
    np.testing.assert_array_equal(sent.counts, [2**62, 0])
    np.testing.assert_array_equal(sent.prototypes, honest.prototypes)
    metrics = {"num_train": 40}
    attacks.claim_count(cfg, 1, metrics)
    assert metrics == {"num_train": 2**62}
    attacks.claim_count(cfg, 0, other := {"num_train": 40})
    assert (
        other == {"num_train": 40} and attacks.apply(cfg, 0, 1, honest, RecordDict(), 2) is honest
    )
    with pytest.raises(ConfigError, match=r"attack.count must be an integer in \[0, 2\^63\)"):
        attacks.check_attack({**cfg, "attack": {**cfg["attack"], "count": -1}}, "prototypes", "x")


# ---------------------------------------------------------------- the start-up handshake
class AnsweringGrid:
    """A grid whose one node answers the start-up query with ``metrics``."""

    def __init__(self, metrics):
        self.metrics = metrics

    def send_and_receive(self, messages, timeout):
        content = RecordDict({wire.METRICS: MetricRecord({})})
        content.metric_records[wire.METRICS]._data.update(self.metrics)
        return [Message(content=content, metadata=metadata(0))]


@pytest.mark.parametrize(
    "metrics",
    [{"partition_id": 0}, {"partition_id": 1.5, "num_partitions": 3}, {"num_partitions": -1}],
)
def test_a_bad_handshake_answer_is_one_line(metrics, monkeypatch):
    from server import roster

    # the query messages need a running Flower app to be built; their content is not the test
    monkeypatch.setattr(
        roster, "Message", lambda **kwargs: Message(content=RecordDict(), metadata=metadata(0))
    )
    assert roster._ask(AnsweringGrid({"partition_id": 2, "num_partitions": 3}), [10], 1.0, None)[
        0
    ] == {10: (2, 3)}
    _, _, failed = roster._ask(AnsweringGrid(metrics), [10], 1.0, None)
    assert list(failed) == [10] and "node 10 answered the start-up query badly" in failed[10]


def test_a_count_within_bounds_is_capped_in_fedavg():
    avg = make("fedavg", None, "model=mlp")  # bounds.weight_cap=10
    key = next(iter(avg.weights))
    ones = ModelWeights({k: np.ones_like(v) for k, v in avg.weights[key].items()})
    threes = ModelWeights({k: np.full_like(v, 3) for k, v in avg.weights[key].items()})
    avg.aggregate_train(
        1,
        [
            reply(0, ones, metrics={"num_train": 100}),
            reply(1, threes, metrics={"num_train": 10**7}),
            reply(2, ones, metrics={"num_train": 100}),
        ],
    )
    # median claim 100: client 1 weighs 10 x 100 = 1000, so (100 + 3 * 1000 + 100) / 1200
    name = next(k for k, v in avg.weights[key].items() if v.dtype == np.float32)
    np.testing.assert_allclose(avg.weights[key][name], 3200 / 1200, rtol=1e-6)


def test_label_counts_within_bounds_are_capped_in_weighted_fd():
    fd = make("fd", None, "strategy.weighted=true", "bounds.weight_cap=2")
    counts = np.array([10, 10])
    fd.aggregate_train(
        1,
        [
            reply(0, ClassLogits(np.zeros((2, 2), np.float32), counts)),
            reply(1, ClassLogits(np.full((2, 2), 9, np.float32), np.array([10**6, 10**6]))),
            reply(2, ClassLogits(np.zeros((2, 2), np.float32), counts)),
        ],
    )
    # totals 20, 2e6, 20: median 20, limit 40, so client 1 counts [20, 20] per class:
    # (10 * 0 + 20 * 9 + 10 * 0) / 40 = 4.5
    np.testing.assert_allclose(fd.global_teacher.logits, 4.5)
