"""Label voting over clients (FedKA federated voting; PATE vote histograms).

FedKA (Sun, Chong, Ochiai, arXiv 2203.11635, docs/algorithms.md §2.3 step 4) pseudo-labels
each unlabelled target sample with the per-sample majority vote of the client models'
argmax labels. PATE (Papernot et al., arXiv 1610.05755 / 1802.08908, §4.7) builds the
same per-sample histogram ``n_j(x)`` of teacher votes; its noisy aggregators live in
:mod:`fedkd.privacy.mechanisms` and take the counts built here.

- :func:`vote_counts`: histogram ``[N, C]`` from client votes ``[K, N]`` (one label each)
  or ``[K, N, k]`` (stacked :class:`~fedkd.knowledge.Votes` payloads, top-k lists);
  ``-1`` abstains.
- :func:`topk_vote_counts`: histogram from client scores ``[K, N, C]``: one vote for each
  of a client's top-k classes.
- :func:`plurality`: argmax label + agreement (top count / number of voters).
- :func:`consensus`: plurality label only where agreement reaches a threshold.

Choices that are ours: ties go to the **lowest class id** (FedKA's official code uses
``max(set(votes), key=votes.count)``, which breaks ties arbitrarily; pitfall 6 asks for
determinism), except that with top-k lists a tie is first broken by the number of
clients ranking each class first (:func:`first_choice_counts`); samples nobody voted on get label ``-1`` and agreement 0 and are never
answered by :func:`consensus`; a repeated class inside one client's top-k list is a
PayloadError rather than a double vote; score ties inside :func:`topk_vote_counts` also
go to the lowest class id; :func:`consensus` compares agreement with the threshold up to
1e-12 so that floating-point rounding never drops a sample that exactly meets it.
"""

from __future__ import annotations

import numpy as np

from fedkd.errors import ConfigError, PayloadError

__all__ = ["consensus", "first_choice_counts", "plurality", "topk_vote_counts", "vote_counts"]

_TOL = 1e-12


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ConfigError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


