"""The strategy's collaborators on their own: reply checking with strikes and exclusion
(server/replies.py), guarded fusion and rollback (server/fusion.py), the privacy ledger's
plan entries, state and central-or-reducer helper (server/privacy.py) and the strategy's
use of them (server/strategy_privacy.py), the merged bookkeeping keys and random streams
of the strategy classes (server/traits.py), the seeded streams and sampling
(server/streams.py), the round in progress (server/rounds.py) and the run's status
(server/status.py)."""

from __future__ import annotations

import json
import logging

import helpers
import numpy as np
import pytest
from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from helpers import NODES, info_for, metadata

from fedkd.bounds import Bounds
from fedkd.encoding import DecodeLimits
from fedkd.errors import PayloadError
from fedkd.knowledge import ClassLogits, PublicLogits
from fedkd.privacy.accounting import GNMAX
from server import rounds
from server.fusion import FusionError, FusionGuard, require_finite
from server.privacy import build_ledger, central_or
from server.replies import ReplyChecker, validate_upload
from server.rounds import RoundState
from server.strategies import STRATEGIES, FedkdStrategy
from server.strategies.public import PublicSetStrategy
from server.streams import Streams


def reply(cid: int, payload=None, metrics: dict | None = None) -> Message:
    """A TRAIN reply of client ``cid`` carrying only ``num_train`` unless told otherwise."""
    return helpers.reply(cid, payload, metrics=metrics or {"num_train": 5})


def logits(value: float) -> ClassLogits:
    return ClassLogits(np.full((2, 2), value, np.float32), np.array([3, 2]))


def checker() -> ReplyChecker:
    check = ReplyChecker(Bounds.from_config(None), DecodeLimits(("float32",), 2, None), 2)
    check.client_of = {node: cid for cid, node in NODES.items()}
    return check


def validate(server_round: int, cid: int, payload) -> None:
    validate_upload(payload, "class_logits", info_for(num_classes=2), Bounds.from_config(None))


# ---------------------------------------------------------------- replies
def test_a_bad_payload_is_rejected_struck_and_excluded_at_max_strikes(caplog):
    check = checker()
    for rnd in (1, 2):
        check.begin_round()
        replies = [reply(0, logits(1.0)), reply(1, logits(np.nan)), reply(2, logits(2.0))]
        with caplog.at_level(logging.WARNING, logger="fedkd"):
            accepted = check.accept(rnd, replies, validate, None)
        assert [r.cid for r in accepted] == [0, 2]
        assert check.rejected_now == {1: "non_finite"} and check.nonfinite_now == {1}
        newly = check.settle(rnd, max_strikes=2)
        assert newly == ([] if rnd == 1 else [1])
    assert check.strikes == {1: 2} and check.excluded == {1: 2}
    assert check.dropped == {"non_finite": 2} and check.dropped_clients == {
        1: {"non_finite": [1, 2]}
    }
    lines = [r.getMessage() for r in caplog.records]
    assert "round 2: client 1 excluded after 2 rejected replies (server.max_strikes)" in lines
    assert any(
        line.startswith("round 1: rejected reply of client 1 (non_finite)") for line in lines
    )


def test_forgiven_clients_and_client_errors_get_no_strike():
    check = checker()
    check.begin_round()
    broken = Message(
        error=Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="Message: boom'>"),
        metadata=metadata(2),
    )
    accepted = check.accept(1, [reply(0, logits(np.inf)), reply(1, None), broken], validate, None)
    assert accepted == []
    assert check.rejected_now == {0: "non_finite", 1: "wrong_kind", 2: "client_error"}
    assert check.settle(1, max_strikes=1, forgiven={0}) == [1]
    assert check.strikes == {1: 1} and check.excluded == {1: 1}  # a client error is no strike


def test_collect_rejects_silent_clients_and_raises_when_every_client_failed():
    check = checker()
    kept = check.collect(
        3, [reply(0, logits(1.0))], [0, 1], 5.0, validate, None, lambda c: {"x": c}, None
    )
    assert [(r.cid, r.metrics["x"]) for r in kept] == [(0, 0)]
    assert check.rejected_now == {1: "no_reply"}
    assert check.participation([0, 1], [0], []) == {
        "sampled": [0, 1],
        "participants": [0],
        "rejected_replies": {"no_reply": 1},
        "rejected_clients": {"1": "no_reply"},
    }
    failed = Message(
        error=Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="boom"),
        metadata=metadata(0),
    )
    with pytest.raises(RuntimeError, match="round 4: every client failed; first error: boom"):
        check.collect(4, [failed], [0], 5.0, validate, None, dict, None)


