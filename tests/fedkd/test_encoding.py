"""Compact knowledge encodings (fedkd/encoding.py) against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import RecordDict

from fedkd.config import check_config, compose
from fedkd.encoding import decode, encode
from fedkd.errors import ConfigError, PayloadError
from fedkd.knowledge import ClassLogits, ModelWeights, Prototypes, PublicLogits, Votes
from protocol import wire


def _round_trip(payload, **spec):
    """The decoded payload and the bytes of array data on the wire (Flower's count adds
    each array's .npy header and key)."""
    content = RecordDict()
    wire.put_payload(content, payload, spec)
    sent = wire.record_to_arrays(content[wire.KNOWLEDGE])
    return wire.get_payload(content), sum(a.nbytes for a in sent.values())


def test_float32_is_the_wire_as_before():
    payload = PublicLogits(np.arange(3), np.ones((3, 4), np.float32), "logits")
    arrays, meta = encode(payload.to_arrays(), {"kind": payload.kind, "space": "logits"}, None)
    assert "encoding" not in meta and arrays["values"].dtype == np.float32


def test_float16_halves_the_bytes_and_clips_to_its_range():
    values = np.array([[1.0, -2.5, 1e6], [0.1, 0.0, -1e9]], np.float32)
    got, size = _round_trip(PublicLogits(np.array([4, 7]), values, "logits"), encoding="float16")
    np.testing.assert_array_equal(got.indices, [4, 7])  # integer arrays untouched
    assert got.values.dtype == np.float32
    np.testing.assert_allclose(got.values[:, :2], values[:, :2], rtol=1e-3)
    assert got.values[0, 2] == 65504.0 and got.values[1, 2] == -65504.0  # clipped, not Inf
    assert size == 2 * 8 + 6 * 2  # int64 indices kept, float16 values


def test_int8_per_row_scale_hand_computed():
    logits = np.array([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [3.0, 3.0, -3.0]], np.float32)
    arrays, meta = encode(
        {"logits": logits, "counts": np.array([1, 0, 2])},
        {"kind": "class_logits"},
        {"encoding": "int8"},
    )
    # row 0: scale = 2/127; 1 -> 63.5 -> 64 (round half to even: 64), -2 -> -127, 0.5 -> 31.75 -> 32
    np.testing.assert_array_equal(arrays["logits"][0], [64, -127, 32])
    np.testing.assert_allclose(arrays["logits.scale"], [2 / 127, 1.0, 3 / 127], rtol=1e-6)
    assert arrays["counts"].dtype.kind == "i" and "counts.scale" not in arrays
    plain, own = decode(arrays, meta)
    assert own == {"kind": "class_logits"}
    np.testing.assert_allclose(plain["logits"][0], [64 * 2 / 127, -2.0, 32 * 2 / 127], rtol=1e-6)
    np.testing.assert_array_equal(plain["logits"][1], [0.0, 0.0, 0.0])  # a zero row stays zero
    assert np.abs(plain["logits"] - logits).max() <= 0.5 * 3 / 127 + 1e-7  # half a step at most


def test_topk_keeps_the_largest_scores_and_fills_the_rest_hand_computed():
    logits = np.array([[4.0, 1.0, 3.0, -2.0], [0.0, 5.0, 1.0, 2.0]], np.float32)
    got, _ = _round_trip(
        ClassLogits(np.vstack([logits, np.zeros((2, 4), np.float32)]), np.array([3, 1, 0, 0])),
        encoding="topk",
        top_k=2,
    )
    # row 0 keeps 4 and 3; dropped 1 and -2 -> fill -0.5; row 1 keeps 5 and 2, fill (0+1)/2
    np.testing.assert_allclose(got.logits[0], [4.0, -0.5, 3.0, -0.5])
    np.testing.assert_allclose(got.logits[1], [0.5, 5.0, 0.5, 2.0])
    np.testing.assert_array_equal(got.counts, [3, 1, 0, 0])
    probs = np.array([[0.5, 0.3, 0.15, 0.05]], np.float32)
    got, _ = _round_trip(PublicLogits(np.array([0]), probs, "probs"), encoding="topk", top_k=2)
    np.testing.assert_allclose(got.values, [[0.5, 0.3, 0.1, 0.1]], rtol=1e-6)  # still sums to 1
    assert got.space == "probs"


def test_lossy_probabilities_are_renormalised_so_they_pass_validation():
    # 10 classes: int8 steps of 0.5/127 leave the row sum off by more than the tolerance
    probs = np.array([[0.5] + [0.5 / 9] * 9, [0.1] * 10], np.float32)
    arrays, _ = encode(
        {"indices": np.array([0, 1]), "values": probs},
        {"kind": "public_logits", "space": "probs"},
        {"encoding": "int8"},
    )
    # row 0: scale 0.5/127, 0.5/9 -> 14.11 -> 14; sum = (127 + 9 * 14) * 0.5/127 = 0.99606
    np.testing.assert_array_equal(arrays["values"], [[127] + [14] * 9, [127] * 10])
    raw_sum = (127 + 9 * 14) * 0.5 / 127
    got, _ = _round_trip(PublicLogits(np.array([0, 1]), probs, "probs"), encoding="int8")
    np.testing.assert_allclose(got.values[0, 0], 0.5 / raw_sum, rtol=1e-6)
    np.testing.assert_allclose(got.values[0, 1:], 14 * 0.5 / 127 / raw_sum, rtol=1e-6)
    np.testing.assert_allclose(got.values[1], 0.1, rtol=1e-6)  # 0.1 is exactly 127 steps
    np.testing.assert_allclose(got.values.sum(axis=1), 1.0, atol=1e-6)
    got, _ = _round_trip(PublicLogits(np.array([0, 1]), probs, "probs"), encoding="float16")
    np.testing.assert_allclose(got.values.sum(axis=1), 1.0, atol=1e-6)
    # a table that never summed to 1 is not "corrected": validation rejects it as unencoded
    content = RecordDict()
    wire.put_knowledge(
        content,
        {"indices": np.array([0]), "values": np.full((1, 10), 0.2, np.float32)},
        {"kind": "public_logits", "space": "probs"},
        {"encoding": "int8"},
    )
    with pytest.raises(PayloadError, match="probability rows must sum to 1"):
        wire.get_payload(content).validate(num_classes=10)
    logits = np.array([[0.5] + [0.5 / 9] * 9], np.float32)  # logits are not rescaled
    got, _ = _round_trip(PublicLogits(np.array([0]), logits, "logits"), encoding="int8")
    np.testing.assert_allclose(got.values.sum(), raw_sum, rtol=1e-6)


def test_topk_leaves_other_arrays_and_small_tables_alone():
    protos = Prototypes(np.ones((3, 5), np.float32), np.array([1, 2, 3]))
    got, _ = _round_trip(protos, encoding="topk", top_k=2)
    np.testing.assert_array_equal(got.prototypes, protos.prototypes)
    wide = PublicLogits(np.arange(2), np.ones((2, 3), np.float32), "logits")
    got, _ = _round_trip(wide, encoding="topk", top_k=3)  # k >= C: nothing to drop
    np.testing.assert_array_equal(got.values, wide.values)


def test_every_encoding_shrinks_a_public_logits_payload_as_expected():
    rng = np.random.default_rng(0)
    payload = PublicLogits(np.arange(100), rng.normal(size=(100, 10)).astype(np.float32), "logits")
    sizes = {
        e: _round_trip(payload, encoding=e, top_k=3)[1]
        for e in ("float32", "float16", "int8", "topk")
    }
    assert sizes["float32"] == 800 + 4000  # int64 indices + float32 values
    assert sizes["float16"] == 800 + 2000
    assert sizes["int8"] == 800 + 1000 + 400  # + one float32 scale per row
    assert sizes["topk"] == 800 + 1600 + 300  # 3 values + 1 fill (float32), 3 uint8 ids per row
    assert max(sizes["topk"], sizes["int8"]) < sizes["float16"] < sizes["float32"]


def test_weights_and_votes_travel_under_float16_and_int8():
    weights = ModelWeights({"w": np.array([[0.5, -1.0]], np.float32), "n": np.array(3)})
    for encoding in ("float16", "int8"):
        got, _ = _round_trip(weights, encoding=encoding)
        np.testing.assert_allclose(got.arrays["w"], [[0.5, -1.0]], atol=1 / 127)
        assert int(got.arrays["n"]) == 3
    votes = Votes(np.arange(3), np.array([[1], [2], [0]]))
    got, _ = _round_trip(votes, encoding="int8")
    np.testing.assert_array_equal(got.votes, votes.votes)


def _encoded(spec, payload):
    content = RecordDict()
    wire.put_payload(content, payload, spec)
    arrays = wire.record_to_arrays(content[wire.KNOWLEDGE])
    return arrays, dict(content[wire.KNOWLEDGE_META])


@pytest.mark.parametrize(
    "spec, damage, message",
    [
        ({"encoding": "int8"}, lambda a, m: a.pop("logits.scale"), "scale"),
        ({"encoding": "int8"}, lambda a, m: a.update({"logits.scale": np.full(2, np.nan, np.float32)}), "finite"),
        ({"encoding": "float16"}, lambda a, m: a.update({"logits": a["logits"].astype(np.float32)}), "float16"),
        ({"encoding": "topk", "top_k": 1}, lambda a, m: a.update({"logits.index": np.full((2, 1), 9, np.uint8)}), "column ids"),
        ({"encoding": "topk", "top_k": 1}, lambda a, m: a.pop("logits.index"), "needs"),
        ({"encoding": "topk", "top_k": 1}, lambda a, m: a.update({"logits.values": np.ones((2, 1), np.float32)}), "inconsistent"),
        ({"encoding": "int8"}, lambda a, m: m.update({"encoding": "zip"}), "unknown encoding"),
    ],
)  # fmt: skip
def test_a_malformed_encoded_record_is_rejected_with_its_reason(spec, damage, message):
    arrays, meta = _encoded(spec, ClassLogits(np.ones((2, 2), np.float32), np.array([1, 1])))
    damage(arrays, meta)
    content = RecordDict()
    content[wire.KNOWLEDGE] = wire.arrays_to_record(arrays)
    from flwr.app import ConfigRecord

    content[wire.KNOWLEDGE_META] = ConfigRecord(meta)
    with pytest.raises(PayloadError, match=message) as info:
        wire.get_payload(content)
    assert info.value.reason == "malformed"


def test_config_errors_name_the_key():
    check_config(compose(["knowledge.encoding=topk", "knowledge.top_k=5"]))
    with pytest.raises(ConfigError, match="knowledge.encoding must be one of"):
        check_config(compose(["knowledge.encoding=bf16"]))
    with pytest.raises(ConfigError, match="knowledge.top_k must be an integer >= 1"):
        check_config(compose(["knowledge.top_k=0"]))


@pytest.mark.slow
def test_an_int8_dsfl_run_sends_what_int8_weighs_and_rejects_nothing(tmp_path, sim_session):
    """End to end on probabilities (dsfl): every upload decodes, passes the sum-to-one
    check (int8 rounding is renormalised) and weighs what an int8 payload weighs."""
    import json

    from fedkd.client.runtime import data_key, federated_data

    overrides = ["strategy=dsfl", "num_clients=3", "num_rounds=2", "knowledge.encoding=int8"]
    run = tmp_path / "int8"
    result = sim_session.run(
        [*overrides, "logging.progress=false", "logging.table=false",
         "logging.tensorboard=false", "checkpoint.every=0", f"hydra.run.dir={run}"],
    )  # fmt: skip
    assert result.status == 0, result.last_line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert all(r["replies"] == 3 and r["rejected"] == 0 for r in summary["rounds"])
    cfg = compose(overrides)
    fed = federated_data(data_key(cfg))
    rows = min(int(cfg["strategy"]["open_size"]), len(fed.public_x))
    probs = np.full((rows, fed.num_classes), 1.0 / fed.num_classes, np.float32)

    def wire_bytes(spec):  # Flower's count of one upload: data, .npy headers and keys
        content = RecordDict()
        wire.put_payload(content, PublicLogits(np.arange(rows), probs, "probs"), spec)
        return wire.payload_bytes(content)

    int8_bytes, f32_bytes = wire_bytes({"encoding": "int8"}), wire_bytes(None)
    assert int8_bytes < f32_bytes / 2
    assert summary["bytes_per_round"]["bytes_up"] == pytest.approx(3 * int8_bytes)
    # the server's download (round 2: the fused targets, plus the next round's request)
    # is encoded too: unencoded, the targets alone would weigh f32_bytes per client
    assert 0 < summary["rounds"][1]["bytes_down"] < 3 * f32_bytes
