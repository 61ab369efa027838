"""Knowledge payloads: round trips, one test per validation failure, decode."""

from __future__ import annotations

import numpy as np
import pytest

from fedkd.errors import PayloadError
from fedkd.knowledge import (
    PAYLOADS,
    ClassLogits,
    ModelWeights,
    Prototypes,
    PublicLogits,
    decode,
)

C = 3


def probs_payload() -> PublicLogits:
    values = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], dtype=np.float32)
    return PublicLogits(indices=np.array([4, 0], dtype=np.int64), values=values, space="probs")


def logits_payload() -> PublicLogits:
    values = np.array([[-3.0, 7.5, 0.0], [2.0, 2.0, 2.0]], dtype=np.float32)
    return PublicLogits(indices=np.array([1, 2], dtype=np.int64), values=values, space="logits")


def class_logits_payload() -> ClassLogits:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [0.5, 0.5, 3.0]], dtype=np.float32)
    return ClassLogits(logits=logits, counts=np.array([4, 0, 2], dtype=np.int64))


def prototypes_payload() -> Prototypes:
    protos = np.arange(C * 2, dtype=np.float32).reshape(C, 2)
    return Prototypes(prototypes=protos, counts=np.array([1, 2, 0], dtype=np.int64))


def weights_payload() -> ModelWeights:
    return ModelWeights(
        arrays={
            "fc.weight": np.ones((2, 3), dtype=np.float32),
            "bn.num_batches_tracked": np.array(5, dtype=np.int64),
        }
    )


ALL = [probs_payload, logits_payload, class_logits_payload, prototypes_payload, weights_payload]


# ---------------------------------------------------------------- round trips / registry
def test_registry_kinds() -> None:
    assert PAYLOADS.names() == [
        "class_logits",
        "model_weights",
        "prototypes",
        "public_logits",
        "votes",
    ]
    for kind in PAYLOADS.names():
        assert PAYLOADS.get(kind).kind == kind


@pytest.mark.parametrize("make", ALL)
def test_round_trip(make) -> None:
    payload = make()
    arrays, meta = payload.to_arrays(), payload.meta()
    for value in meta.values():
        assert isinstance(value, (str, int, float))
    again = decode(payload.kind, arrays, meta)
    assert type(again) is type(payload)
    assert again.meta() == meta
    assert again.to_arrays().keys() == arrays.keys()
    for key, value in arrays.items():
        assert again.to_arrays()[key].dtype == value.dtype
        np.testing.assert_array_equal(again.to_arrays()[key], value)


def test_meta_and_keys() -> None:
    assert probs_payload().meta() == {"space": "probs"}
    assert logits_payload().meta() == {"space": "logits"}
    assert set(probs_payload().to_arrays()) == {"indices", "values"}
    assert set(class_logits_payload().to_arrays()) == {"logits", "counts"}
    assert set(prototypes_payload().to_arrays()) == {"prototypes", "counts"}
    assert class_logits_payload().meta() == {} == prototypes_payload().meta()


def test_nbytes() -> None:
    assert class_logits_payload().nbytes == 3 * 3 * 4 + 3 * 8
    assert probs_payload().nbytes == 2 * 8 + 2 * 3 * 4
    assert weights_payload().nbytes == 6 * 4 + 8


def test_valid_payloads_pass() -> None:
    probs_payload().validate(num_classes=C, num_public=5, max_bytes=40)
    logits_payload().validate(num_classes=C, num_public=3)
    logits_payload().validate(num_classes=C)  # no public size given: only the lower bound
    class_logits_payload().validate(num_classes=C, max_bytes=60)
    prototypes_payload().validate(num_classes=C, feature_dim=2)
    prototypes_payload().validate(num_classes=C)
    weights_payload().validate(num_classes=C, max_bytes=32)
    PublicLogits(np.zeros(0, np.int32), np.zeros((0, C), np.float64), "probs").validate(
        num_classes=C, num_public=0
    )


# ---------------------------------------------------------------- from_arrays errors
def test_from_arrays_missing_key() -> None:
    with pytest.raises(PayloadError, match=r"public_logits: missing array key\(s\) \['values'\]"):
        PublicLogits.from_arrays({"indices": np.zeros(1, np.int64)}, {"space": "probs"})


def test_from_arrays_extra_key() -> None:
    arrays = {**class_logits_payload().to_arrays(), "extra": np.zeros(1)}
    with pytest.raises(PayloadError, match=r"unexpected array key\(s\) \['extra'\]"):
        ClassLogits.from_arrays(arrays, {})


def test_from_arrays_missing_space() -> None:
    with pytest.raises(PayloadError, match=r"missing meta key\(s\) \['space'\]"):
        PublicLogits.from_arrays(probs_payload().to_arrays(), {})


