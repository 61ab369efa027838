"""Client-side privacy mod, central noise and their accounting."""

from __future__ import annotations

import json
import math

import dp_accounting
import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, Metadata, RecordDict
from helpers import info_for
from numpy.testing import assert_allclose, assert_array_equal

from clients.privacy_mod import SIMULATION_ENV, privacy_mod
from fedkd.config import compose
from fedkd.errors import ConfigError
from fedkd.knowledge import ClassLogits, ModelWeights, Prototypes, PublicLogits, Votes
from fedkd.plan import Plan
from fedkd.privacy.mechanisms import clip_rows, clip_total, randomized_response
from fedkd.privacy.release import (
    COUNT_SCALE,
    COUNT_SENSITIVITY,
    NOISES,
    LocalSpec,
    _noisy_counts,
    calibrate,
    epsilon_after,
    noisy_class_mean,
    noisy_mean,
    privatize,
    round_event,
    rr_noise_parameter,
)
from protocol import wire
from server.privacy import build_ledger, check_privacy
from server.strategies import STRATEGIES

GAUSS = LocalSpec(mechanism="gaussian", noise_multiplier=0.5, clip=2.0)


def test_accountant_reproduces_the_reference_values():
    # docs/algorithms.md §5.3: Gaussian, no sampling, delta 1e-5, 50 rounds
    assert epsilon_after(dp_accounting.GaussianDpEvent(5.0), 50, 1e-5) == pytest.approx(
        7.08, abs=0.01
    )
    assert epsilon_after(dp_accounting.GaussianDpEvent(1.0), 50, 1e-5) == pytest.approx(
        57.3, abs=0.1
    )
    assert epsilon_after(dp_accounting.GaussianDpEvent(5.0), 0, 1e-5) == 0.0


def test_calibration_hits_the_target_epsilon():
    z = calibrate(dp_accounting.GaussianDpEvent, 50, 7.08, 1e-5)
    assert z == pytest.approx(5.0, abs=0.01)
    make = lambda z: round_event("gaussian", z, "class_logits", 10, None)  # noqa: E731 (two releases)
    z2 = calibrate(make, 20, 4.0, 1e-5)
    assert epsilon_after(make(z2), 20, 1e-5) == pytest.approx(4.0, rel=1e-3)
    assert z2 > calibrate(dp_accounting.GaussianDpEvent, 20, 4.0, 1e-5)  # two releases cost more


def test_clipping_bounds_norms():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 5, (20, 7))
    assert np.linalg.norm(clip_rows(x, 1.5), axis=1).max() <= 1.5 + 1e-9
    assert np.abs(clip_rows(x, 1.5, order=1)).sum(axis=1).max() <= 1.5 + 1e-9
    assert np.linalg.norm(clip_total(x, 3.0)) == pytest.approx(3.0)
    small = np.full((2, 2), 0.1)
    np.testing.assert_array_equal(clip_total(small, 3.0), small)  # inside the bound: unchanged
    released = privatize(
        PublicLogits(indices=np.arange(20), values=x.astype(np.float32), space="logits"),
        LocalSpec(mechanism="gaussian", noise_multiplier=0.0, clip=3.0, row_clip=1.0),
        rng,
    )
    assert np.linalg.norm(released.values) <= 3.0 + 1e-5
    assert np.linalg.norm(released.values, axis=1).max() <= 1.0 + 1e-5


@pytest.mark.parametrize(
    ("mechanism", "std_of_scale"), [("gaussian", 1.0), ("laplace", math.sqrt(2))]
)
def test_noise_has_the_configured_scale(mechanism, std_of_scale):
    spec = LocalSpec(mechanism=mechanism, noise_multiplier=0.5, clip=2.0)
    zeros = PublicLogits(
        indices=np.arange(400), values=np.zeros((400, 50), np.float32), space="logits"
    )
    noise = privatize(zeros, spec, np.random.default_rng(1)).values
    scale = 0.5 * 2 * 2.0  # z * replace-one sensitivity 2S
    assert noise.std() == pytest.approx(std_of_scale * scale, rel=0.02)
    assert abs(noise.mean()) < 4 * noise.std() / math.sqrt(noise.size)


def test_probabilities_stay_on_the_simplex_after_noise():
    probs = np.full((5, 4), 0.25, np.float32)
    out = privatize(PublicLogits(np.arange(5), probs, "probs"), GAUSS, np.random.default_rng(0))
    assert (out.values >= 0).all()
    np.testing.assert_allclose(out.values.sum(axis=1), 1.0, rtol=1e-5)