def test_a_reply_above_max_payload_bytes_is_too_large():
    check = checker()
    check.begin_round()
    assert check.accept(1, [reply(0, logits(1.0))], validate, max_payload_bytes=4) == []
    assert check.rejected_now == {0: "too_large"}


def test_the_reply_counters_survive_a_state_round_trip():
    check = checker()
    check.begin_round()
    check.accept(1, [reply(1, logits(np.nan))], validate, None)
    check.settle(1, max_strikes=1)
    again = checker()
    again.load_state_dict(check.state_dict())
    assert (again.dropped, again.strikes, again.excluded, again.dropped_clients) == (
        check.dropped,
        check.strikes,
        check.excluded,
        check.dropped_clients,
    )


def test_validate_upload_names_the_kind_and_the_float32_range():
    with pytest.raises(PayloadError, match="expected a 'class_logits' payload, got public_logits"):
        validate(1, 0, PublicLogits(np.array([0]), np.zeros((1, 2), np.float32), "logits"))
    huge = ClassLogits(np.full((2, 2), 1e300, np.float64), np.array([3, 2]))
    with pytest.raises(PayloadError, match="outside the float32 range"):
        validate(1, 0, huge)


# ---------------------------------------------------------------- fusion and rollback
def test_require_finite_checks_arrays_payloads_and_trees():
    assert require_finite("x", np.arange(3)) is not None
    with pytest.raises(FusionError, match=r"fused knowledge\.b contains NaN or Inf"):
        require_finite("knowledge", {"a": [np.zeros(2)], "b": np.array([np.inf])})
    with pytest.raises(FusionError, match=r"fused teacher\.logits contains NaN or Inf"):
        require_finite("teacher", logits(np.nan))


def fd_uploads(value: float) -> dict[int, ClassLogits]:
    return {c: logits(value + c) for c in range(3)}


def test_a_failed_fusion_keeps_the_previous_knowledge_objects():
    fd = STRATEGIES.get("fd")(info_for(num_classes=2))
    fd.guard.fuse(1, fd_uploads(1.0), dict.fromkeys(range(3), 1))
    kept = fd.global_teacher
    assert fd.guard.fuse(2, fd_uploads(np.nan), dict.fromkeys(range(3), 1)) == {}
    assert fd.global_teacher is kept and fd.guard.failures == 1
    assert fd.guard.before is not None  # the round before the failure stays the fallback


def test_a_poisoned_round_rolls_back_to_before_the_last_fusion(caplog):
    fd = STRATEGIES.get("fd")(info_for(num_classes=2))
    fd.guard.fuse(1, fd_uploads(1.0), dict.fromkeys(range(3), 1))
    good = fd.global_teacher.logits.copy()
    fd.guard.fuse(2, fd_uploads(5.0), dict.fromkeys(range(3), 1))
    assert not np.array_equal(fd.global_teacher.logits, good)
    assert fd.guard.poisoned(3, victims={0}, answered=3) == set()  # a minority: their fault
    with caplog.at_level(logging.WARNING, logger="fedkd"):
        assert fd.guard.poisoned(3, victims={0, 2}, answered=3) == {0, 2}
    np.testing.assert_array_equal(fd.global_teacher.logits, good)
    assert "knowledge rolled back to before it, no strikes" in caplog.text
    # while most replies stay non-finite, the broken models' clients stay forgiven
    assert fd.guard.poisoned(4, victims={0, 2}, answered=3) == {0, 2}
    assert fd.guard.poisoned(5, victims=set(), answered=3) == set()
    assert fd.guard.poisoned(6, victims={0, 2}, answered=3) == set()  # no fusion to blame


def test_the_rollback_keeps_bookkeeping():
    guard = FusionGuard(STRATEGIES.get("vote")(info_for("strategy=vote")), Bounds.from_config(None))
    assert {"base", "privacy", "gnmax"} <= set(guard.strategy.not_knowledge)
    assert "gnmax" not in guard.knowledge() and "targets" in guard.knowledge()


