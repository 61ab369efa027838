"""Confusion counts, the mean client's matrix and their checks, on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedkd.confusion import (
    check_confusion,
    check_confusion_every,
    confusion_due,
    counts_from_labels,
    mean_client_confusion,
    row_normalise,
)
from fedkd.errors import ConfigError, PayloadError
from fedkd.train import confusion_matrix


def test_counts_rows_are_true_classes_columns_predictions():
    counts = counts_from_labels(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 0, 2, 2]), 3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert counts.dtype == np.int64
    with pytest.raises(ValueError, match="class ids"):
        counts_from_labels(np.array([0]), np.array([3]), 3)


def test_confusion_matrix_of_a_model_uses_the_argmax_of_its_logits():
    class Fixed(torch.nn.Module):  # logits = the input: the prediction is the argmax column
        def forward(self, x):
            return x, x

    x = torch.tensor([[5.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [0.0, 3.0]])
    y = torch.tensor([0, 0, 1, 1, 1])
    counts = confusion_matrix(Fixed(), x, y, num_classes=2, batch_size=2)
    np.testing.assert_array_equal(counts, [[1, 1], [1, 2]])
    empty = confusion_matrix(Fixed(), x[:0], y[:0], num_classes=2, batch_size=2)
    np.testing.assert_array_equal(empty, np.zeros((2, 2)))


def test_mean_client_averages_row_normalised_matrices_and_keeps_empty_rows_zero():
    a = np.array([[3, 1], [0, 0]])  # class 1 absent: its row stays 0
    b = np.array([[1, 1], [2, 6]])
    np.testing.assert_allclose(row_normalise(a), [[0.75, 0.25], [0.0, 0.0]])
    mean = mean_client_confusion([a, b])
    # row 0: ([.75, .25] + [.5, .5]) / 2; row 1: ([0, 0] + [.25, .75]) / 2
    np.testing.assert_allclose(mean, [[0.625, 0.375], [0.125, 0.375]])
    with pytest.raises(ValueError, match="shape"):
        mean_client_confusion([a, np.zeros((3, 3))])


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 3), np.int64), "shape"),
        (np.array([[1, -1], [0, 2]]), "negative"),
        (np.array([[1.0, np.nan], [0.0, 2.0]]), "NaN or Inf"),
        (np.array([[1.5, 0.0], [0.0, 2.0]]), "non-integer"),
        (np.array([[True, False], [False, True]]), "not a count type"),
    ],
)
def test_bad_confusion_arrays_are_refused(array, message):
    with pytest.raises(PayloadError, match=message):
        check_confusion(array, num_classes=2)


def test_whole_float_counts_are_accepted_as_int64():
    counts = check_confusion(np.array([[2.0, 0.0], [1.0, 3.0]]), num_classes=2)
    assert counts.dtype == np.int64 and counts.tolist() == [[2, 0], [1, 3]]


def test_confusion_every_selects_rounds():
    assert [r for r in range(6) if confusion_due(0, r, last_round=5)] == [5]
    assert [r for r in range(8) if confusion_due(3, r, last_round=7)] == [3, 6, 7]
    assert not any(confusion_due(off, 5, last_round=5) for off in (None, False))
    for bad in (True, -1, "2", 1.5):
        with pytest.raises(ConfigError, match="logging.confusion_every"):
            check_confusion_every(bad)
    for good in (None, False, 0, 4):
        check_confusion_every(good)


def test_the_config_check_refuses_a_bad_confusion_every():
    from fedkd.config import check_config, compose

    check_config(compose(["logging.confusion_every=null"]))
    with pytest.raises(ConfigError, match="logging.confusion_every"):
        check_config(compose(["logging.confusion_every=-2"]))


def test_client_sends_counts_in_the_eval_record_only_when_asked():
    from flwr.app import RecordDict

    from clients import wire
    from clients.app import _put_metrics
    from clients.round import evaluate_client
    from clients.runtime import ClientTensors

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x, x

    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y = torch.tensor([0, 1, 1])
    data = ClientTensors(x, y, x, y, x, y, x, num_classes=2, input_shape=(2,))
    assert wire.GLOBAL_CONFUSION not in evaluate_client(Fixed(), data, 8, "cpu")
    metrics = {"partition_id": 3, **evaluate_client(Fixed(), data, 8, "cpu", confusion=True)}
    content = RecordDict()
    _put_metrics(content, metrics)
    counts = wire.get_eval_arrays(content)[wire.GLOBAL_CONFUSION]
    np.testing.assert_array_equal(counts, [[1, 0], [1, 1]])
    scalars = dict(content.metric_records[wire.METRICS])
    assert (
        scalars["global_test_acc"] == pytest.approx(2 / 3) and wire.GLOBAL_CONFUSION not in scalars
    )