def test_from_arrays_extra_meta() -> None:
    with pytest.raises(PayloadError, match=r"unexpected meta key\(s\) \['space'\]"):
        Prototypes.from_arrays(prototypes_payload().to_arrays(), {"space": "features"})


def test_from_arrays_bad_space() -> None:
    with pytest.raises(PayloadError, match="space must be one of"):
        PublicLogits.from_arrays(probs_payload().to_arrays(), {"space": "softmax"})


def test_decode_unknown_kind() -> None:
    with pytest.raises(PayloadError, match="unknown payload kind 'ballots'; known: class_logits"):
        decode("ballots", {}, {})


# ---------------------------------------------------------------- PublicLogits validation
def public(indices, values, space="logits") -> PublicLogits:
    return PublicLogits(indices=np.asarray(indices), values=np.asarray(values), space=space)


GOOD_VALUES = np.array([[0.2, 0.3, 0.5]], dtype=np.float32)


def test_public_indices_wrong_ndim() -> None:
    with pytest.raises(
        PayloadError, match=r"public_logits.indices: expected 1-D array, got shape \[1, 1\]"
    ):
        public(np.zeros((1, 1), np.int64), GOOD_VALUES).validate(num_classes=C)


def test_public_values_wrong_ndim() -> None:
    with pytest.raises(
        PayloadError, match=r"public_logits.values: expected 2-D array, got shape \[3\]"
    ):
        public(np.zeros(1, np.int64), GOOD_VALUES[0]).validate(num_classes=C)


def test_public_values_not_array() -> None:
    with pytest.raises(PayloadError, match="values: expected a numpy array, got list"):
        PublicLogits(np.zeros(1, np.int64), [[0.0, 1.0, 0.0]], "logits").validate(num_classes=C)


@pytest.mark.parametrize("dtype", [np.int64, np.float16, np.bool_])
def test_public_values_wrong_dtype(dtype) -> None:
    with pytest.raises(PayloadError, match="values: dtype must be float32 or float64"):
        public(np.zeros(1, np.int64), GOOD_VALUES.astype(dtype)).validate(num_classes=C)


@pytest.mark.parametrize("dtype", [np.float32, np.bool_])
def test_public_indices_wrong_dtype(dtype) -> None:
    with pytest.raises(PayloadError, match="indices: dtype must be an integer type"):
        public(np.zeros(1, dtype), GOOD_VALUES).validate(num_classes=C)


def test_public_row_count_mismatch() -> None:
    with pytest.raises(PayloadError, match="1 value rows but 2 indices"):
        public(np.array([0, 1]), GOOD_VALUES).validate(num_classes=C)


def test_public_class_count_mismatch() -> None:
    with pytest.raises(PayloadError, match="values: expected 10 classes, got 3"):
        public(np.array([0]), GOOD_VALUES).validate(num_classes=10)


def test_public_index_too_large() -> None:
    with pytest.raises(PayloadError, match=r"indices: out of range \[0, 5\): 5..5"):
        public(np.array([5]), GOOD_VALUES).validate(num_classes=C, num_public=5)


def test_public_index_negative() -> None:
    with pytest.raises(PayloadError, match=r"indices: out of range \[0, num_public\): -1"):
        public(np.array([-1]), GOOD_VALUES).validate(num_classes=C)