def test_per_class_payloads_noise_their_counts_too():
    table = ClassLogits(logits=np.eye(3, dtype=np.float32), counts=np.array([30, 10, 0]))
    out = privatize(table, LocalSpec("gaussian", 1e-6, clip=10.0), np.random.default_rng(0))
    np.testing.assert_allclose(out.logits, np.eye(3), atol=1e-4)
    # released as a histogram on the public COUNT_SCALE grid: the totals no longer leak
    np.testing.assert_array_equal(out.counts, [750, 250, 0])
    protos = Prototypes(prototypes=np.ones((3, 2), np.float32), counts=np.array([1, 1, 2]))
    noisy = privatize(protos, GAUSS, np.random.default_rng(0))
    assert noisy.counts.dtype == np.int64 and (noisy.counts >= 0).all()
    assert not np.allclose(noisy.prototypes, 1.0)
    assert abs(int(noisy.counts.sum()) - COUNT_SCALE) < 5 * COUNT_SCALE


def test_votes_go_through_randomized_response():
    votes = Votes(indices=np.arange(20_000), votes=np.zeros((20_000, 1), np.int64))
    spec = LocalSpec("gaussian", 0.0, clip=1.0, vote_epsilon=1.0, num_classes=10)
    out = privatize(votes, spec, np.random.default_rng(0))
    keep = math.e / (math.e + 9)
    assert (out.votes == 0).mean() == pytest.approx(keep, abs=0.01)
    assert out.votes.min() >= 0 and out.votes.max() <= 9
    with pytest.raises(ConfigError, match="top_k = 1"):
        privatize(Votes(np.arange(2), np.array([[0, 1], [1, 0]])), spec, np.random.default_rng(0))
    np.testing.assert_array_equal(
        randomized_response(np.array([-1, -1]), 3, 0.1, np.random.default_rng(0)), [-1, -1]
    )


def test_weights_are_noised_and_integer_counters_withheld():
    weights = ModelWeights({"w": np.zeros((3, 3), np.float32), "steps": np.array(7, np.int64)})
    out = privatize(weights, GAUSS, np.random.default_rng(0))
    # BatchNorm's step counter counts the client's batches (its data size): sent as 0
    assert out.arrays["steps"] == 0 and out.arrays["steps"].shape == ()
    assert out.arrays["steps"].dtype == np.int64 and weights.arrays["steps"] == 7
    only = privatize(
        ModelWeights({"steps": np.array(7, np.int64)}), GAUSS, np.random.default_rng(0)
    )
    assert only.arrays["steps"] == 0
    assert out.arrays["w"].dtype == np.float32 and np.abs(out.arrays["w"]).sum() > 0


def test_central_noisy_mean_clips_each_upload_and_uses_a_fixed_denominator():
    uploads = np.stack([np.full((2, 2), 10.0), np.zeros((2, 2))])  # first has norm 20
    exact = noisy_mean(
        uploads, clip=1.0, noise_multiplier=0.0, denominator=4, rng=np.random.default_rng(0)
    )
    np.testing.assert_allclose(exact, np.full((2, 2), 0.5 / 4))  # clipped to norm 1, / 4
    many = np.zeros((3, 100, 100))
    noise = noisy_mean(
        many, clip=2.0, noise_multiplier=1.5, denominator=5, rng=np.random.default_rng(0)
    )
    assert noise.std() == pytest.approx(1.5 * 2.0 / 5, rel=0.02)


def plain_cfg(*overrides: str) -> dict:
    return compose(list(overrides))


def test_central_noise_refuses_personalised_fusion():
    with pytest.raises(ConfigError, match="fuses personally"):
        check_privacy(plain_cfg("strategy=knfu", "privacy=central"), STRATEGIES.get("knfu"))
    with pytest.raises(ConfigError, match="does not fuse with a plain mean"):
        check_privacy(plain_cfg("strategy=vote", "privacy=central"), STRATEGIES.get("vote"))
    check_privacy(plain_cfg("strategy=knfu", "privacy=gaussian"), STRATEGIES.get("knfu"))
    with pytest.raises(ConfigError, match="teacher=loo"):
        STRATEGIES.get("fd").check_config(plain_cfg("privacy=central", "strategy.teacher=loo"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("privacy.delta=2", "privacy.delta"),
        ("privacy.clip=null", "privacy.clip must be set"),
        ("privacy.target_epsilon=null", "noise_multiplier or privacy.target_epsilon"),
        ("privacy.on_budget=ignore", "on_budget"),
        ("privacy.noise_multiplier=-1", "noise_multiplier must be > 0"),
    ],
)
def test_bad_privacy_options_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        check_privacy(plain_cfg("privacy=gaussian", override), STRATEGIES.get("fd"))


def test_a_privacy_section_missing_options_names_them_and_its_defaults():
    cfg = plain_cfg("privacy=subteachers", "strategy=dsfl")
    del cfg["privacy"]["on_budget"], cfg["privacy"]["shards"]
    with pytest.raises(
        ConfigError,
        match=r"privacy section misses on_budget, shards: start from configs/privacy/subteachers",
    ):
        check_privacy(cfg, STRATEGIES.get("dsfl"))


