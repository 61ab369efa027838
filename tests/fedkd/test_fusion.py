"""Fusion functions against hand-computed numbers (arrays and results written literally)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fedkd.errors import ConfigError, PayloadError
from fedkd.fusion import (
    REDUCERS,
    class_mean,
    era,
    leave_one_out,
    mean,
    median,
    prototype_mean,
    public_mean,
    reduce,
    sharpen_entropy,
    softmax,
    trimmed_mean,
)

# ---------------------------------------------------------------- reducers
V3 = np.array([[1.0, 10.0], [2.0, 20.0], [6.0, 60.0]])  # K = 3 clients, 2 coordinates


def test_reducer_registry() -> None:
    assert REDUCERS.names() == ["gated_mean", "mean", "median", "trimmed_mean"]


def test_mean() -> None:
    assert_allclose(mean(V3, None), [3.0, 30.0])  # (1+2+6)/3, (10+20+60)/3


def test_weighted_mean() -> None:
    # w = [1, 1, 2]: (1 + 2 + 2*6)/4 = 3.75, (10 + 20 + 2*60)/4 = 37.5
    assert_allclose(mean(V3, np.array([1.0, 1.0, 2.0])), [3.75, 37.5])
    # weights need not be normalised: [2, 2, 4] gives the same
    assert_allclose(mean(V3, np.array([2, 2, 4])), [3.75, 37.5])


def test_mean_keeps_float32() -> None:
    assert mean(V3.astype(np.float32), None).dtype == np.float32


def test_median() -> None:
    assert_allclose(median(V3, None), [2.0, 20.0])
    # even K: midpoint of the two middle values, 4 clients [1, 2, 6, 7] -> 4
    assert_allclose(median(np.array([[1.0], [7.0], [2.0], [6.0]]), None), [4.0])


def test_trimmed_mean_drops_extremes() -> None:
    v = np.array([[1.0], [2.0], [3.0], [4.0], [100.0]])
    # trim 0.2, K = 5: floor(1.0) = 1 per side -> mean(2, 3, 4) = 3
    assert_allclose(trimmed_mean(v, None, trim=0.2), [3.0])
    # default trim 0.1, K = 5: floor(0.5) = 0 -> plain mean 110/5 = 22
    assert_allclose(trimmed_mean(v, None), [22.0])


def test_trimmed_mean_is_per_coordinate() -> None:
    v = np.array([[1.0, 9.0], [5.0, 5.0], [9.0, 1.0]])
    # trim 0.34, K = 3: floor(1.02) = 1 per side; each column keeps its own middle: [5, 5]
    assert_allclose(trimmed_mean(v, None, trim=0.34), [5.0, 5.0])


def test_trimmed_mean_floor_is_robust_to_float_error() -> None:
    v = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0], [8.0], [1000.0]])
    # trim 0.3, K = 10: 0.3 * 10 = 3 (floating point gives 3.0000000000000004) -> drop 3 per
    # side, keep [3, 4, 5, 6] -> 4.5
    assert_allclose(trimmed_mean(v, None, trim=0.3), [4.5])


def test_single_client_returns_its_values() -> None:
    one = np.array([[0.5, -2.0]])
    for name in ("mean", "median", "trimmed_mean"):
        assert_allclose(reduce(name, one), [0.5, -2.0])
    assert_allclose(trimmed_mean(one, None, trim=0.4), [0.5, -2.0])


def test_reducer_errors() -> None:
    with pytest.raises(ConfigError, match=r"trim must be in \[0, 0.5\), got 0.5"):
        trimmed_mean(V3, None, trim=0.5)
    with pytest.raises(ConfigError, match="reducer 'median' does not take weights"):
        median(V3, np.ones(3))
    with pytest.raises(ConfigError, match="reducer 'trimmed_mean' does not take weights"):
        reduce("trimmed_mean", V3, np.ones(3))
    with pytest.raises(ConfigError, match="unknown reducer 'mode'"):
        reduce("mode", V3)
    with pytest.raises(ConfigError, match="reducer 'mean' has no param 'trim'"):
        reduce("mean", V3, params={"trim": 0.1})
    with pytest.raises(PayloadError, match="weights must be non-negative"):
        mean(V3, np.array([1.0, -1.0, 1.0]))
    with pytest.raises(PayloadError, match=r"weights shape \[2\] != \[3\]"):
        mean(V3, np.ones(2))
    with pytest.raises(PayloadError, match="nothing to reduce"):
        mean(np.zeros((0, 2)), None)


def test_reduce_passes_params() -> None:
    v = np.array([[1.0], [2.0], [3.0], [4.0], [100.0]])
    assert_allclose(reduce("trimmed_mean", v, params={"trim": 0.2}), [3.0])


# ---------------------------------------------------------------- FD class logits
# K = 3 clients, C = 2 classes. Client 0 never saw class 1, client 2 never saw class 0.
FD_LOGITS = np.array(
    [
        [[2.0, 0.0], [0.0, 0.0]],  # client 0, row 1 unused (count 0)
        [[4.0, 2.0], [1.0, 3.0]],  # client 1
        [[9.0, 9.0], [3.0, 5.0]],  # client 2, row 0 unused (count 0)
    ],
    dtype=np.float32,
)
FD_COUNTS = np.array([[4, 0], [1, 1], [0, 3]])


def test_class_mean_unweighted() -> None:
    teacher, present = class_mean(FD_LOGITS, FD_COUNTS)
    # row 0 over clients 0, 1: ([2, 0] + [4, 2]) / 2 = [3, 1]
    # row 1 over clients 1, 2: ([1, 3] + [3, 5]) / 2 = [2, 4]
    assert_allclose(teacher, [[3.0, 1.0], [2.0, 4.0]])
    assert_array_equal(present, [True, True])
    assert teacher.dtype == np.float32


def test_class_mean_weighted_by_counts() -> None:
    teacher, _ = class_mean(FD_LOGITS, FD_COUNTS, weighted=True)
    # row 0: (4*[2, 0] + 1*[4, 2]) / 5 = [12/5, 2/5]
    # row 1: (1*[1, 3] + 3*[3, 5]) / 4 = [10/4, 18/4]
    assert_allclose(teacher, [[2.4, 0.4], [2.5, 4.5]], rtol=1e-6)


def test_class_mean_missing_class() -> None:
    logits = np.array([[[1.0, 2.0, 3.0]] * 3, [[5.0, 6.0, 7.0]] * 3])  # K=2, C=3
    counts = np.array([[1, 0, 0], [1, 2, 0]])
    teacher, present = class_mean(logits, counts)
    assert_array_equal(present, [True, True, False])
    assert_allclose(teacher, [[3.0, 4.0, 5.0], [5.0, 6.0, 7.0], [0.0, 0.0, 0.0]])


def test_class_mean_median_reducer() -> None:
    logits = np.array([[[0.0, 0.0]] * 2, [[1.0, 1.0]] * 2, [[50.0, -50.0]] * 2])  # K=3, C=2
    counts = np.ones((3, 2), dtype=np.int64)
    teacher, _ = class_mean(logits, counts, reducer="median")
    assert_allclose(teacher, [[1.0, 0.0], [1.0, 0.0]])  # median of (0, 1, 50) and (0, 1, -50)


def test_class_mean_single_client() -> None:
    teacher, present = class_mean(FD_LOGITS[:1], FD_COUNTS[:1])
    assert_allclose(teacher, [[2.0, 0.0], [0.0, 0.0]])
    assert_array_equal(present, [True, False])


def test_leave_one_out() -> None:
    teachers, present = leave_one_out(FD_LOGITS, FD_COUNTS)
    # client 0 sees clients 1, 2: row 0 only client 1 -> [4, 2]; row 1 -> ([1,3]+[3,5])/2 = [2, 4]
    # client 1 sees clients 0, 2: row 0 only client 0 -> [2, 0]; row 1 only client 2 -> [3, 5]
    # client 2 sees clients 0, 1: row 0 -> ([2,0]+[4,2])/2 = [3, 1]; row 1 only client 1 -> [1, 3]
    expected = [
        [[4.0, 2.0], [2.0, 4.0]],
        [[2.0, 0.0], [3.0, 5.0]],
        [[3.0, 1.0], [1.0, 3.0]],
    ]
    assert_allclose(teachers, expected)
    assert_array_equal(present, np.ones((3, 2), dtype=bool))
    # the paper's form (sum_j F_j[l] - F_k[l]) / (K_l - 1), client 1 row 0: (2 + 4 - 4) / 1 = 2
    assert teachers[1, 0, 0] == 2.0


def test_leave_one_out_class_held_by_one_client() -> None:
    logits = np.array([[[1.0, 1.0], [8.0, 0.0]], [[3.0, 5.0], [0.0, 0.0]]])  # K=2, C=2
    counts = np.array([[2, 1], [2, 0]])  # only client 0 has class 1
    teachers, present = leave_one_out(logits, counts)
    assert_array_equal(present, [[True, False], [True, True]])
    assert_allclose(teachers[0], [[3.0, 5.0], [0.0, 0.0]])  # its own class-1 row is not used
    assert_allclose(teachers[1], [[1.0, 1.0], [8.0, 0.0]])


def test_leave_one_out_single_client() -> None:
    teachers, present = leave_one_out(FD_LOGITS[:1], FD_COUNTS[:1])
    assert not present.any()
    assert_allclose(teachers, np.zeros((1, 2, 2)))


def test_class_logits_shape_errors() -> None:
    with pytest.raises(PayloadError, match=r"shape \[K, C, C\]"):
        class_mean(np.zeros((2, 2, 3)), np.ones((2, 2)))
    with pytest.raises(PayloadError, match=r"counts shape \[2, 3\]"):
        leave_one_out(np.zeros((2, 2, 2)), np.ones((2, 3)))


# ---------------------------------------------------------------- public-set fusion
PUB = np.array([[[1.0, 2.0], [3.0, 4.0]], [[3.0, 6.0], [5.0, 0.0]]])  # K=2, N=2, C=2


def test_public_mean() -> None:
    assert_allclose(public_mean(PUB), [[2.0, 4.0], [4.0, 2.0]])


def test_public_mean_weighted() -> None:
    # w = [3, 1]: ([3, 6] + [3, 6]) / 4 = [1.5, 3];  ([9, 12] + [5, 0]) / 4 = [3.5, 3]
    assert_allclose(public_mean(PUB, weights=np.array([3.0, 1.0])), [[1.5, 3.0], [3.5, 3.0]])


def test_public_mean_of_probabilities_stays_probabilities() -> None:
    probs = np.array([[[0.9, 0.1]], [[0.5, 0.5]]])
    # plain average of the probabilities, no softmax/log applied: [0.7, 0.3]
    assert_allclose(public_mean(probs), [[0.7, 0.3]])


def test_public_mean_trimmed() -> None:
    vals = np.array([[[0.0]], [[1.0]], [[2.0]], [[3.0]], [[-90.0]]])  # K=5, N=1, C=1
    assert_allclose(public_mean(vals, "trimmed_mean", reducer_params={"trim": 0.2}), [[1.0]])


def test_public_mean_shape_error() -> None:
    with pytest.raises(PayloadError, match=r"shape \[K, N, C\]"):
        public_mean(np.zeros((2, 3)))


def test_era_hand_computed() -> None:
    # softmax([0.6, 0.4] / 0.1) = softmax([6, 4]) = [1, e^-2] / (1 + e^-2) = [0.8808, 0.1192]
    out = era(np.array([[0.6, 0.4], [0.5, 0.5]]), temperature=0.1)
    assert_allclose(out, [[0.88079708, 0.11920292], [0.5, 0.5]], rtol=1e-7)


def test_era_sharpens() -> None:
    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    q = era(p, 0.1)
    assert_allclose(q.sum(axis=1), [1.0, 1.0])
    assert np.all(sharpen_entropy(q) < sharpen_entropy(p))
    assert_array_equal(q.argmax(axis=1), p.argmax(axis=1))


@pytest.mark.parametrize("t", [1.0, 0.0, -0.1, 2.0])
def test_era_temperature_must_sharpen(t: float) -> None:
    with pytest.raises(ConfigError, match=r"ERA temperature must be in \(0, 1\)"):
        era(np.array([[0.5, 0.5]]), t)


def test_softmax_is_stable() -> None:
    out = softmax(np.array([[1000.0, 0.0], [-1000.0, -1000.0]]))
    assert np.all(np.isfinite(out))
    assert_allclose(out, [[1.0, 0.0], [0.5, 0.5]])
    # ERA at a tiny temperature divides by 1e-3 and must not overflow either
    assert_allclose(era(np.array([[0.9, 0.1]]), 1e-3), [[1.0, 0.0]])


def test_sharpen_entropy() -> None:
    # H([0.5, 0.5]) = ln 2; H([1, 0]) = 0 (0 ln 0 = 0); H([0.25]*4) = ln 4
    h = sharpen_entropy(np.array([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25] * 4]))
    assert_allclose(h, [math.log(2), 0.0, math.log(4)])


# ---------------------------------------------------------------- prototypes
PROTOS = np.array([[[1.0, 1.0], [0.0, 0.0]], [[3.0, 5.0], [2.0, 4.0]]])  # K=2, C=2, d=2
PROTO_COUNTS = np.array([[3, 0], [1, 2]])


def test_prototype_mean_unweighted() -> None:
    protos, present = prototype_mean(PROTOS, PROTO_COUNTS)
    # class 0: ([1, 1] + [3, 5]) / 2 = [2, 3]; class 1: only client 1 -> [2, 4]
    assert_allclose(protos, [[2.0, 3.0], [2.0, 4.0]])
    assert_array_equal(present, [True, True])


def test_prototype_mean_weighted() -> None:
    protos, _ = prototype_mean(PROTOS, PROTO_COUNTS, weighted=True)
    # class 0: (3*[1, 1] + 1*[3, 5]) / 4 = [6/4, 8/4] = [1.5, 2]
    assert_allclose(protos, [[1.5, 2.0], [2.0, 4.0]])


def test_prototype_mean_absent_class_and_single_client() -> None:
    protos, present = prototype_mean(PROTOS[:1], PROTO_COUNTS[:1])
    assert_array_equal(present, [True, False])
    assert_allclose(protos, [[1.0, 1.0], [0.0, 0.0]])


def test_prototype_mean_weighted_median_is_refused() -> None:
    with pytest.raises(ConfigError, match="does not take weights"):
        prototype_mean(PROTOS, PROTO_COUNTS, weighted=True, reducer="median")


def test_prototype_negative_counts() -> None:
    with pytest.raises(PayloadError, match="counts must be non-negative"):
        prototype_mean(PROTOS, np.array([[1, -1], [1, 1]]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_robust_reducers_match_numpy_with_outliers(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(9, 4, 3))
    values[rng.integers(0, 9, size=2)] = 1e6  # two boosted clients
    np.testing.assert_allclose(median(values), np.median(values, axis=0))
    ordered = np.sort(values, axis=0)
    np.testing.assert_allclose(trimmed_mean(values, trim=0.25), ordered[2:-2].mean(axis=0))
    assert np.abs(median(values)).max() < 10  # the outliers do not move the robust estimates
    assert np.abs(trimmed_mean(values, trim=0.25)).max() < 10
    assert np.abs(mean(values)).max() > 1e4


def test_gated_mean_drops_whole_clients_far_from_the_median() -> None:
    from fedkd.fusion import gated_mean

    honest = np.array([[1.0, 2.0], [1.2, 2.2], [0.8, 1.8], [1.1, 1.9]])
    v = np.concatenate([honest, [[50.0, -50.0]]])
    assert_allclose(gated_mean(v, None), honest.mean(axis=0))
    assert_allclose(gated_mean(v, np.array([1.0, 1, 1, 3, 100])), [1.05, 1.95])  # 6 = 1+1+1+3
    assert_allclose(reduce("gated_mean", v, params={"tolerance": 1e9}), v.mean(axis=0))
    assert_allclose(gated_mean(v[:2], None), v[:2].mean(axis=0))  # < 3 clients: the mean
    with pytest.raises(ConfigError, match="tolerance must be >= 1"):
        gated_mean(v, None, tolerance=0.5)