# ---------------------------------------------------------------- declared state and streams
def test_subclasses_declare_their_bookkeeping_and_streams():
    assert FedkdStrategy.not_knowledge == ("base", "privacy")
    assert FedkdStrategy.STREAMS == {"sample": 1}
    assert PublicSetStrategy.STREAMS == {"sample": 1, "public": 2}
    assert STRATEGIES.get("vote").STREAMS == {"sample": 1, "public": 2, "vote_noise": 3}
    assert STRATEGIES.get("fedka").STREAMS == {"sample": 1, "vote_noise": 3}
    assert "generator" in STRATEGIES.get("feddf").not_knowledge
    assert "generator" not in STRATEGIES.get("fedavg").not_knowledge
    with pytest.raises(TypeError, match="two random streams share a number"):
        type("Clash", (PublicSetStrategy,), {"streams": {"mine": 2}})


# ---------------------------------------------------------------- privacy
def test_plan_entries_and_charging_follow_the_mechanism():
    local = build_ledger(info_for("privacy=gaussian").cfg, "class_logits", 2, 2)
    assert set(local.plan_entries(False)) == {"privacy"}
    local.charge_sampled([0, 1])
    assert local.rounds == {0: 1, 1: 1}
    central = build_ledger(info_for("privacy=central").cfg, "class_logits", 2, 2)
    assert central.plan_entries(False) == {}
    central.charge_sampled([0, 1])  # central noise is charged when fused
    assert not central.rounds
    again = build_ledger(info_for("privacy=gaussian").cfg, "class_logits", 2, 2)
    again.load_state_dict(local.state_dict())  # the policy: the releases are the ledger's
    assert not again.rounds
    again.ledger.load_state_dict(local.ledger.state_dict())
    assert again.rounds == local.rounds and again.epsilon(0) == local.epsilon(0)


def test_central_or_is_the_reducer_without_central_noise():
    values = np.ones((3, 2, 2))
    assert central_or(None, 0, 1, values, lambda: "plain") == "plain"
    ledger = build_ledger(
        info_for("privacy=central", "simulation.seeded_noise=true").cfg, "class_logits", 2, 2
    )
    first = central_or(ledger, 0, 1, values, lambda: "plain")
    np.testing.assert_array_equal(first, central_or(ledger, 0, 1, values, lambda: "plain"))
    mean, present = central_or(ledger, 0, 1, values, None, counts=np.ones((3, 2), np.int64))
    assert mean.shape == (2, 2) and present.shape == (2,)


def test_the_budget_stops_or_warns(caplog):
    cfg = info_for("privacy=gaussian", "privacy.budget_epsilon=0.001").cfg
    ledger = build_ledger(cfg, "class_logits", 2, 2)
    assert ledger.allows(1, [0]) == "privacy budget epsilon=0.001 reached before round 1"
    ledger.on_budget = "warn"
    with caplog.at_level(logging.WARNING, logger="fedkd"):
        assert ledger.allows(1, [0]) is None and ledger.allows(2, [0]) is None
    assert caplog.text.count("privacy budget epsilon=0.001 exceeded; going on") == 1


def test_the_strategy_builds_its_ledger_and_noises_only_under_central():
    values = np.ones((3, 2, 2), np.float32)
    plain = STRATEGIES.get("fd")(info_for())
    assert plain.dp.ledger is None and plain.privacy is None and not plain.dp.central
    assert plain.dp.central_or(1, values, lambda: "plain") == "plain"
    local = STRATEGIES.get("fd")(info_for("privacy=gaussian"))
    assert local.privacy is local.dp.ledger and local.privacy.shared == ()
    assert local.dp.releases is local.ledger and local.privacy.ledger is local.ledger
    assert not local.dp.central and local.dp.central_or(1, values, lambda: "plain") == "plain"
    central = STRATEGIES.get("fd")(info_for("privacy=central", "simulation.seeded_noise=true"))
    assert central.dp.central
    noised = central.dp.central_or(1, values, lambda: "plain")
    assert noised.shape == (2, 2) and not np.allclose(noised, 1.0)  # clipped, noised
    np.testing.assert_array_equal(
        noised, central_or(central.privacy, central.seed, 1, values, None)
    )
    gnmax = ("strategy.voting.noise=gnmax", "strategy.voting.threshold=0")
    vote = STRATEGIES.get("vote")(info_for("strategy=vote", *gnmax, "privacy=gaussian"))
    assert vote.privacy.shared == (GNMAX,)  # GNMax counts toward the budget
    assert vote.voting.recorder.ledger is vote.ledger  # recorded on the strategy's one ledger


