"""Vote aggregation against hand-made examples (votes and expected labels written literally)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fedkd.errors import ConfigError, PayloadError
from fedkd.fusion import consensus, plurality, topk_vote_counts, vote_counts

# K = 4 clients, N = 5 samples, C = 3 classes; -1 = abstain.
VOTES = np.array(
    [
        [0, 1, 2, -1, 2],
        [0, 1, 1, -1, 0],
        [0, 2, 1, -1, 1],
        [1, 2, -1, -1, 2],
    ]
)
# sample 0: 0,0,0,1 -> [3,1,0]; sample 1: 1,1,2,2 -> [0,2,2] (tie);
# sample 2: 2,1,1 (one abstains) -> [0,2,1]; sample 3: nobody; sample 4: 2,0,1,2 -> [1,1,2]
COUNTS = np.array([[3, 1, 0], [0, 2, 2], [0, 2, 1], [0, 0, 0], [1, 1, 2]])


def test_vote_counts() -> None:
    counts = vote_counts(VOTES, 3)
    assert counts.dtype == np.int64
    assert_array_equal(counts, COUNTS)


def test_vote_counts_all_abstain_and_empty() -> None:
    assert_array_equal(vote_counts(np.full((2, 2), -1), 4), np.zeros((2, 4), dtype=np.int64))
    assert vote_counts(np.zeros((3, 0), dtype=np.int64), 4).shape == (0, 4)


def test_vote_counts_topk_lists() -> None:
    # K = 2 clients, N = 2 samples, top-2 lists (best first), -1 = empty slot
    lists = np.array([[[2, 0], [1, -1]], [[0, 1], [-1, -1]]])
    assert_array_equal(vote_counts(lists, 3), [[2, 1, 1], [0, 1, 0]])


def test_vote_counts_rejects_bad_votes() -> None:
    with pytest.raises(PayloadError, match=r"\[-1, 3\)"):
        vote_counts(np.array([[0, 3]]), 3)
    with pytest.raises(PayloadError, match=r"\[-1, 3\)"):
        vote_counts(np.array([[0, -2]]), 3)
    with pytest.raises(PayloadError, match="integer"):
        vote_counts(np.array([[0.0, 1.0]]), 3)
    with pytest.raises(PayloadError, match="shape"):
        vote_counts(np.array([0, 1]), 3)
    with pytest.raises(PayloadError, match="client 1 repeats a class for sample 0"):
        vote_counts(np.array([[[0, 1]], [[2, 2]]]), 3)
    with pytest.raises(ConfigError, match="num_classes"):
        vote_counts(VOTES, 0)


def test_plurality_ties_to_lowest_id_and_abstentions() -> None:
    labels, agreement = plurality(COUNTS)
    assert labels.dtype == np.int64
    assert_array_equal(labels, [0, 1, 1, -1, 2])  # sample 1: 1 vs 2 tie -> 1; sample 3: nobody
    assert_allclose(agreement, [3 / 4, 2 / 4, 2 / 3, 0.0, 2 / 4])


def test_plurality_all_way_tie() -> None:
    labels, agreement = plurality(np.array([[1, 1, 1], [0, 5, 5]]))
    assert_array_equal(labels, [0, 1])
    assert_allclose(agreement, [1 / 3, 1 / 2])


def test_plurality_num_voters_for_topk_counts() -> None:
    # 2 clients, top-2 each: row sums are 4 but only 2 voters
    counts = np.array([[2, 1, 1], [0, 1, 0]])
    _, agreement = plurality(counts)
    assert_allclose(agreement, [2 / 4, 1 / 1])
    labels, agreement = plurality(counts, num_voters=np.array([2, 1]))
    assert_array_equal(labels, [0, 1])
    assert_allclose(agreement, [1.0, 1.0])
    with pytest.raises(PayloadError, match="num_voters"):
        plurality(counts, num_voters=1)


def test_consensus_thresholds() -> None:
    # agreement = [0.75, 0.5, 0.667, 0, 0.5]
    labels, answered = consensus(COUNTS, 0.5)
    assert_array_equal(labels, [0, 1, 1, -1, 2])
    assert_array_equal(answered, [True, True, True, False, True])
    labels, answered = consensus(COUNTS, 0.6)
    assert_array_equal(labels, [0, -1, 1, -1, -1])
    assert_array_equal(answered, [True, False, True, False, False])
    labels, answered = consensus(COUNTS, 0.75)
    assert_array_equal(labels, [0, -1, -1, -1, -1])
    labels, answered = consensus(COUNTS, 1.0)
    assert_array_equal(labels, [-1, -1, -1, -1, -1])
    assert not answered.any()
    # threshold 0 answers everything that has at least one vote
    labels, answered = consensus(COUNTS, 0.0)
    assert_array_equal(labels, [0, 1, 1, -1, 2])


def test_consensus_exact_fraction_passes() -> None:
    counts = np.array([[3, 7], [7, 3]])  # 7 of 10 and 7 of 10
    labels, answered = consensus(counts, 0.7)
    assert_array_equal(labels, [1, 0])
    assert answered.all()


def test_consensus_rejects_bad_threshold() -> None:
    for t in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="threshold"):
            consensus(COUNTS, t)


def test_plurality_rejects_bad_counts() -> None:
    with pytest.raises(PayloadError, match="shape"):
        plurality(np.array([1, 2]))
    with pytest.raises(PayloadError, match="non-negative"):
        plurality(np.array([[1, -1]]))
    with pytest.raises(PayloadError, match="finite"):
        plurality(np.array([[1.0, np.nan]]))


def test_topk_vote_counts() -> None:
    # K = 2 clients, N = 2 samples, C = 4 classes
    scores = np.array(
        [
            [[0.1, 0.5, 0.3, 0.1], [2.0, -1.0, 0.0, 1.0]],
            [[0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0]],
        ]
    )
    # k = 1: argmax votes; client 2 sample 1 is a 4-way tie -> class 0
    assert_array_equal(topk_vote_counts(scores, 1), [[1, 1, 0, 0], [2, 0, 0, 0]])
    # k = 2: client 1: {1, 2}, {0, 3}; client 2: {0, then tie 1/2/3 -> 1}, {0, 1}
    assert_array_equal(topk_vote_counts(scores, 2), [[1, 2, 1, 0], [2, 1, 0, 1]])
    assert_array_equal(topk_vote_counts(scores, 4), [[2, 2, 2, 2], [2, 2, 2, 2]])


def test_topk_k1_matches_argmax_votes() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 20, 6))
    assert_array_equal(topk_vote_counts(scores, 1), vote_counts(scores.argmax(axis=2), 6))


def test_topk_rejects_bad_input() -> None:
    scores = np.zeros((2, 3, 4))
    for k in (0, 5, 1.5):
        with pytest.raises(ConfigError, match="k must be"):
            topk_vote_counts(scores, k)
    with pytest.raises(PayloadError, match="shape"):
        topk_vote_counts(np.zeros((3, 4)), 1)
    bad = scores.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(PayloadError, match="NaN"):
        topk_vote_counts(bad, 1)


def test_plurality_tiebreak_orders_equal_counts_then_lowest_id() -> None:
    from fedkd.fusion import first_choice_counts

    votes = np.array([[[2, 1]], [[2, 1]], [[1, 2]]])  # [K=3, N=1, k=2], best first
    counts = vote_counts(votes, 3)  # [[0, 3, 3]]: a tie between 1 and 2
    assert_array_equal(first_choice_counts(votes, 3), [[0, 1, 2]])
    assert plurality(counts)[0].tolist() == [1]  # no tie-break: the lowest id
    labels, agreement = plurality(counts, 3, tiebreak=first_choice_counts(votes, 3))
    assert labels.tolist() == [2] and agreement.tolist() == [1.0]
    # equal tie-breaks fall back to the lowest id; a tie-break never beats a higher count
    assert plurality(np.array([[2, 2, 0]]), 2, tiebreak=np.array([[1, 1, 0]]))[0].tolist() == [0]
    assert plurality(np.array([[1, 2, 0]]), 2, tiebreak=np.array([[9, 0, 0]]))[0].tolist() == [1]
