"""Releasing labels from client votes (LabelVoting) and the ``vote`` strategy's fusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import info_for

from fedkd.errors import ConfigError, PayloadError
from fedkd.knowledge import Votes
from fedkd.privacy import GnmaxRecorder
from fedkd.privacy.label_release import LabelVoting
from server.strategies import STRATEGIES

# 4 samples, 3 classes, 4 voters: unanimous, 3/4, a 2-2 tie, nobody voted
COUNTS = np.array([[4, 0, 0], [1, 3, 0], [0, 2, 2], [0, 0, 0]])


def test_consensus_threshold_and_lowest_id_tie_break():
    release = LabelVoting(threshold=0.5).release(COUNTS, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(release.labels, [0, 1, 1, -1])  # 2-2 tie -> class 1
    np.testing.assert_array_equal(release.answered, [True, True, True, False])
    np.testing.assert_allclose(release.agreement, [1.0, 0.75, 0.5, 0.0])
    strict = LabelVoting(threshold=0.8).release(COUNTS, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(strict.labels, [0, -1, -1, -1])


def test_without_noise_no_privacy_is_claimed():
    voting = LabelVoting()
    voting.release(COUNTS, 4, np.random.default_rng(0))
    assert not voting.private and math.isinf(voting.epsilon())


def test_gnmax_is_charged_per_answered_query_by_the_library_ledger():
    voting = LabelVoting(noise="gnmax", sigma=2.0)
    release = voting.release(COUNTS, 4, np.random.default_rng(0))
    assert release.answered.tolist() == [True, True, True, False]
    assert release.labels[3] == -1
    expected = GnmaxRecorder().gnmax(2.0, count=3).epsilon(1e-5)
    assert voting.epsilon() == pytest.approx(expected)
    voting.release(COUNTS, 4, np.random.default_rng(1))  # composition over rounds
    assert voting.epsilon() == pytest.approx(GnmaxRecorder().gnmax(2.0, count=6).epsilon(1e-5))


def test_confident_gnmax_answers_only_confident_queries():
    voting = LabelVoting(noise="confident_gnmax", sigma1=1e-6, sigma2=1e-6, confident_threshold=0.7)
    release = voting.release(COUNTS, 4, np.random.default_rng(0))
    # threshold 0.7 * 4 voters = 2.8: the 4-0-0 and 1-3-0 rows pass, the others do not
    np.testing.assert_array_equal(release.answered, [True, True, False, False])
    np.testing.assert_array_equal(release.labels, [0, 1, -1, -1])
    expected = GnmaxRecorder().confident_gnmax(1e-6, 1e-6, num_queries=4, num_answered=2)
    assert voting.epsilon() == pytest.approx(expected.epsilon(1e-5))


def test_gnmax_noise_flips_close_votes_at_the_expected_rate():
    counts = np.tile([[2, 1]], (20_000, 1))  # margin 1; noise difference ~ N(0, 2 sigma^2)
    release = LabelVoting(noise="gnmax", sigma=1.0).release(counts, 3, np.random.default_rng(3))
    flip = float((release.labels == 1).mean())
    # Pr[N(0, 2) > 1] = 0.5 * erfc(1 / 2)
    assert flip == pytest.approx(0.5 * math.erfc(0.5), abs=0.01)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threshold": 1.5}, "voting.threshold"),
        ({"noise": "laplace"}, "voting.noise"),
        ({"noise": "gnmax", "threshold": 0.5}, "threshold must be 0 with noise=gnmax"),
        ({"sigma": -1.0}, "voting.sigma"),
        ({"delta": 0.0}, "voting.delta"),
        ({"sigmaa": 1.0}, "unknown strategy.voting option"),
    ],
)
def test_bad_voting_options_are_one_line_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        LabelVoting.from_config(options)


def vote_strategy(*overrides: str, num_classes: int = 3):
    return STRATEGIES.get("vote")(
        info_for("strategy=vote", "strategy.query_size=3", *overrides, num_classes=num_classes)
    )


def test_vote_strategy_releases_one_hot_labels_where_clients_agree():
    vote = vote_strategy("strategy.voting.threshold=0.6")
    idx = vote.indices_for(1)
    uploads = {
        0: Votes(indices=idx, votes=np.array([[0], [1], [2]])),
        1: Votes(indices=idx, votes=np.array([[0], [1], [0]])),
        2: Votes(indices=idx, votes=np.array([[0], [2], [1]])),
    }
    diag = vote.fuse(1, uploads, {0: 1, 1: 1, 2: 1})
    # agreement 3/3, 2/3, 1/3: the first two reach 0.6
    np.testing.assert_array_equal(vote.targets.indices, idx[:2])
    np.testing.assert_array_equal(vote.targets.values, [[1, 0, 0], [0, 1, 0]])
    assert vote.targets.space == "probs"
    assert diag["answered_share"] == pytest.approx(2 / 3)
    assert diag["pseudo_labels"] == 2
    truth = vote.public_y[idx[:2]]
    assert diag["voting_acc"] == pytest.approx(float((truth == [0, 1]).mean()))
    assert "gnmax_epsilon" not in diag


def test_vote_strategy_with_no_consensus_sends_nothing_to_distil():
    vote = vote_strategy("strategy.voting.threshold=1.0")
    idx = vote.indices_for(1)
    uploads = {c: Votes(indices=idx, votes=np.array([[c], [c], [c]])) for c in range(3)}
    assert vote.fuse(1, uploads, {0: 1, 1: 1, 2: 1})["answered_share"] == 0
    assert vote.targets is None and vote.payload_for(2, 0) is None


def test_vote_strategy_checks_top_k_and_indices():
    vote = vote_strategy("strategy.top_k=2")
    idx = vote.indices_for(1)
    with pytest.raises(PayloadError, match="top-2"):
        vote.validate_upload(1, 0, Votes(indices=idx, votes=np.zeros((3, 1), np.int64)))
    with pytest.raises(PayloadError, match="indices differ"):
        vote.validate_upload(1, 0, Votes(indices=idx[::-1].copy(), votes=np.array([[0, 1]] * 3)))
    with pytest.raises(PayloadError, match="repeats a class"):
        vote.fuse(1, {0: Votes(indices=idx, votes=np.array([[0, 0]] * 3))}, {0: 1})


def test_vote_strategy_logs_epsilon_with_gnmax():
    vote = vote_strategy("strategy.voting.noise=gnmax", "strategy.voting.threshold=0")
    idx = vote.indices_for(1)
    uploads = {c: Votes(indices=idx, votes=np.array([[0], [1], [2]])) for c in range(3)}
    diag = vote.fuse(1, uploads, {0: 1, 1: 1, 2: 1})
    assert diag["gnmax_epsilon"] == pytest.approx(GnmaxRecorder().gnmax(1.0, count=3).epsilon(1e-5))


def test_vote_top_k_larger_than_the_classes_is_refused():
    with pytest.raises(ConfigError, match="top_k"):
        vote_strategy("strategy.top_k=4")


def test_vote_strategy_top_k_keeps_the_ranking():
    # three clients all vote [7, 3] (7 first): 7 and 3 both get 3 votes; the ranking says 7
    vote = vote_strategy("strategy.top_k=2", "strategy.voting.threshold=0.5", num_classes=10)
    idx = vote.indices_for(1)
    uploads = {c: Votes(indices=idx, votes=np.array([[7, 3]] * 3)) for c in range(3)}
    vote.fuse(1, uploads, {0: 1, 1: 1, 2: 1})
    np.testing.assert_array_equal(vote.targets.values.argmax(axis=1), [7, 7, 7])
    # a count tie is broken by first choices: two clients rank 3 first, one ranks 7 first
    uploads = {
        0: Votes(indices=idx, votes=np.array([[3, 7]] * 3)),
        1: Votes(indices=idx, votes=np.array([[3, 7]] * 3)),
        2: Votes(indices=idx, votes=np.array([[7, 3]] * 3)),
    }
    vote.fuse(2, uploads, {0: 1, 1: 1, 2: 1})
    np.testing.assert_array_equal(vote.targets.values.argmax(axis=1), [3, 3, 3])