def test_ledger_charges_sampled_clients_and_stops_at_the_budget():
    strategy = STRATEGIES.get("fd")(
        info_for("privacy=gaussian", "privacy.noise_multiplier=2.0", "privacy.budget_epsilon=5")
    )
    strategy.node_of = {0: 10, 1: 11, 2: 12}
    per_round = [epsilon_after(strategy.privacy.event, n, 1e-5) for n in range(1, 8)]
    allowed = sum(e <= 5 for e in per_round)
    for rnd in range(1, 8):
        if not strategy.budget_allows(rnd):
            break
        strategy.privacy.charge([0, 1, 2])
    assert strategy.privacy.rounds[0] == allowed
    assert "privacy budget epsilon=5" in strategy.status.stop_reason
    assert strategy.privacy.max_epsilon() <= 5


def instruction(content: RecordDict) -> Message:
    """A train message as the SuperLink delivers it (metadata set, no run context needed)."""
    metadata = Metadata(
        run_id=1, message_id="m1", src_node_id=0, dst_node_id=1, reply_to_message_id="",
        group_id="", created_at=0.0, ttl=60.0, message_type=MessageType.TRAIN,
    )  # fmt: skip
    return Message(content=content, metadata=metadata)


def mod_config(seeded: bool) -> str:
    """The run config a simulated client receives (the composed config, the noise switch set)."""
    return json.dumps(plain_cfg(f"simulation.seeded_noise={str(seeded).lower()}"))


@pytest.mark.parametrize("seeded", [True, False])
def test_the_mod_noises_the_reply_and_leaves_other_messages_alone(seeded, monkeypatch):
    monkeypatch.setenv(SIMULATION_ENV, "1")
    ledger = build_ledger(plain_cfg("privacy=gaussian"), "class_logits", 10, 10)
    plan = {
        "extract": {"kind": "class_logits"},
        "privacy": {**ledger.local.to_dict(), "seeded": seeded},
    }
    content = RecordDict(
        {wire.CONFIG: wire.make_config(2, mod_config(seeded), Plan.from_dict(plan))}
    )
    message = instruction(content)
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 3}, state=RecordDict(), run_config={}
    )
    sent = ClassLogits(logits=np.eye(10, dtype=np.float32), counts=np.full(10, 5))

    def client(msg, ctx):
        reply = RecordDict()
        wire.put_payload(reply, sent)
        return Message(content=reply, reply_to=msg)

    out = wire.get_payload(privacy_mod(message, context, client).content)
    assert not np.allclose(out.logits, sent.logits)
    assert out.counts.sum() != sent.counts.sum()  # on the COUNT_SCALE grid
    again = wire.get_payload(privacy_mod(message, context, client).content)
    # seeded (simulation only): the same noise from (seed, round, client); else OS entropy
    assert np.array_equal(out.logits, again.logits) == seeded
    plan.pop("privacy")
    quiet = RecordDict({wire.CONFIG: wire.make_config(2, mod_config(seeded), Plan.from_dict(plan))})
    message = instruction(quiet)
    np.testing.assert_array_equal(
        wire.get_payload(privacy_mod(message, context, client).content).logits, sent.logits
    )


def test_central_per_class_mean_divides_by_the_holders_not_the_cohort():
    """z = 0, no clipping: a class held by one of five clients keeps its row (a fixed
    denominator gave [0, 1.2, 0] for [0, 6, 0])."""
    values = np.zeros((5, 3, 3))
    counts = np.zeros((5, 3), dtype=np.int64)
    values[0, 1], counts[0, 1] = [0, 6, 0], 5  # client 0: class 1 only
    values[1:, 0], counts[1:, 0] = [2, 0, 0], 3  # clients 1-4: class 0 only
    mean, present, weight = noisy_class_mean(values, counts, 100.0, 0.0, np.random.default_rng())
    assert_allclose(mean[:2], [[2, 0, 0], [0, 6, 0]])
    assert present.tolist() == [True, True, False]  # nobody holds class 2
    assert_allclose(weight, [4, 1, 0])


