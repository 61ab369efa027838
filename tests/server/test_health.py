"""The collapse warning (server/health.py) and the fused-target health of public-set methods."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import info_for

from fedkd.config import compose
from fedkd.errors import ConfigError
from fedkd.knowledge import PublicLogits
from server.health import CollapseWatch
from server.strategies import STRATEGIES


def test_warns_once_when_the_mean_accuracy_falls_back_to_chance():
    watch = CollapseWatch(num_classes=10, rounds=3, margin=0.02)
    # round 1 near chance (one class per client) is no collapse
    assert watch.update(1, {0: 0.11, 1: 0.12}) is None
    assert watch.update(2, {0: 0.50, 1: 0.40}) is None
    warning = watch.update(3, {0: 0.13, 1: 0.10})  # mean 0.115 <= 0.1 + 0.02 < 0.45
    assert warning is not None and "round 3" in warning and "down from 0.450" in warning
    assert watch.update(4, {0: 0.11, 1: 0.10}) is None  # once
    assert watch.warnings == [warning]


def test_warns_when_every_client_is_frozen_for_n_rounds():
    watch = CollapseWatch(num_classes=10, rounds=3, margin=0.0)
    assert watch.update(1, {0: 0.5, 1: 0.6}) is None
    assert watch.update(2, {0: 0.5, 1: 0.6}) is None  # 2 rounds alike
    warning = watch.update(3, {0: 0.5, 1: 0.6})  # 3 rounds alike
    assert warning is not None and "unchanged for 3 rounds" in warning
    moving = CollapseWatch(num_classes=10, rounds=3, margin=0.0)
    for rnd, acc in enumerate([0.5, 0.5, 0.51, 0.51, 0.52], start=1):
        assert moving.update(rnd, {0: acc, 1: 0.6}) is None


def test_off_and_bad_options():
    assert CollapseWatch(10, rounds=0, margin=0.5).update(1, {0: 0.0}) is None
    cfg = compose([])
    assert CollapseWatch.from_config(cfg, 10).rounds == cfg["logging"]["collapse_rounds"]
    with pytest.raises(ConfigError, match="logging.collapse_rounds"):
        CollapseWatch.from_config(compose(["logging.collapse_rounds=-1"]), 10)
    with pytest.raises(ConfigError, match="logging.collapse_margin"):
        CollapseWatch.from_config(compose(["logging.collapse_margin=2"]), 10)


def test_state_round_trip_keeps_the_count_and_the_peak():
    watch = CollapseWatch(num_classes=10, rounds=3, margin=0.0)
    watch.update(1, {0: 0.5})
    watch.update(2, {0: 0.5})
    again = CollapseWatch(num_classes=10, rounds=3, margin=0.0)
    again.load_state_dict(watch.state_dict())
    assert "unchanged" in again.update(3, {0: 0.5})
    assert "down from 0.500" in again.update(4, {0: 0.1})


def test_dsfl_reports_target_accuracy_and_entropy_against_held_back_labels():
    dsfl = STRATEGIES.get("dsfl")(
        info_for("strategy=dsfl", "strategy.open_size=2", "strategy.hard_targets=true")
    )
    idx = dsfl.indices_for(1)
    truth = dsfl.public_y[idx]
    # both clients put 0.8 on class 0 for the first sample, 0.8 on class 1 for the second
    probs = np.array([[0.8, 0.2], [0.2, 0.8]], np.float32)
    uploads = {c: PublicLogits(idx, probs, "probs") for c in range(2)}
    diag = dsfl.fuse(1, uploads, {0: 1, 1: 1})
    np.testing.assert_array_equal(dsfl.targets.values, [[1, 0], [0, 1]])  # hard targets
    assert diag["target_acc"] == pytest.approx(float(np.mean(truth == [0, 1])))
    assert diag["target_entropy"] == 0.0  # one-hot
    # the mean's entropy: -(0.8 ln 0.8 + 0.2 ln 0.2) = 0.500402
    assert diag["mean_entropy"] == pytest.approx(0.500402, abs=1e-6)


def test_dsfl_plan_warms_up_then_distils_after_local_training():
    dsfl = STRATEGIES.get("dsfl")(
        info_for("strategy=dsfl", "strategy.distill.start_round=3", "strategy.distill.steps=7")
    )
    assert dsfl.plan(2).distill.steps == 0
    plan = dsfl.plan(3)
    assert plan.distill.steps == 7 and plan.distill.when == "after"
    assert plan.extract.at == "after_train"
    assert plan.distill.optimizer == {"name": "adam", "lr": 0.001}


def test_dsfl_server_model_is_distilled_on_the_targets_and_evaluated():
    from fedkd.train import evaluate
    from server.app import prepare_run

    overrides = [
        "strategy=dsfl",
        "strategy.open_size=40",
        "strategy.distill.start_round=1",
        "strategy.distill.steps=30",
        "strategy.distill.optimizer.lr=0.01",
    ]
    info = prepare_run(compose(overrides))
    dsfl = STRATEGIES.get("dsfl")(info)
    idx = dsfl.indices_for(1)
    onehot = np.eye(info.num_classes, dtype=np.float32)[dsfl.public_y[idx]]
    uploads = {c: PublicLogits(idx, onehot, "probs") for c in range(2)}
    before = {k: v.copy() for k, v in dsfl.student.state().items()}
    diag = dsfl.fuse(1, uploads, {0: 1, 1: 1})
    after = dsfl.student.state()
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # it trained
    assert diag["target_acc"] == 1.0  # the clients were right everywhere
    # it fits the 40 targets it was given, and the reported figure is its test accuracy
    x = dsfl.public_x[idx]
    y = torch_labels(dsfl.public_y[idx])
    assert evaluate(dsfl.student.model, x, y, 64)[0] > 0.9
    assert diag["server_model_acc"] == evaluate(dsfl.student.model, dsfl.test_x, dsfl.test_y, 64)[0]
    # a checkpoint carries it
    again = STRATEGIES.get("dsfl")(info)
    again.load_state_dict(dsfl.state_dict())
    for key, value in again.student.state().items():
        np.testing.assert_array_equal(value, after[key])


def torch_labels(labels: np.ndarray):
    import torch

    return torch.from_numpy(np.asarray(labels, np.int64))


def test_fedmd_phases_pretrain_then_digest():
    fedmd = STRATEGIES.get("fedmd")(
        info_for("strategy=fedmd", "strategy.pretrain_epochs=20", "strategy.distill.start_round=3")
    )
    first, second, third = (fedmd.plan(r) for r in (1, 2, 3))
    assert first.train_epochs == 20 and first.distill.steps == 0
    assert second.train_epochs is None and second.distill.steps == 0
    assert third.distill.steps == 100 and third.distill.loss == "l1"
    with pytest.raises(ConfigError, match="strategy.pretrain_epochs"):
        STRATEGIES.get("fedmd").check_config(
            compose(["strategy=fedmd", "strategy.pretrain_epochs=-1"])
        )
