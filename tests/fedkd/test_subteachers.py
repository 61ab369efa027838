"""Record-level privacy by sub-teachers (fedkd.privacy.subteachers, clients/subteachers.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from clients.subteachers import teacher_release
from fedkd.client.runtime import ClientTensors
from fedkd.config import compose
from fedkd.errors import ConfigError
from fedkd.models import build_model
from fedkd.plan import TeachersSpec
from fedkd.privacy.release import epsilon_after
from fedkd.privacy.subteachers import release, round_event, shard_of, sigma_for
from server.privacy import check_privacy
from server.strategies import STRATEGIES


def test_shards_are_disjoint_balanced_and_ignore_the_data():
    shard = shard_of(23, 5, seed=3)
    assert sorted(np.bincount(shard).tolist()) == [4, 4, 5, 5, 5]
    np.testing.assert_array_equal(shard, shard_of(23, 5, seed=3))  # a function of (n, seed) only
    assert not np.array_equal(shard, shard_of(23, 5, seed=4))
    with pytest.raises(ConfigError, match="fewer than privacy.shards"):
        shard_of(3, 5, seed=0)


def test_noise_scale_and_simplex():
    assert sigma_for(2.0, 4) == pytest.approx(2.0 * math.sqrt(2) / 4)
    probs = np.full((4, 50_000, 2), 0.5)
    out = release(probs, 0.0, np.random.default_rng(0))
    np.testing.assert_allclose(out, 0.5)
    noisy = release(probs, 0.01, np.random.default_rng(0))
    np.testing.assert_allclose(noisy.sum(axis=1), 1.0)
    # renormalising two entries 0.5 + e1, 0.5 + e2 gives a std of about sigma / 2 per entry
    assert noisy[:, 0].std() == pytest.approx(0.01 / math.sqrt(2), rel=0.05)


def test_a_round_composes_one_gaussian_query_per_public_sample():
    once = epsilon_after(round_event(3.0, 100), 1, 1e-5)
    import dp_accounting

    assert once == pytest.approx(epsilon_after(dp_accounting.GaussianDpEvent(3.0), 100, 1e-5))


def test_one_changed_record_changes_one_teacher_only():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (40,), generator=g)
    public = torch.rand(6, 1, 8, 8, generator=g)

    def teachers_after(train_x):
        data = ClientTensors(
            train_x=train_x, train_y=y, test_x=x[:2], test_y=y[:2], global_x=x[:2], global_y=y[:2],
            public_x=public, num_classes=10, input_shape=(1, 8, 8),
        )  # fmt: skip
        models = []
        for t in range(4):
            torch.manual_seed(t)
            models.append(build_model({"name": "mlp", "hidden": [16]}, (1, 8, 8), 10, 8))
        cfg = {
            "epochs": 1, "batch_size": 4, "eval_batch_size": 64,
            "optimizer": {"name": "sgd", "lr": 0.1},
        }  # fmt: skip
        out = teacher_release(
            models, data, TeachersSpec(shards=len(models), sigma=0.1), np.arange(6), cfg, torch.Generator().manual_seed(1),
            torch.device("cpu"), seed=0, server_round=1, pid=0,
        )  # fmt: skip
        assert out.space == "probs" and out.values.shape == (6, 10)
        return [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in models]

    before = teachers_after(x)
    changed = x.clone()
    changed[7] = 1.0 - changed[7]  # one record
    after = teachers_after(changed)
    differ = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert sum(differ) == 1
    assert differ.index(True) == int(shard_of(40, 4, 0)[7])


def test_subteachers_need_a_strategy_that_releases_probabilities():
    with pytest.raises(ConfigError, match="does not upload them"):
        check_privacy(compose(["strategy=fedmd", "privacy=subteachers"]), STRATEGIES.get("fedmd"))
    with pytest.raises(ConfigError, match="shards"):
        check_privacy(
            compose(["strategy=dsfl", "privacy=subteachers", "privacy.shards=1"]),
            STRATEGIES.get("dsfl"),
        )
    check_privacy(compose(["strategy=dsfl", "privacy=subteachers"]), STRATEGIES.get("dsfl"))
    with pytest.raises(ConfigError, match="era_on=probs"):
        STRATEGIES.get("dsfl").check_config(
            compose(["strategy=dsfl", "privacy=subteachers", "strategy.era_on=logits"])
        )