def test_central_per_class_mean_weights_and_clips_by_hand():
    # A holds classes 0 and 1 (u = 1/sqrt 2 each), B class 0 only (u = 1)
    values = np.array([[[4, 0, 0], [0, 4, 0], [0, 0, 0]], [[1, 0, 0], [0, 0, 0], [0, 0, 0]]])
    counts = np.array([[2, 2, 0], [7, 0, 0]])
    mean, _, weight = noisy_class_mean(values, counts, 100.0, 0.0, np.random.default_rng())
    # class 0: (4/sqrt2 + 1) / (1/sqrt2 + 1) = 3.82843 / 1.70711 = 2.24264
    assert_allclose(mean[0], [2.24264, 0, 0], atol=1e-5)
    assert_allclose(mean[1], [0, 4, 0])  # (4/sqrt2) / (1/sqrt2)
    assert_allclose(weight, [1.70711, 0.70711, 0], atol=1e-5)
    # S = 2: A's table (norm sqrt 32 = 5.657) is scaled by 2/5.657 = 0.35355, B's (norm 1) kept
    clipped, _, _ = noisy_class_mean(values, counts, 2.0, 0.0, np.random.default_rng())
    assert_allclose(clipped[1], [0, 4 * 0.35355, 0], atol=1e-4)
    # the noise: std z*S on the sums, z on the weights
    draws = [
        noisy_class_mean(values, counts, 2.0, 1.5, np.random.default_rng(s))[2] for s in range(400)
    ]
    assert np.std(np.array(draws)[:, 2]) == pytest.approx(1.5, rel=0.12)


def test_central_fd_and_fedproto_keep_a_rare_class_at_its_size():
    from fedkd.knowledge import ClassLogits, Prototypes

    for name in ("fd", "fedproto"):
        strategy = STRATEGIES.get(name)(
            info_for(f"strategy={name}", "privacy=central", "privacy.noise_multiplier=1",
                     "privacy.clip=100", num_clients=5, num_classes=3)
        )  # fmt: skip
        strategy.privacy.central["noise_multiplier"] = 0.0
        rows = [np.array([[0, 0, 0], [0, 6, 0], [0, 0, 0]], np.float32)] + [
            np.array([[2, 0, 0], [0, 0, 0], [0, 0, 0]], np.float32)
        ] * 4
        held = [np.array([0, 5, 0])] + [np.array([3, 0, 0])] * 4
        if name == "fd":
            uploads = {k: ClassLogits(logits=rows[k], counts=held[k]) for k in range(5)}
            strategy.fuse(1, uploads, dict.fromkeys(range(5), 1))
            fused = strategy.global_teacher.logits
        else:
            uploads = {k: Prototypes(prototypes=rows[k], counts=held[k]) for k in range(5)}
            strategy.fuse(1, uploads, dict.fromkeys(range(5), 1))
            fused = strategy.global_prototypes.prototypes
        assert_allclose(fused[:2], [[2, 0, 0], [0, 6, 0]], err_msg=name)


def test_randomized_response_is_accounted_through_its_exact_rdp():
    """One k-ary response, replace-one, order 2, by hand: D_2 = log((e^2e + e^-e + k-2) / Z)."""
    eps, k = 1.0, 10
    z = math.exp(eps) + k - 1
    hand = math.log((math.exp(2 * eps) + math.exp(-eps) + (k - 2)) / z)  # 0.29613
    acc = dp_accounting.rdp.RdpAccountant(
        orders=[2.0], neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    acc.compose(round_event("gaussian", 0.0, "votes", 1, eps, k))
    assert acc._rdp[0] == pytest.approx(hand) == pytest.approx(0.29613, abs=1e-5)
    # keep probability e^eps / (e^eps + k - 1) = 1 - p + p/k
    p = rr_noise_parameter(eps, k)
    assert 1 - p + p / k == pytest.approx(math.exp(eps) / z)
    # tighter than the zCDP bound rho = eps^2 / 2 it replaces (500 labels, 10 rounds)
    exact = epsilon_after(round_event("gaussian", 0.0, "votes", 500, 0.1, 10), 10, 1e-5)
    zcdp = epsilon_after(dp_accounting.ZCDpEvent(rho=500 * 0.1**2 / 2), 10, 1e-5)
    assert exact == pytest.approx(19.56, abs=0.01) and zcdp == pytest.approx(57.30, abs=0.01)


def test_a_label_histogram_is_noised_at_its_l2_sensitivity_sqrt2():
    # two one-hot histograms are the farthest apart: L2 sqrt(2), L1 2
    assert np.linalg.norm(np.array([1.0, 0, 0]) - np.array([0, 1.0, 0])) == pytest.approx(
        COUNT_SENSITIVITY[2]
    )
    counts = np.array([30, 10, 60])
    for mechanism, draw in (("gaussian", "normal"), ("laplace", "laplace")):
        spec = LocalSpec(mechanism=mechanism, noise_multiplier=0.7, clip=1.0)
        noise = getattr(np.random.default_rng(3), draw)(
            0.0, 0.7 * COUNT_SENSITIVITY[NOISES.get(mechanism).order], size=3
        )
        expected = np.rint(np.clip(counts / 100 + noise, 0, None) * COUNT_SCALE)
        assert_array_equal(_noisy_counts(counts, spec, np.random.default_rng(3)), expected)
    assert {1: 2.0, 2: pytest.approx(1.41421356)} == COUNT_SENSITIVITY
