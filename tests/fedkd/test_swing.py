"""Swing-style adaptive temperature and soft-target noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import info_for
from torch import nn

from fedkd.config import compose
from fedkd.errors import ConfigError, PayloadError
from fedkd.knowledge import PublicLogits
from fedkd.losses import LOSSES
from fedkd.privacy.swing import (
    SCORES,
    SwingSpec,
    memorisation_score,
    noisy_soft_targets,
    reference_on,
    swing_release,
    swing_temperatures,
    tempered_softmax,
)
from fedkd.train import distill
from server.strategies import STRATEGIES
from server.strategies.public import check_swing


def test_temperature_is_linear_in_the_privacy_score():
    np.testing.assert_allclose(swing_temperatures([0.0, 0.5, 1.0]), [2.0, 11.0, 20.0])
    np.testing.assert_allclose(swing_temperatures([0.25], t_lo=1.0, t_hi=5.0), [2.0])


def test_oracle_score_marks_canaries_only():
    assert SCORES.get("oracle")(np.zeros((3, 2)), canary=np.array([1, 0, 1], bool)).tolist() == [
        1.0,
        0.0,
        1.0,
    ]
    assert SCORES.get("oracle")(np.zeros((2, 2))).tolist() == [0.0, 0.0]


def test_memorisation_score_by_hand():
    # C = 2, logits equal: predicted label 0, loss_T = log 2
    logits = np.zeros((1, 2))
    # no reference: loss_ref = log 2, pi = sigmoid(-b) = sigmoid(-2)
    assert memorisation_score(logits)[0] == pytest.approx(0.119203, abs=1e-6)
    # reference q(0) = 0.25: loss_ref = log 4, pi = sigmoid(2 (log 4 - log 2) - 2)
    ref = np.array([[0.25, 0.75]])
    assert memorisation_score(logits, reference=ref)[0] == pytest.approx(0.351214, abs=1e-6)
    # a confident client (loss_T ~ 0) vs a uniform reference: pi = sigmoid(2 log 2 - 2)
    confident = np.array([[50.0, 0.0]])
    assert memorisation_score(confident)[0] == pytest.approx(0.351214, abs=1e-6)
    # a NaN reference row means "not covered": the uniform reference is used
    nan_ref = np.full((1, 2), np.nan)
    assert memorisation_score(logits, reference=nan_ref)[0] == pytest.approx(0.119203, abs=1e-6)


def test_tempered_softmax_by_hand():
    z = np.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    q = tempered_softmax(z, np.array([1.0, 2.0]))
    np.testing.assert_allclose(q[0], [0.25, 0.75])
    np.testing.assert_allclose(q[1], [1 / (1 + math.sqrt(3)), math.sqrt(3) / (1 + math.sqrt(3))])


@pytest.mark.parametrize("noise", ["laplace", "gaussian"])
def test_noisy_soft_targets_stay_on_the_simplex(noise):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=200)
    for eps in (0.01, 1.0, 100.0):
        q = noisy_soft_targets(probs, eps, noise, rng)
        assert q.min() >= 0.0
        np.testing.assert_allclose(q.sum(axis=1), 1.0, atol=1e-12)
    # only the masked rows are noised; the others stay as they were
    where = np.arange(200) < 100
    q = noisy_soft_targets(probs, 0.5, noise, rng, where)
    np.testing.assert_allclose(q[100:], probs[100:])
    assert not np.allclose(q[:100], probs[:100])
    np.testing.assert_allclose(noisy_soft_targets(probs, None, noise, rng), probs)


def test_student_loss_by_hand():
    loss = LOSSES.get("swing_kl")
    student = torch.zeros(2, 2)
    q = torch.tensor([[0.25, 0.75], [0.5, 0.5]])
    # row 0, T = 2: 4 * (0.25 ln 0.5 + 0.75 ln 1.5) = 0.523248; row 1: KL = 0
    kl0 = 4 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    got = loss(student, q, temperature=torch.tensor([2.0, 10.0]))
    assert float(got) == pytest.approx(kl0 / 2, abs=1e-6)
    # one float temperature is the usual T^2 KL (kl_probs)
    same = LOSSES.get("kl_probs")(student, q, temperature=2.0)
    assert float(loss(student, q, temperature=2.0)) == pytest.approx(float(same), abs=1e-6)
    with pytest.raises(ValueError):
        loss(student, q, temperature=torch.tensor([2.0, -1.0]))


class Zero(nn.Module):
    """Logits always 0 (two classes): CE = log 2 on any labels."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        logits = torch.zeros(len(x), 2) + 0 * self.w
        return logits, logits


def test_swing_objective_is_one_minus_alpha_ce_plus_alpha_t2_kl():
    model = Zero()
    alpha = 0.5
    loss = distill(
        model,
        torch.zeros(1, 3),
        torch.tensor([[0.25, 0.75]]),
        loss_fn=LOSSES.get("swing_kl"),
        temperature=1.0,
        temperatures=torch.tensor([2.0]),
        epochs=1,
        batch_size=8,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        generator=torch.Generator().manual_seed(0),
        ce_data=(torch.zeros(4, 3), torch.tensor([0, 1, 1, 0])),
        ce_weight=1 - alpha,
        kd_weight=alpha,
    )
    kd = 4 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert loss == pytest.approx(alpha * kd + (1 - alpha) * math.log(2), abs=1e-6)


