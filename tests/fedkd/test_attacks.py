"""Hostile clients: which clients attack, what each attack does to a payload, honest metrics.

Each attacked payload must still pass the server's validation: an attack is
knowledge that lies, not a broken message.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import RecordDict

from fedkd.client import attacks
from fedkd.config import compose
from fedkd.errors import ConfigError
from fedkd.knowledge import ClassLogits, ModelWeights, Prototypes, PublicLogits, Votes
from protocol import wire
from server.app import check_options
from server.recorder import RunRecorder

C = 4


def cfg_for(kind: str, *extra: str) -> dict:
    return compose(["num_clients=10", f"attack.kind={kind}", "attack.clients=[3]", *extra])


def attacked(kind: str, payload, *extra: str, rnd: int = 1, state=None):
    cfg = cfg_for(kind, *extra)
    return attacks.apply(cfg, 3, rnd, payload, {} if state is None else state, C)


def logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(C, C)).astype(np.float32)


def probs() -> PublicLogits:
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.3, 0.4]], np.float32)
    return PublicLogits(np.array([5, 9]), p, "probs")


def valid(payload) -> None:
    payload.validate(num_classes=C, num_public=20, feature_dim=C)


def test_attackers_are_a_seeded_fraction_plus_the_named_clients():
    cfg = compose(["num_clients=10", "attack.kind=label_flip", "attack.fraction=0.2"])
    chosen = attacks.attackers(cfg)
    assert len(chosen) == 2 and chosen == attacks.attackers(cfg)
    # seeded by the run's seed: other seeds choose other clients
    assert any(attacks.attackers({**cfg, "seed": s}) != chosen for s in range(1, 6))
    named = compose(
        [*(f"{o}" for o in ("num_clients=10", "attack.kind=scale")), "attack.clients=[7]"]
    )
    assert attacks.attackers(named) == [7]
    assert attacks.attackers(compose(["attack.fraction=0.5"])) == []  # kind none: nobody


def test_clients_that_do_not_attack_send_their_own_knowledge():
    honest = ClassLogits(logits(), np.arange(C))
    assert attacks.apply(cfg_for("scale"), 2, 1, honest, {}, C) is honest


def test_label_flip_files_each_class_under_another_label():
    pi = attacks.permutation(cfg_for("label_flip"), C)
    assert sorted(pi) == list(range(C)) and not np.any(pi == np.arange(C))  # a derangement
    honest = ClassLogits(logits(), np.array([5, 0, 2, 7]))
    flipped = attacked("label_flip", honest)
    valid(flipped)
    for c in range(C):
        np.testing.assert_array_equal(flipped.logits[pi[c]], honest.logits[c])
        assert flipped.counts[pi[c]] == honest.counts[c]
    protos = attacked("label_flip", Prototypes(logits(1), np.array([1, 2, 3, 4])))
    np.testing.assert_array_equal(protos.counts[pi], [1, 2, 3, 4])
    public = attacked("label_flip", probs())
    valid(public)
    np.testing.assert_array_equal(public.values[:, pi], probs().values)
    votes = attacked("label_flip", Votes(np.array([1, 2]), np.array([[0], [-1]])))
    np.testing.assert_array_equal(votes.votes, [[pi[0]], [-1]])


def test_scale_multiplies_logits_and_tempers_probabilities():
    honest = ClassLogits(logits(), np.ones(C, np.int64))
    np.testing.assert_allclose(attacked("scale", honest).logits, -5.0 * honest.logits)
    scaled = attacked("scale", probs())  # factor -5: the least likely class becomes the most
    valid(scaled)
    assert scaled.values[0].argmax() != 0 and scaled.values[1].argmax() == 0
    weights = ModelWeights({"w": np.ones(3, np.float32), "n": np.array(4)})
    out = attacked("scale", weights, "attack.factor=10")
    np.testing.assert_allclose(out.arrays["w"], 10.0)
    assert out.arrays["n"] == 4  # integer buffers are left alone


def test_random_logits_are_seeded_by_round_and_client_and_stay_valid():
    for payload in (ClassLogits(logits(), np.ones(C, np.int64)), probs()):
        first = attacked("random_logits", payload)
        valid(first)
        again = attacked("random_logits", payload)
        later = attacked("random_logits", payload, rnd=2)
        values = first.to_arrays()
        key = "logits" if "logits" in values else "values"
        np.testing.assert_array_equal(values[key], again.to_arrays()[key])
        assert not np.allclose(values[key], later.to_arrays()[key])
    votes = attacked("random_logits", Votes(np.arange(20), np.zeros((20, 1), np.int64)))
    valid(votes)
    assert len(np.unique(votes.votes)) > 1


def test_a_stale_client_resends_its_first_knowledge():
    state = wire.PayloadStore(RecordDict())  # kept in Flower's Context.state, as the ClientApp does
    first = ClassLogits(logits(0), np.ones(C, np.int64))
    assert attacked("stale", first, state=state) is first
    replay = attacked("stale", ClassLogits(logits(1), np.ones(C, np.int64)), rnd=5, state=state)
    np.testing.assert_array_equal(replay.logits, first.logits)
    assert isinstance(replay, ClassLogits)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack.kind=poison"], "attack.kind must be one of"),
        (["attack.kind=scale", "strategy=local"], "cannot attack strategy 'local'"),
        (["attack.kind=scale", "strategy=vote"], "cannot attack strategy 'vote'"),
        (["attack.kind=label_flip", "strategy=fedavg", "model=mlp"], "uploads model_weights"),
        (["attack.kind=scale", "attack.fraction=2"], "attack.fraction must be in"),
        (["attack.kind=scale", "attack.clients=[99]"], "attack.clients must be a list"),
        (["attack.kind=random_logits", "attack.magnitude=0"], "attack.magnitude must be > 0"),
        (["+attack.strength=3"], "unknown option(s) attack.strength"),
    ],
)
def test_attack_options_are_checked_before_the_run(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_options(compose(overrides))


def test_the_recorder_reports_the_honest_clients_accuracy(tmp_path):
    rec = RunRecorder(tmp_path, num_rounds=1, progress=False, table=False, attackers=[2])
    for cid, acc in ((0, 0.8), (1, 0.6), (2, 0.1)):
        rec.client(1, cid, {"global_test_acc": acc, "local_test_acc": acc})
    rec.end_round(1, complete_upto=1)
    summary = rec.finish({"attackers": [2]})
    row = summary["rounds"][0]
    assert row["honest_global_test_acc"] == pytest.approx(0.7)
    assert row["global_test_acc"] == pytest.approx(0.5)
    assert summary["final"]["honest_local_test_acc"]["last"] == pytest.approx(0.7)
    assert json.loads((tmp_path / "summary.json").read_text())["attackers"] == [2]
