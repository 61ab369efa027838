"""Payloads survive the trip through Flower records; malformed records are refused."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

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