def vote_counts(votes: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-sample vote histogram ``[N, C]`` (int64) from client votes.

    ``votes`` is ``[K, N]`` (one class id per client and sample) or ``[K, N, k]`` (each
    client's top-k list, e.g. stacked ``Votes`` payloads); ``-1`` means the client
    abstains on that sample (or that slot of its list). Each client adds at most one vote
    to each class of a sample.
    """
    c = _check_num_classes(num_classes)
    votes = np.asarray(votes)
    if votes.ndim not in (2, 3):
        raise PayloadError(f"votes must have shape [K, N] or [K, N, k], got {list(votes.shape)}")
    if votes.size and not np.issubdtype(votes.dtype, np.integer):
        raise PayloadError(f"votes must be integer class ids, got dtype {votes.dtype}")
    if votes.size and (votes.min() < -1 or votes.max() >= c):
        raise PayloadError(
            f"votes: class ids must be in [-1, {c}), got {votes.min()}..{votes.max()}"
        )
    n = votes.shape[1]
    if votes.ndim == 3 and votes.shape[2] > 1:
        ordered = np.sort(votes, axis=2)
        dup = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)
        if dup.any():
            k_bad, n_bad = np.argwhere(dup.any(axis=2))[0]
            raise PayloadError(f"votes: client {k_bad} repeats a class for sample {n_bad}")
    sample = np.broadcast_to(np.arange(n).reshape((1, n) + (1,) * (votes.ndim - 2)), votes.shape)
    cast = votes >= 0
    flat = sample[cast].astype(np.int64) * c + votes[cast].astype(np.int64)
    return np.bincount(flat, minlength=n * c).reshape(n, c).astype(np.int64)


def topk_vote_counts(scores: np.ndarray, k: int = 1) -> np.ndarray:
    """Histogram ``[N, C]``: each client votes once for each of its ``k`` top-scoring classes.

    ``scores [K, N, C]`` are logits or probabilities (only their order matters). ``k = 1``
    is FedKA's argmax vote. Equal scores rank the lower class id first.
    """
    scores = np.asarray(scores)
    if scores.ndim != 3:
        raise PayloadError(f"scores must have shape [K, N, C], got {list(scores.shape)}")
    num_k, n, c = scores.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= c:
        raise ConfigError(f"top-k vote: k must be an int in [1, {c}], got {k}")
    if scores.size and not np.all(np.isfinite(scores)):
        raise PayloadError("scores contain NaN or Inf")
    top = np.argsort(-scores, axis=2, kind="stable")[..., :k]
    return vote_counts(top, c)


def _check_counts(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] == 0:
        raise PayloadError(f"counts must have shape [N, C] with C >= 1, got {list(counts.shape)}")
    if counts.size and (not np.all(np.isfinite(counts)) or counts.min() < 0):
        raise PayloadError("counts must be finite and non-negative")
    return counts


def _voters(counts: np.ndarray, num_voters: np.ndarray | int | None) -> np.ndarray:
    if num_voters is None:
        return counts.sum(axis=1, dtype=np.float64)
    voters = np.broadcast_to(np.asarray(num_voters, dtype=np.float64), (counts.shape[0],))
    if np.any(voters < counts.max(axis=1, initial=0)):
        raise PayloadError("num_voters is smaller than a sample's top count")
    return voters


def first_choice_counts(votes: np.ndarray, num_classes: int) -> np.ndarray:
    """Histogram ``[N, C]`` of the clients' first choices only (``votes [K, N, k]``, best
    first): the tie-break that keeps a top-k list's ranking in :func:`plurality`."""
    votes = np.asarray(votes)
    if votes.ndim != 3:
        raise PayloadError(f"ranked votes must have shape [K, N, k], got {list(votes.shape)}")
    return vote_counts(votes[..., 0], num_classes)


def plurality(
    counts: np.ndarray,
    num_voters: np.ndarray | int | None = None,
    tiebreak: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Plurality label and agreement per sample.

    Returns ``labels [N]`` (int64; argmax of ``counts``; among classes with the top
    count, the largest ``tiebreak [N, C]`` if given (for top-k votes, the first-choice
    counts, so a list's ranking is not lost), then the lowest class id;
    ``-1`` where nobody voted) and ``agreement [N]`` (float64) = top count / number of
    non-abstaining voters, 0 where nobody voted. The number of voters defaults to the row
    sum, which is right for one vote per client; pass ``num_voters`` (``[N]`` or a scalar)
    for top-k counts, where the row sum is ``k`` times larger.
    """
    counts = _check_counts(counts)
    voters = _voters(counts, num_voters)
    if tiebreak is None:
        labels = np.argmax(counts, axis=1).astype(np.int64)  # first maximum = lowest id
    else:
        tiebreak = np.asarray(tiebreak, np.float64)
        if tiebreak.shape != counts.shape or not np.all(np.isfinite(tiebreak)):
            raise PayloadError(
                f"tiebreak must be finite with the counts' shape {list(counts.shape)}, "
                f"got {list(tiebreak.shape)}"
            )
        top_count = counts.max(axis=1, keepdims=True)
        ranked = np.where(counts == top_count, tiebreak, -np.inf)
        labels = np.argmax(ranked, axis=1).astype(np.int64)  # first maximum = lowest id
    top = counts.max(axis=1, initial=0).astype(np.float64)
    voted = voters > 0
    agreement = np.divide(top, voters, out=np.zeros_like(top), where=voted)
    labels[~voted | (top <= 0)] = -1
    return labels, agreement


def consensus(
    counts: np.ndarray,
    threshold: float,
    num_voters: np.ndarray | int | None = None,
    tiebreak: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Plurality label where ``agreement >= threshold``, else ``-1``; plus the answered mask.

    ``threshold`` is a fraction of the voters in ``[0, 1]``. Samples nobody voted on are
    never answered, even with ``threshold = 0``.
    """
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"consensus: threshold must be in [0, 1], got {threshold}")
    labels, agreement = plurality(counts, num_voters, tiebreak)
    answered = (labels >= 0) & (agreement >= threshold - _TOL)
    return np.where(answered, labels, -1).astype(np.int64), answered