def test_public_duplicate_indices() -> None:
    values = np.repeat(GOOD_VALUES, 2, axis=0)
    with pytest.raises(PayloadError, match="indices: contains duplicates"):
        public(np.array([3, 3]), values).validate(num_classes=C, num_public=5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_public_non_finite(bad) -> None:
    values = np.array([[0.0, bad, 1.0]], dtype=np.float32)
    with pytest.raises(PayloadError, match="values: contains NaN or Inf"):
        public(np.array([0]), values).validate(num_classes=C)


def test_public_probs_out_of_range() -> None:
    values = np.array([[1.2, -0.2, 0.0]], dtype=np.float32)  # sums to 1 but not in [0, 1]
    with pytest.raises(PayloadError, match=r"probabilities outside \[0, 1\]"):
        public(np.array([0]), values, "probs").validate(num_classes=C)


def test_public_probs_rows_not_normalised() -> None:
    values = np.array([[0.2, 0.3, 0.5], [0.2, 0.3, 0.498]], dtype=np.float32)
    with pytest.raises(PayloadError, match=r"probability rows must sum to 1 \(max error 0.002"):
        public(np.array([0, 1]), values, "probs").validate(num_classes=C)
    values[1, 2] = 0.4995  # within the 1e-3 tolerance
    public(np.array([0, 1]), values, "probs").validate(num_classes=C)


def test_public_logits_need_not_be_probabilities() -> None:
    values = np.array([[-5.0, 9.0, 0.1]], dtype=np.float64)
    public(np.array([0]), values, "logits").validate(num_classes=C)


def test_public_bad_space() -> None:
    with pytest.raises(PayloadError, match="space must be one of"):
        public(np.array([0]), GOOD_VALUES, "log_probs").validate(num_classes=C)


def test_public_too_many_bytes() -> None:
    with pytest.raises(PayloadError, match="public_logits: 40 bytes exceeds max_bytes=39"):
        probs_payload().validate(num_classes=C, max_bytes=39)


# ---------------------------------------------------------------- ClassLogits validation
def class_logits(logits, counts) -> ClassLogits:
    return ClassLogits(logits=np.asarray(logits), counts=np.asarray(counts))


def test_class_logits_not_square() -> None:
    with pytest.raises(PayloadError, match="class_logits.logits: expected num_classes=3, got 4"):
        class_logits(np.zeros((3, 4), np.float32), np.ones(3, np.int64)).validate(num_classes=C)


def test_class_logits_class_count_mismatch() -> None:
    with pytest.raises(PayloadError, match="class_logits.logits: expected 4 class rows, got 3"):
        class_logits_payload().validate(num_classes=4)


def test_class_logits_counts_length() -> None:
    with pytest.raises(PayloadError, match="class_logits.counts: expected 3 classes, got 2"):
        class_logits(np.zeros((3, 3), np.float32), np.ones(2, np.int64)).validate(num_classes=C)


def test_class_logits_negative_counts() -> None:
    with pytest.raises(PayloadError, match="counts must be non-negative, got min -1"):
        class_logits(np.zeros((3, 3), np.float32), np.array([1, -1, 0])).validate(num_classes=C)


def test_class_logits_float_counts() -> None:
    with pytest.raises(PayloadError, match="class_logits.counts: dtype must be an integer type"):
        class_logits(np.zeros((3, 3), np.float32), np.ones(3, np.float32)).validate(num_classes=C)


def test_class_logits_counts_wrong_ndim() -> None:
    with pytest.raises(PayloadError, match="class_logits.counts: expected 1-D array"):
        class_logits(np.zeros((3, 3), np.float32), np.ones((3, 1), np.int64)).validate(
            num_classes=C
        )


def test_class_logits_nan_in_unseen_row_still_fails() -> None:
    payload = class_logits_payload()
    payload.logits[1, 0] = np.nan  # row 1 has count 0 but must still be finite
    with pytest.raises(PayloadError, match="class_logits.logits: contains NaN or Inf"):
        payload.validate(num_classes=C)


def test_class_logits_too_many_bytes() -> None:
    with pytest.raises(PayloadError, match="class_logits: 60 bytes exceeds max_bytes=59"):
        class_logits_payload().validate(num_classes=C, max_bytes=59)


# ---------------------------------------------------------------- Prototypes validation
def test_prototypes_feature_dim_mismatch() -> None:
    with pytest.raises(PayloadError, match="prototypes.prototypes: expected feature_dim=4, got 2"):
        prototypes_payload().validate(num_classes=C, feature_dim=4)


def test_prototypes_class_count_mismatch() -> None:
    with pytest.raises(PayloadError, match="expected 2 class rows, got 3"):
        prototypes_payload().validate(num_classes=2)


def test_prototypes_non_finite() -> None:
    payload = prototypes_payload()
    payload.prototypes[2, 1] = np.inf
    with pytest.raises(PayloadError, match="prototypes.prototypes: contains NaN or Inf"):
        payload.validate(num_classes=C)


def test_prototypes_wrong_dtype() -> None:
    payload = Prototypes(prototypes=np.zeros((C, 2), np.int32), counts=np.ones(C, np.int64))
    with pytest.raises(PayloadError, match="dtype must be float32 or float64, got int32"):
        payload.validate(num_classes=C)


def test_prototypes_negative_counts() -> None:
    payload = Prototypes(prototypes=np.zeros((C, 2), np.float32), counts=np.array([0, -2, 1]))
    with pytest.raises(PayloadError, match="prototypes.counts: counts must be non-negative"):
        payload.validate(num_classes=C)


# ---------------------------------------------------------------- ModelWeights validation
def test_weights_non_finite() -> None:
    payload = ModelWeights(arrays={"w": np.array([1.0, np.nan], dtype=np.float32)})
    with pytest.raises(PayloadError, match="model_weights.w: contains NaN or Inf"):
        payload.validate(num_classes=C)


def test_weights_too_many_bytes() -> None:
    with pytest.raises(PayloadError, match="model_weights: 32 bytes exceeds max_bytes=31"):
        weights_payload().validate(num_classes=C, max_bytes=31)


def test_weights_empty() -> None:
    with pytest.raises(PayloadError, match="model_weights: no arrays"):
        ModelWeights(arrays={}).validate(num_classes=C)


def test_payloads_are_frozen() -> None:
    payload = probs_payload()
    with pytest.raises(AttributeError):
        payload.space = "logits"  # type: ignore[misc]
