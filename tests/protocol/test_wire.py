"""Payloads survive the trip through Flower records; malformed records are refused."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedkd.errors import PayloadError
from fedkd.knowledge import ClassLogits, ModelWeights, Prototypes, PublicLogits, Votes
from protocol import wire

PAYLOADS = [
    PublicLogits(
        indices=np.array([0, 3, 5]), values=np.full((3, 4), 0.25, np.float32), space="probs"
    ),
    PublicLogits(
        indices=np.array([1]), values=np.array([[1.5, -2.0, 0.0, 3.0]], np.float32), space="logits"
    ),
    ClassLogits(
        logits=np.arange(16, dtype=np.float32).reshape(4, 4), counts=np.array([3, 0, 1, 2])
    ),
    Prototypes(prototypes=np.ones((4, 2), np.float32), counts=np.array([1, 1, 0, 2])),
    ModelWeights({"w": np.eye(2, dtype=np.float32), "b": np.zeros(2, np.float32)}),
    Votes(indices=np.array([4, 1]), votes=np.array([[2, 0], [-1, -1]])),
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=lambda p: p.kind)
def test_round_trip_through_records(payload):
    content = RecordDict()
    wire.put_payload(content, payload)
    back = wire.get_payload(content)
    assert type(back) is type(payload)
    original, restored = payload.to_arrays(), back.to_arrays()
    assert original.keys() == restored.keys()
    for key in original:
        np.testing.assert_array_equal(original[key], restored[key])
    assert back.meta() == payload.meta()
    assert wire.payload_bytes(content) >= sum(a.nbytes for a in original.values())


def test_no_knowledge_is_none():
    assert wire.get_payload(RecordDict()) is None


def test_arrays_without_meta_are_refused():
    content = RecordDict({wire.KNOWLEDGE: ArrayRecord()})
    with pytest.raises(PayloadError, match="knowledge_meta"):
        wire.get_payload(content)


def test_unknown_kind_is_refused():
    content = RecordDict(
        {
            wire.KNOWLEDGE: wire.arrays_to_record({"x": np.zeros(2)}),
            wire.KNOWLEDGE_META: ConfigRecord({"kind": "nonsense"}),
        }
    )
    with pytest.raises(PayloadError):
        wire.get_payload(content)


def test_missing_array_is_refused():
    content = RecordDict()
    wire.put_payload(content, PAYLOADS[2])
    del content.array_records[wire.KNOWLEDGE]["counts"]
    with pytest.raises(PayloadError):
        wire.get_payload(content)


@pytest.mark.parametrize(
    ("votes", "indices", "message"),
    [
        (np.array([[0], [5]]), np.array([0, 1]), "class ids"),
        (np.array([[0], [1]]), np.array([0, 0]), "duplicates"),
        (np.array([[0], [1]]), np.array([0, 9]), "out of range"),
        (np.array([[0.5], [1.0]]), np.array([0, 1]), "integer"),
        (np.array([[0]]), np.array([0, 1]), "rows"),
    ],
)
def test_votes_validation(votes, indices, message):
    with pytest.raises(PayloadError, match=message):
        Votes(indices=indices, votes=votes).validate(num_classes=4, num_public=5)


def test_eval_arrays_travel_apart_from_knowledge_and_are_not_counted_as_traffic():
    content = RecordDict()
    wire.put_payload(content, PAYLOADS[2])
    knowledge_only = wire.payload_bytes(content)
    counts = np.arange(16, dtype=np.int64).reshape(4, 4)
    content[wire.EVAL] = wire.arrays_to_record({wire.GLOBAL_CONFUSION: counts})
    assert wire.payload_bytes(content) == knowledge_only
    np.testing.assert_array_equal(wire.get_eval_arrays(content)[wire.GLOBAL_CONFUSION], counts)
    assert isinstance(wire.get_payload(content), ClassLogits)
    assert wire.get_eval_arrays(RecordDict()) == {}


def test_records_are_read_by_type_without_changing_the_message():
    """``records_of``/``get_record`` read what Flower's typed views read (same records, same
    sizes) and leave the RecordDict as it was; a record of another type under a key is not
    that key's record."""
    content = RecordDict()
    wire.put_payload(content, PAYLOADS[2])
    content[wire.EVAL] = wire.arrays_to_record({"c": np.ones((2, 2), np.int64)})
    content[wire.METRICS] = MetricRecord({"num_train": 3})
    content["odd"] = ConfigRecord({"x": 1})
    before = list(content.items())
    arrays = wire.records_of(content, ArrayRecord)
    assert arrays == dict(content.array_records)
    assert sorted(arrays) == [wire.EVAL, wire.KNOWLEDGE]
    assert wire.reply_bytes(content) == sum(r.count_bytes() for r in content.array_records.values())
    assert wire.get_record(content, wire.METRICS, MetricRecord)["num_train"] == 3
    assert wire.get_record(content, "odd", MetricRecord) is None
    assert wire.get_record(content, "absent", ArrayRecord) is None
    assert list(content.items()) == before


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(()),
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.zeros((0, 3), np.int64),
        np.array([True, False]),
        np.arange(5, dtype=">f4"),
        np.ones(3, np.complex64),
        np.arange(6, dtype=np.uint8).reshape(2, 3).T,  # not C-contiguous
        np.array(["a", "bc"]),  # not numeric: Flower's own path
    ],
    ids=lambda a: f"{a.dtype.str}{list(a.shape)}",
)
def test_records_hold_the_bytes_flower_writes(array):
    ours = wire.arrays_to_record({"x": array})["x"]
    flowers = Array(np.require(array, requirements="C"))
    assert (ours.dtype, ours.shape, ours.stype, ours.data) == (
        flowers.dtype, flowers.shape, flowers.stype, flowers.data,
    )  # fmt: skip
    if array.dtype.kind != "U":
        np.testing.assert_array_equal(
            wire.record_to_arrays(wire.arrays_to_record({"x": array}))["x"], array
        )


def test_a_known_header_with_the_wrong_number_of_bytes_is_still_refused():
    good = wire.arrays_to_record({"x": np.ones((4, 4), np.float32)})["x"]
    wire.record_to_arrays(ArrayRecord({"x": good}))  # its header is now known
    for data in (good.data[:-4], good.data + b"\0" * 4):
        short = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=data)
        with pytest.raises(PayloadError, match="bytes follow it"):
            wire.record_to_arrays(ArrayRecord({"x": short}))
