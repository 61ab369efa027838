"""Leakage metrics, canaries and the attack.

The attack is tested on synthetic uploads passed through the real client-side privacy
mod's ``privatize``; the canary insertion and the server's canary log on the real data
pipeline and strategy; and, marked slow, end to end on two short real runs. ``fedkd-leakage`` (docs/leakage.md) is the full harness.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import info_for

from fedkd.config import compose
from fedkd.data import build_federated_data
from fedkd.errors import ConfigError
from fedkd.knowledge import PublicLogits
from fedkd.plan import Plan
from fedkd.privacy.leakage import canary_log_probs, exposure, mean_exposure, membership_auc
from fedkd.privacy.release import LocalSpec, privatize
from server.strategies import STRATEGIES


def test_auc_on_hand_made_scores():
    assert membership_auc([3, 4], [1, 2]) == 1.0
    assert membership_auc([1, 2], [3, 4]) == 0.0
    assert membership_auc([1, 3], [2, 2]) == 0.5
    assert membership_auc([1], [1]) == 0.5
    assert membership_auc([2, 3, 1], [0, 2]) == pytest.approx(
        (1.5 + 2 + 1) / 6
    )  # 2: > 0, = 2; 3: > both; 1: > 0
    assert math.isnan(membership_auc([np.nan], [1.0]))


def test_exposure_on_hand_made_codes():
    lp = np.log(np.array([[0.9, 0.1], [0.8, 0.2]]))
    assert exposure(lp, [0, 0]) == pytest.approx(2.0)  # rank 1 of 4: log2 4 - log2 1
    assert exposure(lp, [1, 1]) == pytest.approx(0.0)  # rank 4 of 4
    assert exposure(lp, [0, 1]) == pytest.approx(2 - math.log2(2))  # 0.9*0.2 > 0.1*0.8
    uniform = np.log(np.full((2, 2), 0.5))
    assert exposure(uniform, [0, 1]) == pytest.approx(2 - math.log2(2.5))  # mean rank of ties


def brute_force_exposure(lp: np.ndarray, code: np.ndarray) -> float:
    """Every one of the C^m label strings scored and ranked (small codes only)."""
    m, c = lp.shape
    scores = np.array([sum(lp[i, s[i]] for i in range(m)) for s in np.ndindex(*(c,) * m)])
    true = lp[np.arange(m), code].sum()
    tol = 1e-9 * max(1.0, abs(true))
    rank = (scores > true + tol).sum() + ((np.abs(scores - true) <= tol).sum() + 1) / 2
    return m * math.log2(c) - math.log2(rank)


def test_exposure_is_exact_and_its_extrapolation_agrees_with_enumeration():
    rng = np.random.default_rng(0)
    for trial in range(12):
        lp = np.log(rng.dirichlet(np.full(6, 0.5), size=4))  # 6^4 = 1296 strings
        code = lp.argmax(axis=1)
        code[: trial % 4] = rng.integers(0, 6, size=trial % 4)  # from memorised to random
        exact = brute_force_exposure(lp, code)
        assert exposure(lp, code) == pytest.approx(exact)  # meet in the middle: exact
        # the saddle-point tail (used beyond exact_limit) against exact enumeration
        assert exposure(lp, code, exact_limit=0) == pytest.approx(exact, abs=0.6), trial
    assert mean_exposure(lp, lp.argmax(axis=1), 4) == pytest.approx(4 * math.log2(6))
    assert math.isnan(mean_exposure(lp, code, 5))


def test_a_memorised_seven_label_code_is_not_underestimated():
    """10^7 candidates: a normal fit gave about half the exposure of the exact rank."""
    rng = np.random.default_rng(2)
    lp = np.log(rng.dirichlet(np.full(10, 0.5), size=7))
    top = lp.argmax(axis=1)
    assert exposure(lp, top) == pytest.approx(7 * math.log2(10))  # 23.25 bits, rank 1
    assert exposure(lp, top, exact_limit=0) == pytest.approx(7 * math.log2(10))
    second = top.copy()
    second[0] = np.argsort(lp[0])[-2]
    exact = exposure(lp, second)
    assert 15 < exact < 7 * math.log2(10)
    assert exposure(lp, second, exact_limit=0) == pytest.approx(exact, abs=0.3)


def test_canary_log_probs_average_rounds_and_skip_missing():
    values = np.array([[[0.5, 0.5], [np.nan, np.nan]], [[0.25, 0.75], [1.0, 0.0]]])
    lp = canary_log_probs(values, "probs")
    np.testing.assert_allclose(lp[0], np.log([0.375, 0.625]))
    np.testing.assert_allclose(lp[1], np.log([1.0, 1e-6]))  # zeros floored
    logits = canary_log_probs(np.zeros((1, 1, 4)), "logits")
    np.testing.assert_allclose(logits, np.log(0.25))
    missing = canary_log_probs(np.full((2, 1, 4), np.nan), "probs")
    np.testing.assert_allclose(missing, np.log(0.25))


def _uploads(rng, n=40, c=10):
    """A client that memorised its members: high q(label) on members, ~uniform elsewhere."""
    labels = rng.integers(0, c, size=2 * n)
    members = np.arange(2 * n) < n
    probs = rng.dirichlet(np.ones(c), size=2 * n)
    probs[members] = 0.2 * probs[members]
    probs[np.flatnonzero(members), labels[members]] += 0.8
    return probs, labels, members


def test_attack_auc_with_strong_noise_is_near_chance_and_below_no_noise():
    rng = np.random.default_rng(0)
    probs, labels, members = _uploads(rng)
    idx = np.arange(len(labels))

    def auc(noise_multiplier: float, rounds: int = 10) -> float:
        released = []
        for r in range(rounds):
            payload = PublicLogits(idx, probs.astype(np.float32), "probs")
            spec = LocalSpec("gaussian", noise_multiplier, clip=1.0)
            released.append(privatize(payload, spec, np.random.default_rng([1, r])).values)
        lp = canary_log_probs(np.stack(released), "probs")
        score = lp[idx, labels]
        return membership_auc(score[members], score[~members])

    clean, strong = auc(0.0), auc(10.0)
    assert clean == 1.0
    assert strong < clean and abs(strong - 0.5) < 0.15


def test_canaries_go_into_one_client_and_the_public_set():
    base = compose(["num_clients=5"])
    cfg = compose(["num_clients=5", "split.canaries.count=3", "split.canaries.repeats=2"])
    plain, fed = build_federated_data(base), build_federated_data(cfg)
    assert len(fed.clients[0].train.y) == len(plain.clients[0].train.y) + 6
    for k in range(1, 5):
        np.testing.assert_array_equal(fed.clients[k].train.y, plain.clients[k].train.y)
    assert len(fed.public_x) == len(plain.public_x) + 6
    np.testing.assert_array_equal(
        fed.canary_public, np.arange(len(plain.public_x), len(fed.public_x))
    )
    members_x = fed.public_x[fed.canary_public[:3]]
    np.testing.assert_array_equal(fed.clients[0].train.x[-3:], members_x)
    np.testing.assert_array_equal(fed.clients[0].train.y[-3:], fed.public_y[fed.canary_public[:3]])
    assert members_x.min() >= plain.public_x.min() and members_x.max() <= plain.public_x.max()
    again = build_federated_data(cfg)
    np.testing.assert_array_equal(again.public_x, fed.public_x)  # seeded
    with pytest.raises(ConfigError, match="split.canaries.client"):
        build_federated_data(
            compose(["num_clients=5", "split.canaries.count=1", "split.canaries.client=9"])
        )


def test_server_logs_the_canary_clients_uploads(tmp_path):
    class Recorder:
        run_dir = tmp_path

    info = info_for("strategy=dsfl", "split.canaries.count=1", num_public=6)
    dsfl = STRATEGIES.get("dsfl")(info)
    dsfl.recorder = Recorder()
    dsfl.canaries.labels = np.array([1, 0])  # the real labels come from the data
    idx = dsfl.indices_for(1)
    values = np.full((len(idx), 2), 0.5, np.float32)
    values[idx == 4] = [0.1, 0.9]
    for cid in (1, 0):
        dsfl.check_upload(1, cid, PublicLogits(idx, values, "probs"))
    saved = np.load(tmp_path / "canary_uploads.npz")
    assert saved["rounds"].tolist() == [1]
    assert saved["members"].tolist() == [True, False]
    if 4 in idx:
        np.testing.assert_allclose(saved["values"][0, 0], [0.1, 0.9])
    assert np.isnan(saved["temperatures"]).all()


def test_harness_measures_a_run_directory_and_writes_table_and_figure(tmp_path):
    from simulations.leakage import measure, plot, write_table

    rng = np.random.default_rng(0)
    probs, labels, members = _uploads(rng, n=8)
    run = tmp_path / "run"
    run.mkdir()
    summary = {
        "final": {"global_test_acc": {"last": 0.5}, "local_test_acc": {"last": 0.8}},
        "privacy": {"epsilon_max": 3.5},
    }
    (run / "summary.json").write_text(__import__("json").dumps(summary))
    np.savez(
        run / "canary_uploads.npz",
        rounds=np.array([1]),
        values=probs[None],
        temperatures=np.full((1, len(labels)), np.nan),
        labels=labels,
        members=members,
        space=np.array("probs"),
    )
    row = {"setting": "x", **measure(run)}
    assert row["auc"] == 1.0 and row["epsilon"] == 3.5 and math.isnan(row["auc_temperature"])
    assert row["exposure"] > row["exposure_nonmember"]
    write_table([row], tmp_path / "t.md", tmp_path / "t.csv", "setting line")
    assert "| x | 3.5 | 50.0 | 80.0 | 1.000 | - |" in (tmp_path / "t.md").read_text()
    plot([row, {**row, "setting": "swing", "epsilon": math.inf}], tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


@pytest.mark.slow
def test_real_runs_strong_noise_brings_the_attack_to_chance(tmp_path, sim_session):
    """Two short real fedkd-sim runs of the harness's settings (fixed seed, one shared Ray
    session): no noise vs the Gaussian mod at z = 1. Three rounds: AUC 0.75 without noise,
    0.56 with it (chance 0.5 ± 0.12)."""
    from simulations.leakage import BASE, SETTINGS, measure

    runs = {}
    for label in ("none", "gaussian z=1"):
        run_dir = tmp_path / label.replace(" ", "_").replace("=", "")
        args = [*BASE, "num_rounds=3", "seed=0", *SETTINGS[label], f"hydra.run.dir={run_dir}"]
        result = sim_session.run(args)
        assert result.status == 0, f"{label}: {result.last_line}"
        runs[label] = measure(run_dir)
    clean, strong = runs["none"]["auc"], runs["gaussian z=1"]["auc"]
    assert clean > 0.7
    assert strong < clean and abs(strong - 0.5) < 0.15
    assert runs["gaussian z=1"]["epsilon"] < runs["none"]["epsilon"] == math.inf


def test_denoising_by_hand():
    """q = max(c + n, 0) / s with c = [.03, .01, 0], n = [.5, -.4, .2]: s = .73,
    q = [.7260, 0, .2740]; the attacker's c_j = q_j * (n_0 + n_2) - n_j on q_j > 0."""
    from simulations.leakage import denoised

    c, n = np.array([0.03, 0.01, 0.0]), np.array([0.5, -0.4, 0.2])
    q = np.maximum(c + n, 0) / np.maximum(c + n, 0).sum()
    est = denoised(q[None, None], n[None, None])[0, 0]
    np.testing.assert_allclose(est, [0.72603 * 0.7 - 0.5, 0.0, 0.27397 * 0.7 - 0.2], atol=1e-5)
    missing = denoised(np.full((1, 1, 3), np.nan), n[None, None])
    assert np.isnan(missing).all()