# ---------------------------------------------------------------- random streams
def test_each_round_and_purpose_draws_from_its_own_seeded_stream():
    numbers = {"sample": 1, "public": 2}
    streams = Streams(7, numbers, seeded_noise=False)
    expected = np.random.default_rng([7, 3, 2]).random(4)
    np.testing.assert_array_equal(streams.rng_for(3, "public").random(4), expected)
    assert not np.array_equal(streams.rng_for(3, "sample").random(4), expected)
    assert not np.array_equal(streams.rng_for(4, "public").random(4), expected)
    assert not np.array_equal(streams.noise_rng_for(3, "public").random(4), expected)  # OS
    seeded = Streams(7, numbers, seeded_noise=True)
    np.testing.assert_array_equal(seeded.noise_rng_for(3, "public").random(4), expected)


def test_sampling_draws_the_rounds_sample_stream_from_the_eligible_clients():
    streams = Streams(7, {"sample": 1}, seeded_noise=False)
    assert streams.sample([4, 1, 2], 3, fraction=0.5, minimum=3) == [1, 2, 4]  # all of them
    half = streams.sample(list(range(6)), 3, fraction=0.5, minimum=1)
    drawn = np.random.default_rng([7, 3, 1]).choice(list(range(6)), size=3, replace=False)
    assert half == sorted(drawn.tolist()) and half == streams.sample(list(range(6)), 3, 0.5, 1)
    fd = helpers.make("fd", None, "server.fraction_train=0.5", "server.min_train_clients=1")
    fd.excluded = {1: 1}
    assert rounds.sample(fd, 3) == fd.random.sample([0, 2], 3, 0.5, 1)
    assert len(rounds.sample(fd, 3)) == 1 and 1 not in rounds.sample(fd, 3)


# ---------------------------------------------------------------- the round in progress
def test_a_round_reads_its_replies_against_the_round_state(tmp_path):
    fd = helpers.make("fd", tmp_path)
    fd.current = RoundState()  # not this round's: close_train reads the state it is given
    state = RoundState(1, {0: 123, 1: 45, 2: 6})
    rounds.close_train(fd, 1, [reply(0, logits(1.0)), reply(2, logits(2.0))], state)
    assert dict(fd.dropped) == {"no_reply": 1} and fd.dropped_clients == {1: {"no_reply": [1]}}
    assert not state.starved  # two valid replies: min_train_clients=2
    fd.recorder.end_round(1, complete_upto=1)
    starved = RoundState(2, {0: 7, 2: 8})
    rounds.close_train(fd, 2, [reply(0, logits(1.0))], starved)
    assert starved.starved and not fd.current.starved
    fd.recorder.end_round(2, complete_upto=2)
    fd.recorder.finish()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [row for row in map(json.loads, lines) if "bytes_down" in row]
    assert [(r["round"], r["client"], r["bytes_down"]) for r in rows] == [
        (1, 0, 123),
        (1, 2, 6),
        (2, 0, 7),
    ]


# ---------------------------------------------------------------- the run's status
def test_the_status_stops_at_the_budget_and_keeps_its_counts_in_a_checkpoint():
    overrides = ("privacy=gaussian", "privacy.budget_epsilon=0.001")
    fd = STRATEGIES.get("fd")(info_for(*overrides))
    status = fd.status
    assert status.budget_allows(None, 1, [0, 1, 2], []) and status.stop_reason is None
    assert not status.budget_allows(fd.privacy, 1, [0, 1, 2], [])
    assert status.stop_reason == "privacy budget epsilon=0.001 reached before round 1"
    status.node_loss.append({"round": 1, "node_id": None, "clients": [2], "action": "fail"})
    status.starved_run, fd.guard.failures = 2, 1
    fd.replies.drop(1, 2, "no_reply", "nothing within 5s")
    base = status.state_dict()
    assert base["fusion_failures"] == 1 and base["starved_run"] == 2 and "health" in base
    again = STRATEGIES.get("fd")(info_for(*overrides))
    again.load_state_dict(fd.state_dict())
    assert again.status.stop_reason == status.stop_reason
    assert again.status.node_loss == status.node_loss and again.status.starved_run == 2
    assert again.fusion_failures == 1 and again.dropped_clients == {2: {"no_reply": [1]}}
