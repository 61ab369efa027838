"""GNMax / Confident-GNMax noise statistics and the RDP ledger (docs/algorithms.md §4.7, §5.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from scipy.stats import multivariate_normal, norm

from fedkd.errors import ConfigError, PayloadError
from fedkd.fusion import plurality
from fedkd.privacy import GnmaxRecorder, confident_gnmax, gaussian_noise, gnmax

COUNTS = np.array([[3, 1, 0], [0, 2, 2], [0, 2, 1], [1, 1, 2], [4, 4, 4]])


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- mechanisms
def test_gnmax_sigma0_is_plurality() -> None:
    labels = gnmax(COUNTS, 0.0, rng())
    assert labels.dtype == np.int64
    assert_array_equal(labels, [0, 1, 1, 2, 0])  # ties to the lowest id
    assert_array_equal(labels, plurality(COUNTS)[0])


def test_gnmax_is_seeded() -> None:
    counts = np.tile([[5, 4, 3]], (200, 1))
    a, b = gnmax(counts, 2.0, rng(7)), gnmax(counts, 2.0, rng(7))
    assert_array_equal(a, b)
    assert not np.array_equal(a, gnmax(counts, 2.0, rng(8)))


def test_gaussian_noise_std() -> None:
    noise = gaussian_noise((200_000,), 3.0, rng(1))
    assert abs(noise.mean()) < 0.03  # std error 3/sqrt(2e5) = 0.0067
    assert noise.std() == pytest.approx(3.0, rel=0.01)
    assert_array_equal(gaussian_noise((4,), 0.0, rng()), np.zeros(4))


def test_gnmax_flip_rate_matches_gaussian_cdf() -> None:
    # Two classes, margin m: the answer flips iff N(0, 2σ²) > m.
    sigma, margin, n = 4.0, 5.0, 40_000
    counts = np.tile([[margin, 0.0]], (n, 1))
    flips = (gnmax(counts, sigma, rng(2)) != 0).mean()
    expected = norm.sf(margin / (sigma * math.sqrt(2)))  # = 0.188
    assert flips == pytest.approx(expected, abs=5 * math.sqrt(expected * (1 - expected) / n))


def test_gnmax_large_margin_keeps_plurality() -> None:
    # 10 classes, margin 40 at σ = 4: P(flip) <= 9 * sf(40 / 5.66) ~ 1e-11
    counts = np.zeros((5_000, 10))
    counts[np.arange(5_000), np.arange(5_000) % 10] = 40.0
    assert_array_equal(gnmax(counts, 4.0, rng(3)), np.arange(5_000) % 10)


def test_gnmax_moderate_sigma_frequency() -> None:
    # 3 classes [10, 6, 0], σ = 3: class 0 wins iff Z1 < 4 and Z2 < 10, where
    # Z_j = noise_j - noise_0 are jointly Gaussian with variances 2σ² and covariance σ².
    sigma, n = 3.0, 40_000
    counts = np.tile([[10.0, 6.0, 0.0]], (n, 1))
    labels = gnmax(counts, sigma, rng(4))
    cov = sigma**2 * np.array([[2.0, 1.0], [1.0, 2.0]])
    p0 = multivariate_normal(mean=[0.0, 0.0], cov=cov).cdf([4.0, 10.0])  # ~0.826
    p2 = norm.sf(10 / (sigma * math.sqrt(2)))  # class 2 needs a 10-vote swing: <= 0.0092
    assert (labels == 0).mean() == pytest.approx(p0, abs=5 * math.sqrt(p0 * (1 - p0) / n))
    assert (labels == 2).mean() <= p2 + 5 * math.sqrt(p2 / n)


def test_confident_gnmax_sigma0_answers_exactly_above_threshold() -> None:
    labels, answered = confident_gnmax(COUNTS, 3, 0.0, 0.0, rng())
    assert_array_equal(answered, [True, False, False, False, True])  # top counts 3,2,2,2,4
    assert_array_equal(labels, [0, -1, -1, -1, 0])
    assert labels.dtype == np.int64 and answered.dtype == bool


def test_confident_gnmax_answer_rate_and_labels() -> None:
    # top count 10, T = 12, σ₁ = 2: answered with P = sf((12 - 10) / 2) = 0.159
    n, sigma1 = 40_000, 2.0
    counts = np.tile([[10.0, 0.0, 0.0]], (n, 1))
    labels, answered = confident_gnmax(counts, 12, sigma1, 0.5, rng(5))
    expected = norm.sf(1.0)
    assert answered.mean() == pytest.approx(expected, abs=5 * math.sqrt(expected / n))
    assert_array_equal(labels[~answered], -1)
    assert_array_equal(labels[answered], 0)  # margin 10 at σ₂ = 0.5 never flips


def test_confident_gnmax_rng_use_does_not_depend_on_answers() -> None:
    g1, g2 = rng(6), rng(6)
    confident_gnmax(np.tile([[50, 0]], (10, 1)), 10, 1.0, 1.0, g1)  # all answered
    confident_gnmax(np.tile([[1, 0]], (10, 1)), 10, 1.0, 1.0, g2)  # none answered
    assert g1.random() == g2.random()


def test_mechanisms_reject_bad_input() -> None:
    with pytest.raises(ConfigError, match="sigma"):
        gnmax(COUNTS, -1.0, rng())
    with pytest.raises(ConfigError, match="rng"):
        gnmax(COUNTS, 1.0, 0)  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="shape"):
        gnmax(np.array([1, 2]), 1.0, rng())
    with pytest.raises(PayloadError, match="non-negative"):
        gnmax(np.array([[1, -2]]), 1.0, rng())
    with pytest.raises(ConfigError, match="sigma1"):
        confident_gnmax(COUNTS, 2, math.inf, 1.0, rng())
    with pytest.raises(ConfigError, match="threshold"):
        confident_gnmax(COUNTS, math.nan, 1.0, 1.0, rng())


# ---------------------------------------------------------------- accounting
def test_ledger_reproduces_gnmax_worked_examples() -> None:
    # §5.3: data-independent GNMax, σ = 40, δ = 1e-5, sensitivity √2
    assert GnmaxRecorder().gnmax(40, 286).epsilon(1e-5) == pytest.approx(2.64, rel=0.02)
    assert GnmaxRecorder().gnmax(40, 1000).epsilon(1e-5) == pytest.approx(5.38, rel=0.02)


@pytest.mark.parametrize(
    ("z", "rounds", "eps"),
    [(1, 50, 57.3), (2, 50, 22.0), (5, 50, 7.1), (5, 200, 16.5), (10, 200, 7.1)],
)
def test_ledger_reproduces_gaussian_worked_examples(z: float, rounds: int, eps: float) -> None:
    assert GnmaxRecorder().gaussian(z, rounds).epsilon(1e-5) == pytest.approx(eps, rel=0.02)


def test_ledger_matches_rdp_conversion_formula() -> None:
    # ε = min_α [R α/(2z²) + log1p(-1/α) - log(δ α)/(α - 1)] (§5.3), on a dense grid of α
    z, rounds, delta = 5.0, 50, 1e-5
    alphas = np.linspace(1.01, 200, 200_000)
    formula = np.min(
        rounds * alphas / (2 * z**2) + np.log1p(-1 / alphas) - np.log(delta * alphas) / (alphas - 1)
    )
    assert GnmaxRecorder().gaussian(z, rounds).epsilon(delta) == pytest.approx(formula, rel=0.01)


def test_ledger_composes_sequentially() -> None:
    a = GnmaxRecorder()
    for _ in range(5):
        a.gnmax(20, 10)
    assert a.epsilon(1e-5) == pytest.approx(GnmaxRecorder().gnmax(20, 50).epsilon(1e-5), rel=1e-12)
    assert a.num_queries == a.num_answered == 50


def test_threshold_check_costs_gnmax_at_sqrt2_sigma() -> None:
    # PATE's compute_rdp_data_independent_threshold(σ₁) = rdp_data_independent_gaussian(√2 σ₁)
    eps_t = GnmaxRecorder().threshold_check(150, 1000).epsilon(1e-5)
    eps_g = GnmaxRecorder().gnmax(150 * math.sqrt(2), 1000).epsilon(1e-5)
    assert eps_t == pytest.approx(eps_g, rel=1e-9)


def test_confident_gnmax_ledger() -> None:
    led = GnmaxRecorder().confident_gnmax(150, 40, num_queries=1000, num_answered=286)
    assert (led.num_queries, led.num_answered) == (1000, 286)
    manual = GnmaxRecorder().threshold_check(150, 1000).gnmax(40, 286)
    assert led.epsilon(1e-5) == pytest.approx(manual.epsilon(1e-5), rel=1e-12)
    # the checks cost something on top of the answers
    assert led.epsilon(1e-5) > GnmaxRecorder().gnmax(40, 286).epsilon(1e-5)
    with pytest.raises(ConfigError, match="num_answered"):
        GnmaxRecorder().confident_gnmax(150, 40, num_queries=10, num_answered=11)


def test_topk_votes_raise_gnmax_sensitivity() -> None:
    led = GnmaxRecorder(votes_per_teacher=3)
    assert led.gnmax_sensitivity == pytest.approx(math.sqrt(6))
    eps = led.gnmax(40, 100).epsilon(1e-5)
    assert eps == pytest.approx(GnmaxRecorder().gnmax(40 / math.sqrt(3), 100).epsilon(1e-5))
    # the threshold check does not depend on k
    assert GnmaxRecorder(votes_per_teacher=3).threshold_check(10, 5).epsilon(1e-5) == pytest.approx(
        GnmaxRecorder().threshold_check(10, 5).epsilon(1e-5)
    )


def test_ledger_edge_cases() -> None:
    assert GnmaxRecorder().epsilon(1e-5) == 0.0
    assert GnmaxRecorder().gnmax(40, 0).epsilon(1e-5) == 0.0
    assert GnmaxRecorder().gnmax(0.0, 1).epsilon(1e-5) == math.inf
    eps, order = GnmaxRecorder().gnmax(40, 286).epsilon_and_order(1e-5)
    assert eps == pytest.approx(2.64, rel=0.02) and order > 1
    for delta in (0.0, 1.0, -1e-5):
        with pytest.raises(ConfigError, match="delta"):
            GnmaxRecorder().epsilon(delta)
    with pytest.raises(ConfigError, match="sigma"):
        GnmaxRecorder().gnmax(-1.0)
    with pytest.raises(ConfigError, match="count"):
        GnmaxRecorder().gnmax(1.0, -1)
    with pytest.raises(ConfigError, match="votes_per_teacher"):
        GnmaxRecorder(votes_per_teacher=0)
