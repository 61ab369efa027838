"""KnFu fusion (fedkd.fusion.knfu) against hand-computed numbers written literally."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fedkd.errors import ConfigError, PayloadError
from fedkd.fusion import divergence_matrix, epd, fusion_weights, personalised_fusion

LN2 = 0.6931471805599453

# K = 2 clients, N = 2 samples, C = 2 classes.
# client 0: EPD mean([1, 0], [0, 1]) = [0.5, 0.5]; client 1: mean([0.8, 0.2], [1, 0]) = [0.9, 0.1]
P2 = np.array(
    [
        [[1.0, 0.0], [0.0, 1.0]],
        [[0.8, 0.2], [1.0, 0.0]],
    ]
)

# Three clients on N = 2 samples: 0 and 1 share an EPD [0.8, 0.2], 2 has EPD [0.2, 0.8].
P3 = np.array(
    [
        [[0.9, 0.1], [0.7, 0.3]],
        [[0.8, 0.2], [0.8, 0.2]],
        [[0.2, 0.8], [0.2, 0.8]],
    ]
)

# Symmetric divergences for the gating examples.
D3 = np.array(
    [
        [0.0, 0.1, 0.5],
        [0.1, 0.0, 0.3],
        [0.5, 0.3, 0.0],
    ]
)


def _random_probs(k: int, n: int, c: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # a different dominant class per client so the clients really differ
    z = rng.normal(size=(k, n, c)) + 3.0 * np.eye(c)[np.arange(k) % c][:, None, :]
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# ---------------------------------------------------------------- EPD
def test_epd_is_mean_over_samples() -> None:
    assert_allclose(epd(P2), [[0.5, 0.5], [0.9, 0.1]])


def test_epd_keeps_float32() -> None:
    out = epd(P2.astype(np.float32))
    assert out.dtype == np.float32
    assert out.shape == (2, 2)


# ---------------------------------------------------------------- divergences
def test_kl_two_clients_by_hand() -> None:
    # KL(π0 ‖ π1) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5 ln(25/9) = ln(5/3) = 0.5108256238
    # KL(π1 ‖ π0) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) = 0.9 * 0.5877867 - 0.1 * 1.6094379
    #             = 0.5290080 - 0.1609438 = 0.3680642072
    d = divergence_matrix(P2, "kl")
    assert_allclose(d, [[0.0, 0.5108256238], [0.3680642072, 0.0]], rtol=1e-9)


def test_diagonal_is_exactly_zero() -> None:
    probs = _random_probs(4, 5, 3)
    for metric in ("kl", "js", "mean_sample_kl"):
        d = divergence_matrix(probs, metric)
        assert_array_equal(np.diag(d), np.zeros(4))
        assert np.all(d >= 0)


def test_js_by_hand_symmetric_and_bounded() -> None:
    # m = (π0 + π1)/2 = [0.7, 0.3]
    # KL(π0 ‖ m) = 0.5 ln(0.5/0.7) + 0.5 ln(0.5/0.3) = 0.0871766936
    # KL(π1 ‖ m) = 0.9 ln(0.9/0.7) + 0.1 ln(0.1/0.3) = 0.1163217566
    # JS = (0.0871766936 + 0.1163217566) / 2 = 0.1017492251
    d = divergence_matrix(P2, "js")
    assert_allclose(d, [[0.0, 0.1017492251], [0.1017492251, 0.0]], rtol=1e-9)
    d = divergence_matrix(_random_probs(5, 4, 3), "js")
    assert_array_equal(d, d.T)
    assert np.all(d <= LN2)


def test_js_disjoint_supports_reach_ln2() -> None:
    # π0 = [1, 0], π1 = [0, 1]: m = [0.5, 0.5], KL(π ‖ m) = 1 * ln(1/0.5) = ln 2 each side
    probs = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert_allclose(divergence_matrix(probs, "js"), [[0.0, LN2], [LN2, 0.0]], rtol=1e-12)


def test_mean_sample_kl_equals_kl_for_constant_predictions() -> None:
    # every sample of client k has the same distribution π_k, so the per-sample KL is KL(π_k ‖ π_j)
    probs = np.array([[[0.5, 0.5]] * 3, [[0.9, 0.1]] * 3])
    msk = divergence_matrix(probs, "mean_sample_kl")
    assert_allclose(msk, [[0.0, 0.5108256238], [0.3680642072, 0.0]], rtol=1e-9)
    assert_allclose(msk, divergence_matrix(probs, "kl"), rtol=1e-12)


def test_mean_sample_kl_by_hand() -> None:
    # client 0 predicts [0.5, 0.5] then [0.9, 0.1]; client 1 the reverse order. Same EPD, so KL = 0,
    # but per sample: (KL([.5,.5] ‖ [.9,.1]) + KL([.9,.1] ‖ [.5,.5])) / 2
    #               = (0.5108256238 + 0.3680642072) / 2 = 0.4394449155 both ways
    probs = np.array([[[0.5, 0.5], [0.9, 0.1]], [[0.9, 0.1], [0.5, 0.5]]])
    assert_allclose(divergence_matrix(probs, "kl"), np.zeros((2, 2)), atol=1e-15)
    assert_allclose(
        divergence_matrix(probs, "mean_sample_kl"),
        [[0.0, 0.4394449155], [0.4394449155, 0.0]],
        rtol=1e-9,
    )


def test_eps_clips_zero_probabilities() -> None:
    # π0 = [1, 0], π1 = [0, 1]: KL(π0 ‖ π1) = 1 * (ln 1 - ln eps) = -ln(1e-8) = 18.420680744
    probs = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])
    d = divergence_matrix(probs, "kl", eps=1e-8)
    assert_allclose(d, [[0.0, 18.420680744], [18.420680744, 0.0]], rtol=1e-9)


# ---------------------------------------------------------------- weights
def test_identical_epds_give_uniform_weights() -> None:
    # clients 0 and 1 disagree on every sample but both have EPD [0.5, 0.5]: d = 0, w = 1/2
    probs = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    assert_allclose(fusion_weights(divergence_matrix(probs, "kl")), np.full((2, 2), 0.5))
    # K = 3 identical clients: 1/3 each
    same = np.repeat(P3[:1], 3, axis=0)
    assert_allclose(fusion_weights(divergence_matrix(same, "js")), np.full((3, 3), 1 / 3))


def test_far_client_gets_almost_no_weight() -> None:
    # d = 1, beta = 10: the other client is e^-10 = 4.539993e-05 relative to self
    # w_self = 1/(1 + e^-10) = 0.9999546021, w_other = e^-10/(1 + e^-10) = 4.5397868702e-05
    w = fusion_weights(np.array([[0.0, 1.0], [1.0, 0.0]]), beta=10.0)
    assert_allclose(w, [[0.9999546021, 4.5397868702e-05], [4.5397868702e-05, 0.9999546021]])
    assert_allclose(w[0, 1] / w[0, 0], 4.539992976e-05, rtol=1e-9)


def test_weights_two_client_kl_example() -> None:
    # row 0: d01 = ln(5/3), e^(-10 ln(5/3)) = (3/5)^10 = 0.0060466176
    #   w00 = 1/1.0060466176 = 0.9939897242, w01 = 0.0060466176/1.0060466176 = 0.00601027576
    # row 1: d10 = 0.3680642072, e^-3.680642072 = 0.0252067851
    #   w11 = 1/1.0252067851 = 0.9754129748, w10 = 0.0245870252
    w = fusion_weights(divergence_matrix(P2, "kl"))
    assert_allclose(w, [[0.9939897242, 0.00601027576], [0.0245870252, 0.9754129748]], rtol=1e-9)


def test_beta_zero_is_vanilla_fkd() -> None:
    assert_allclose(fusion_weights(D3, beta=0.0), np.full((3, 3), 1 / 3))


def test_self_weight_largest_and_rows_sum_to_one() -> None:
    probs = _random_probs(6, 8, 4, seed=1)
    for metric in ("kl", "js", "mean_sample_kl"):
        d = divergence_matrix(probs, metric)
        for kwargs in (
            {},
            {"gating": "threshold", "threshold": 0.2},
            {"gating": "top_m", "top_m": 3},
        ):
            w = fusion_weights(d, **kwargs)
            assert_allclose(w.sum(axis=1), np.ones(6), rtol=1e-12)
            assert np.all(w >= 0)
            diag = np.diag(w)
            off = w[~np.eye(6, dtype=bool)].reshape(6, 5)
            assert np.all(diag[:, None] > off)


def test_threshold_gating_by_hand() -> None:
    # threshold 0.2, beta 10. row 0 keeps {0, 1}: [1, e^-1] / (1 + e^-1) = [0.7310585786, 0.2689414214]
    # row 1 keeps {0, 1}: [e^-1, 1] / (1 + e^-1); row 2 keeps only itself (0.3, 0.5 > 0.2)
    w = fusion_weights(D3, gating="threshold", threshold=0.2)
    assert_allclose(
        w,
        [
            [0.7310585786, 0.2689414214, 0.0],
            [0.2689414214, 0.7310585786, 0.0],
            [0.0, 0.0, 1.0],
        ],
    )
    assert w[0, 2] == 0.0 and w[2, 0] == 0.0  # dropped weights are exactly 0
    # a threshold at or above every divergence changes nothing
    assert_allclose(fusion_weights(D3, gating="threshold", threshold=0.5), fusion_weights(D3))


def test_top_m_gating_by_hand() -> None:
    # m = 2 = self + nearest other. rows 0 and 1 as in the threshold example;
    # row 2 keeps {2, 1} (d = 0.3): [e^-3, 1] / (1 + e^-3) = [0.0474258732, 0.9525741268]
    w = fusion_weights(D3, gating="top_m", top_m=2)
    assert_allclose(
        w,
        [
            [0.7310585786, 0.2689414214, 0.0],
            [0.2689414214, 0.7310585786, 0.0],
            [0.0, 0.0474258732, 0.9525741268],
        ],
    )
    assert_array_equal(fusion_weights(D3, gating="top_m", top_m=1), np.eye(3))  # self only
    assert_allclose(fusion_weights(D3, gating="top_m", top_m=5), fusion_weights(D3))  # m > K


def test_top_m_ties_go_to_lower_index() -> None:
    d = np.array([[0.0, 0.2, 0.2], [0.2, 0.0, 0.2], [0.2, 0.2, 0.0]])
    w = fusion_weights(d, gating="top_m", top_m=2)
    assert_array_equal(w > 0, [[1, 1, 0], [1, 1, 0], [1, 0, 1]])


def test_self_kept_even_with_nonzero_diagonal() -> None:
    # a custom matrix whose self-divergence exceeds the threshold still keeps self
    w = fusion_weights(np.array([[0.5, 0.0], [0.0, 0.0]]), gating="threshold", threshold=0.1)
    # row 0: [e^-5, 1] / (1 + e^-5) = [0.0066928509, 0.9933071491]
    assert_allclose(w, [[0.0066928509, 0.9933071491], [0.5, 0.5]])


# ---------------------------------------------------------------- personalised fusion
def test_personalised_fusion_tiny() -> None:
    probs = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=np.float32)
    w = np.array([[0.75, 0.25], [0.5, 0.5]])
    q = personalised_fusion(probs, w)
    # Q_0 = 0.75 [1, 0] + 0.25 [0, 1]; Q_1 = 0.5 [1, 0] + 0.5 [0, 1]
    assert_allclose(q, [[[0.75, 0.25]], [[0.5, 0.5]]])
    assert q.dtype == np.float32


def test_identity_weights_return_own_predictions() -> None:
    assert_allclose(personalised_fusion(P3, np.eye(3)), P3)


def test_different_data_get_different_targets() -> None:
    # KL(π0 ‖ π2) = 0.8 ln 4 + 0.2 ln(1/4) = 0.6 ln 4 = 0.8317766167; e^(-10 * 0.6 ln 4) = 4^-6 = 1/4096
    # rows 0, 1: [1, 1, 1/4096] / (2 + 1/4096) = [4096, 4096, 1] / 8193
    # row 2: [1/4096, 1/4096, 1] / (1 + 2/4096) = [1, 1, 4096] / 4098
    w = fusion_weights(divergence_matrix(P3, "kl"))
    assert_allclose(w[0], [4096 / 8193, 4096 / 8193, 1 / 8193], rtol=1e-9)
    assert_allclose(w[2], [1 / 4098, 1 / 4098, 4096 / 4098], rtol=1e-9)
    q = personalised_fusion(P3, w)
    # Q_0 class 0: sample 0 (4096 (0.9 + 0.8) + 0.2) / 8193 = 0.8499206640
    #              sample 1 (4096 (0.7 + 0.8) + 0.2) / 8193 = 0.7499328695
    # Q_2 class 0: sample 0 (0.9 + 0.8 + 4096 * 0.2) / 4098 = 0.2003172279
    #              sample 1 (0.7 + 0.8 + 4096 * 0.2) / 4098 = 0.2002684236
    assert_allclose(q[0, :, 0], [0.8499206640, 0.7499328695], rtol=1e-9)
    assert_allclose(q[2, :, 0], [0.2003172279, 0.2002684236], rtol=1e-9)
    assert_allclose(q[0], q[1], rtol=1e-12)  # same EPD, same neighbours, same target
    assert not np.allclose(q[0], q[2], atol=0.1)
    assert_allclose(q.sum(axis=-1), np.ones((3, 2)), rtol=1e-12)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: divergence_matrix(P2, "cosine"), "unknown metric 'cosine'"),
        (lambda: divergence_matrix(P2, "kl", eps=0.0), "eps"),
        (lambda: fusion_weights(D3, beta=-1.0), "beta"),
        (lambda: fusion_weights(D3, beta=math.inf), "beta"),
        (lambda: fusion_weights(D3, gating="knn"), "unknown gating 'knn'"),
        (lambda: fusion_weights(D3, gating="threshold"), "needs threshold"),
        (lambda: fusion_weights(D3, gating="threshold", threshold=-0.1), "needs threshold"),
        (lambda: fusion_weights(D3, gating="top_m"), "needs an integer top_m"),
        (lambda: fusion_weights(D3, gating="top_m", top_m=0), "needs an integer top_m"),
        (lambda: fusion_weights(D3, gating="top_m", top_m=1.5), "needs an integer top_m"),
        (lambda: fusion_weights(D3, threshold=0.2), "threshold given"),
        (lambda: fusion_weights(D3, gating="threshold", threshold=0.2, top_m=2), "top_m given"),
    ],
)
def test_invalid_options_raise_config_error(call, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: epd(np.ones((2, 2))), r"shape \[K, N, C\]"),
        (lambda: epd(np.full((1, 2, 2), 0.4)), "sum to 1"),
        (lambda: epd(np.array([[[1.5, -0.5]]])), "non-negative"),
        (lambda: epd(np.array([[[np.nan, 1.0]]])), "NaN"),
        (lambda: fusion_weights(np.zeros((2, 3))), r"shape \[K, K\]"),
        (lambda: fusion_weights(np.array([[0.0, -1.0], [1.0, 0.0]])), "non-negative"),
        (lambda: personalised_fusion(P2, np.eye(3)), "K = 2"),
        (lambda: personalised_fusion(P2, np.full((2, 2), 0.4)), "sum to 1"),
    ],
)
def test_bad_arrays_raise_payload_error(call, match: str) -> None:
    with pytest.raises(PayloadError, match=match):
        call()
