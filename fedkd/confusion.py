"""Confusion matrices on the shared global test set, and the *mean client*'s matrix.

Accuracy alone hides *which* classes a label-skewed client never learns; the
confusion matrix of the mean client shows it at a glance (TensorBoard image
``confusion/mean_client``). Rows are true classes, columns predicted classes.
Pure numpy, no Flower or torch (``fedkd.train.confusion_matrix`` runs the
model): the ClientApp computes counts only when the server's plan asks for
them, and the server validates and averages them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedkd.errors import ConfigError, PayloadError

GLOBAL_CONFUSION = "global_confusion"  # the counts' name in evaluations and on the wire


def counts_from_labels(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 ``[C, C]`` counts: entry ``[i, j]`` is how many samples of class i were predicted j."""
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(
            f"labels and predictions must be 1-d of equal length ({y_true.shape} vs {y_pred.shape})"
        )
    for name, labels in (("labels", y_true), ("predictions", y_pred)):
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"{name} must be class ids in 0..{num_classes - 1}")
    flat = np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def row_normalise(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the per-class recall profile); empty rows stay 0, not NaN."""
    counts = np.asarray(counts, np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def mean_client_confusion(matrices: Sequence[np.ndarray]) -> np.ndarray:
    """The mean client: float64 ``[C, C]`` mean over clients of the row-normalised counts.

    Normalising each client's rows first makes every client weigh the same and
    every true class the same, whatever the sample counts; on the shared,
    class-balanced global test set all clients have identical row sums, so this
    equals the pooled counts, row-normalised. A row of a client with no samples
    of that class stays 0 (not NaN) and still enters the mean, so the mean's row
    sums are 1 only where every client had samples; an all-zero row means the
    class was absent, not that it was never predicted.
    """
    if not len(matrices):
        raise ValueError("mean_client_confusion needs at least one matrix")
    shapes = {np.shape(m) for m in matrices}
    if len(shapes) != 1:
        raise ValueError(f"confusion matrices differ in shape: {sorted(shapes)}")
    return np.mean([row_normalise(m) for m in matrices], axis=0)


def check_confusion(array: np.ndarray, num_classes: int) -> np.ndarray:
    """A client's counts as int64 ``[C, C]``; PayloadError (one line) if they cannot be counts.

    Float arrays are accepted when every value is a finite whole number.
    """
    array = np.asarray(array)
    if array.shape != (num_classes, num_classes):
        raise PayloadError(f"shape {array.shape}, expected ({num_classes}, {num_classes})")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise PayloadError("contains NaN or Inf")
        if not np.array_equal(array, np.round(array)):
            raise PayloadError("holds non-integer counts")
    elif not np.issubdtype(array.dtype, np.integer):
        raise PayloadError(f"dtype {array.dtype} is not a count type")
    if (array < 0).any():
        raise PayloadError("holds negative counts")
    return array.astype(np.int64)


def check_confusion_every(value: Any) -> None:
    """``logging.confusion_every``: null/false (off), 0 (last evaluated round only) or N >= 1."""
    if value is None or value is False:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            "logging.confusion_every must be null or false (off), 0 (last evaluated round) "
            f"or an integer N >= 1 (every N rounds and the last; got {value!r})"
        )


def confusion_due(every: Any, eval_round: int, last_round: int) -> bool:
    """Whether the evaluation of round ``eval_round``'s models should include confusion counts.

    ``every``: ``None``/``False`` never; ``0`` only ``last_round`` (the run's last
    evaluated round); ``N`` also every round that is a multiple of N (round 0,
    an untrained model, never).
    """
    if every is None or every is False:
        return False
    if eval_round == last_round:
        return True
    return every > 0 and eval_round > 0 and eval_round % every == 0