def test_release_gives_validated_soft_targets_and_temperatures():
    spec = SwingSpec(score="oracle", epsilon=2.0)
    payload = PublicLogits(
        indices=np.array([3, 7, 9]),
        values=np.array([[5.0, 0.0], [5.0, 0.0], [0.0, 1.0]], np.float32),
        space="logits",
    )
    out = swing_release(
        payload, spec, np.random.default_rng(0), canary=np.array([True, False, False])
    )
    assert out.space == "probs"
    np.testing.assert_allclose(out.temperatures, [20.0, 2.0, 2.0])
    out.validate(num_classes=2, num_public=10)
    decoded = PublicLogits.from_arrays(out.to_arrays(), out.meta())
    np.testing.assert_array_equal(decoded.temperatures, out.temperatures)
    hidden = swing_release(payload, SwingSpec(release_temperatures=False), np.random.default_rng(0))
    assert hidden.temperatures is None and "temperatures" not in hidden.to_arrays()


def test_bad_temperatures_are_refused():
    p = PublicLogits(
        indices=np.array([0, 1]),
        values=np.full((2, 2), 0.5, np.float32),
        space="probs",
        temperatures=np.array([2.0, -1.0], np.float32),
    )
    with pytest.raises(PayloadError, match="temperatures"):
        p.validate(num_classes=2)
    short = PublicLogits(p.indices, p.values, "probs", np.array([2.0], np.float32))
    with pytest.raises(PayloadError, match="temperatures"):
        short.validate(num_classes=2)


def test_reference_is_the_received_knowledge_where_it_covers_the_sample():
    received = PublicLogits(np.array([2, 5]), np.array([[0.1, 0.9], [0.6, 0.4]]), "probs")
    ref = reference_on(received, np.array([5, 6]))
    np.testing.assert_allclose(ref[0], [0.6, 0.4])
    assert np.isnan(ref[1]).all()
    assert reference_on(None, np.array([1])) is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["strategy=fedmd", "swing=adaptive"], "probabilities on the public set"),
        (["strategy=fd", "swing=adaptive"], "probabilities on the public set"),
        (["strategy=dsfl", "swing=adaptive", "swing.t_lo=30"], "t_lo <= t_hi"),
        (["strategy=dsfl", "swing=adaptive", "swing.noise=cauchy"], "swing.noise"),
        (["strategy=dsfl", "swing=adaptive", "+swing.tau=1"], "unknown swing option"),
        (["strategy=dsfl", "swing=adaptive", "privacy=gaussian"], "release_temperatures=false"),
        (["strategy=dsfl", "swing=adaptive", "privacy=central"], "privacy=central does not noise"),
        (["strategy=dsfl", "swing=adaptive", "privacy=subteachers"], "release_temperatures=false"),
        (["strategy=dsfl", "swing=adaptive", "strategy.era_on=logits"], "era_on=probs"),
    ],
)
def test_bad_swing_config_is_one_line(overrides, message):
    cfg = compose(overrides)
    strategy = STRATEGIES.get(cfg["strategy"]["name"])
    with pytest.raises(ConfigError, match=message):
        strategy.check_config(cfg)
        check_swing(cfg, strategy)


def test_swing_with_the_privacy_mod_is_allowed_when_nothing_private_leaks_beside():
    for extra in (["swing.score=oracle"], ["swing.release_temperatures=false"]):
        cfg = compose(["strategy=dsfl", "swing=adaptive", "privacy=gaussian", *extra])
        check_swing(cfg, STRATEGIES.get("dsfl"))


def test_dsfl_plans_swing_and_fuses_the_temperatures():
    dsfl = STRATEGIES.get("dsfl")(info_for("strategy=dsfl", "swing=adaptive", "num_clients=3"))
    plan = dsfl.plan(1)
    assert plan.extract.space == "logits" and plan.extract.swing["t_hi"] == 20.0
    assert plan.distill.loss == "swing_kl"
    assert plan.distill.kd_weight == 0.5 and plan.distill.ce_weight == 0.5
    idx = dsfl.indices_for(1)
    uploads = {
        cid: PublicLogits(
            idx,
            np.full((len(idx), 2), 0.5, np.float32),
            "probs",
            np.full(len(idx), t, np.float32),
        )
        for cid, t in enumerate([2.0, 4.0, 12.0])
    }
    dsfl.fuse(1, uploads, {0: 1, 1: 1, 2: 1})
    np.testing.assert_allclose(dsfl.targets.temperatures, 6.0)
    # without swing nothing changes
    plain = STRATEGIES.get("dsfl")(info_for("strategy=dsfl", "num_clients=3"))
    assert plain.plan(1).extract.swing is None
    assert plain.plan(1).distill.loss == "soft_ce"


def test_knfu_fuses_each_clients_temperatures_with_its_own_weights():
    knfu = STRATEGIES.get("knfu")(
        info_for("strategy=knfu", "swing=adaptive", "strategy.beta=0", "num_clients=3")
    )
    assert knfu.plan(1).extract.swing["score"] == "memorisation"
    idx = knfu.indices_for(1)
    uploads = {
        cid: PublicLogits(
            idx, np.full((len(idx), 2), 0.5, np.float32), "probs", np.full(len(idx), t, np.float32)
        )
        for cid, t in enumerate([2.0, 5.0, 8.0])
    }
    knfu.fuse(1, uploads, {0: 1, 1: 1, 2: 1})
    for cid in range(3):  # beta = 0: uniform weights, so every client gets the mean
        np.testing.assert_allclose(knfu.payload_for(2, cid).temperatures, 5.0, rtol=1e-6)