def test_the_attacker_regenerates_seeded_noise_exactly(tmp_path, monkeypatch):
    """Through the real privacy mod: client 0 releases zero logits, i.e. its noise alone."""
    import json

    from flwr.app import Context, Message, MessageType, Metadata, RecordDict
    from omegaconf import OmegaConf

    from clients.privacy_mod import SIMULATION_ENV, privacy_mod
    from fedkd.client.runtime import data_key, federated_data
    from protocol import wire
    from server.privacy import build_ledger
    from simulations.leakage import regenerated_noise

    cfg = compose(
        ["strategy=dsfl", "num_clients=3", "split.canaries.count=2", "strategy.open_size=100000",
         "privacy=gaussian", "privacy.noise_multiplier=1.0", "simulation.seeded_noise=true"]
    )  # fmt: skip
    OmegaConf.save(OmegaConf.create(cfg), tmp_path / "config.yaml")
    (tmp_path / "summary.json").write_text(json.dumps({"privacy": {"noise_multiplier": 1.0}}))
    fed = federated_data(data_key(cfg))
    n, c = len(fed.public_x), fed.num_classes
    ledger = build_ledger(cfg, "public_logits", n, c)
    plan = {
        "extract": {"kind": "public_logits"},
        "privacy": {**ledger.local.to_dict(), "seeded": True},
    }
    metadata = Metadata(
        run_id=1, message_id="m", src_node_id=0, dst_node_id=1, reply_to_message_id="",
        group_id="", created_at=0.0, ttl=60.0, message_type=MessageType.TRAIN,
    )  # fmt: skip
    message = Message(
        content=RecordDict(
            {wire.CONFIG: wire.make_config(3, json.dumps(cfg), Plan.from_dict(plan))}
        ),
        metadata=metadata,
    )
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )

    def zeros(msg, ctx):
        reply = RecordDict()
        sent = PublicLogits(np.arange(n), np.zeros((n, c), np.float32), "logits")
        wire.put_payload(reply, sent)
        return Message(content=reply, reply_to=msg)

    monkeypatch.setenv(SIMULATION_ENV, "1")
    released = wire.get_payload(privacy_mod(message, context, zeros).content).values
    regenerated = regenerated_noise(tmp_path, np.array([3]))
    assert regenerated.shape == (1, 4, c)
    np.testing.assert_allclose(regenerated[0], released[-4:], rtol=1e-6, atol=1e-6)
    assert np.abs(released).max() > 0.5  # noise std 2 z clip = 2
