"""Confusion counts, the mean client's matrix and their checks, on hand-made numbers."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict
from helpers import info_for

from clients.app import _put_metrics
from fedkd.client.round import evaluate_client
from fedkd.client.runtime import ClientTensors
from fedkd.config import check_config, compose
from fedkd.confusion import (
    check_confusion,
    check_confusion_every,
    confusion_due,
    counts_from_labels,
    mean_client_confusion,
    row_normalise,
)
from fedkd.errors import ConfigError, PayloadError
from fedkd.knowledge import ClassLogits
from fedkd.train import confusion_matrix
from protocol import wire
from server import messages
from server.recorder import RunRecorder
from server.roster import Roster
from server.strategies import STRATEGIES


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
    check_config(compose(["logging.confusion_every=null"]))
    with pytest.raises(ConfigError, match="logging.confusion_every"):
        check_config(compose(["logging.confusion_every=-2"]))


def test_client_sends_counts_in_the_eval_record_only_when_asked():
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


# ---------------------------------------------------------------- server: ask, validate, record
def strategy(name: str, tmp_path, *overrides: str, recorder: bool = True):
    extra = ["model=mlp"] if name == "fedavg" else []
    info = info_for("num_rounds=4", f"strategy={name}", *extra, *overrides, num_clients=2)
    rec = RunRecorder(tmp_path, num_rounds=4, progress=False, table=False) if recorder else None
    return STRATEGIES.get(name)(info, rec, Roster({0: 10, 1: 11}, 2))


def planned(messages) -> list[bool]:

    return [bool(wire.read_config(m.content)[2].confusion) for m in messages]


@pytest.fixture
def plain_messages(monkeypatch):
    """Flower's Message needs a live run; the strategy's outgoing messages become plain records."""
    monkeypatch.setattr(messages, "Message", lambda content, **kw: SimpleNamespace(content=content))


@pytest.mark.parametrize(("every", "rounds"), [(0, [4]), (2, [2, 4]), (None, []), (False, [])])
def test_the_base_strategy_asks_for_counts_on_the_selected_rounds(
    tmp_path, plain_messages, every, rounds
):
    fd = strategy("fd", tmp_path, f"logging.confusion_every={json.dumps(every)}", recorder=False)
    asked = [r for r in range(1, 5) if all(planned(fd.configure_train(r, None, None, None)))]
    assert asked == rounds


def test_fedavg_asks_in_the_final_evaluation_for_the_last_round(tmp_path, plain_messages):
    fedavg = strategy("fedavg", tmp_path, "logging.confusion_every=3", recorder=False)
    # round r's train reply evaluates the global model of round r-1: asked at r = 4 (model 3)
    asked = [r for r in range(1, 5) if any(planned(fedavg.configure_train(r, None, None, None)))]
    assert asked == [4]
    assert planned(fedavg.configure_evaluate(4, None, None, None)) == [True, True]


def reply(node: int, counts: np.ndarray | None):
    """A stand-in for a client's reply: FD knowledge, metrics and optionally confusion counts."""
    content = RecordDict({wire.METRICS: MetricRecord({"num_train": 5, "global_test_acc": 0.5})})
    wire.put_payload(content, ClassLogits(np.eye(2, dtype=np.float32), np.array([3, 2])))
    if counts is not None:
        content[wire.EVAL] = wire.arrays_to_record({wire.GLOBAL_CONFUSION: counts})
    meta = SimpleNamespace(src_node_id=node)
    return SimpleNamespace(metadata=meta, content=content, has_error=lambda: False)


def test_a_bad_confusion_array_is_ignored_but_the_reply_is_kept(tmp_path, caplog):
    fd = strategy("fd", tmp_path)
    good = np.array([[3, 1], [0, 4]])
    bad = np.array([[1, -2], [0, 4]])
    fd.current.bytes_down = {0: 0, 1: 0}
    with caplog.at_level(logging.WARNING, logger="fedkd"):
        _, diagnostics = fd.aggregate_train(4, [reply(10, good), reply(11, bad)])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["round 4: ignored the confusion matrix of client 1: holds negative counts"]
    assert diagnostics["replies"] == 2 and not fd.dropped  # metrics and knowledge kept
    np.testing.assert_array_equal(fd.global_teacher.counts, [2, 2])  # both clients fused
    summary = fd.recorder.finish()
    assert summary["rounds"][-1]["num_clients"] == 2
    doc = json.loads((tmp_path / "confusion.json").read_text())
    (entry,) = doc["rounds"]
    assert entry["round"] == 4 and entry["clients"] == {"0": good.tolist()}
    np.testing.assert_allclose(entry["mean_client"], [[0.75, 0.25], [0.0, 1.0]])
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(row["bytes_up"] > 0 and "global_confusion" not in row for row in rows)
    images = tensorboard_images(tmp_path / "tensorboard" / "server", "confusion/mean_client")
    assert [image.step for image in images] == [4]


def tensorboard_images(folder, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"images": 0})
    acc.Reload()
    return acc.Images(tag) if tag in acc.Tags()["images"] else []
