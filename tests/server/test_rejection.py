"""Every kind of bad reply is rejected with its reason, counted, logged, and the round goes on.

Replies are real Flower ``Message`` objects built as a SuperNode's reply would
arrive (only their metadata is written by hand); payloads are hand-made. One
good reply from another client rides along in every round, so each test also
checks that a bad reply never stops fusion.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from helpers import NODES, good_fd, make, metadata, reply

from fedkd.config import compose
from fedkd.errors import REJECT_REASONS
from fedkd.knowledge import ClassLogits, Prototypes, PublicLogits, Votes
from protocol import wire
from server import rounds


def error_reply(cid: int, code: int, reason: str) -> Message:
    return Message(error=Error(code=code, reason=reason), metadata=metadata(cid))


def fd_bad(**arrays) -> dict:
    base = {"logits": np.zeros((2, 2), np.float32), "counts": np.array([1, 1])}
    return {**base, **arrays}


# reason -> a bad reply from client 1 to an ``fd`` server (2 classes)
FD_CASES = {
    "wrong_kind": lambda: reply(
        1, PublicLogits(np.array([0]), np.zeros((1, 2), np.float32), "logits")
    ),
    "shape": lambda: reply(
        1, arrays=fd_bad(logits=np.zeros(4, np.float32)), meta={"kind": "class_logits"}
    ),
    "dtype": lambda: reply(
        1, arrays=fd_bad(logits=np.zeros((2, 2), np.float16)), meta={"kind": "class_logits"}
    ),
    "class_count": lambda: reply(1, ClassLogits(np.zeros((3, 3), np.float32), np.array([1, 1, 1]))),
    "non_finite": lambda: reply(1, ClassLogits(np.full((2, 2), np.nan, np.float32), np.ones(2))),
    "value_range": lambda: reply(1, ClassLogits(np.zeros((2, 2), np.float32), np.array([1, -4]))),
    "malformed": lambda: reply(1, arrays=fd_bad()),  # knowledge arrays without knowledge_meta
    "bad_metrics": lambda: reply(1, good_fd(), metrics=False),
}


@pytest.mark.parametrize("reason", sorted(FD_CASES))
def test_a_bad_reply_is_rejected_with_its_reason_and_the_round_goes_on(reason, tmp_path, caplog):
    fd = make("fd", tmp_path)
    replies = [reply(0, good_fd(1.0)), FD_CASES[reason](), reply(2, good_fd(3.0))]
    with caplog.at_level(logging.WARNING, logger="fedkd"):
        _, diagnostics = fd.aggregate_train(1, replies)
    assert dict(fd.dropped) == {reason: 1}
    assert diagnostics["replies"] == 2 and diagnostics["rejected"] == 1
    (line,) = [r.getMessage() for r in caplog.records if "rejected reply" in r.getMessage()]
    assert line.startswith(f"round 1: rejected reply of client 1 ({reason}): ")
    assert "\n" not in line
    np.testing.assert_allclose(fd.global_teacher.logits, 2.0)  # mean of clients 0 and 2 only
    fd.recorder.end_round(1, complete_upto=1)
    row = fd.recorder.finish()["rounds"][0]
    assert row["participants"] == [0, 2] and row["sampled"] == [0, 1, 2]
    assert row["rejected_replies"] == {reason: 1}
    assert row["rejected_clients"] == {"1": reason}


def test_every_reason_is_documented():
    covered = set(FD_CASES) | {"index_range", "too_large", "client_error", "client_unavailable"}
    assert covered | {"no_reply", "invalid_payload"} == set(REJECT_REASONS)


def test_float64_beyond_float32_range_is_non_finite():
    fd = make("fd")
    huge = ClassLogits(np.full((2, 2), 1e300, np.float64), np.array([1, 1]))
    fd.aggregate_train(1, [reply(0, good_fd()), reply(1, huge), reply(2, good_fd())])
    assert dict(fd.dropped) == {"non_finite": 1}


def test_public_set_indices_must_be_the_requested_ones():
    dsfl = make("dsfl", None, "strategy.open_size=2")
    asked = dsfl.indices_for(1)
    other = np.setdiff1d(np.arange(4), asked)[:2]

    def probs(indices):
        return PublicLogits(indices, np.full((2, 2), 0.5, np.float32), "probs")

    out_of_range = reply(
        2, arrays={"indices": np.array([0, 9]), "values": np.full((2, 2), 0.5, np.float32)},
        meta={"kind": "public_logits", "space": "probs"},
    )  # fmt: skip
    dsfl.aggregate_train(1, [reply(0, probs(asked)), reply(1, probs(other)), out_of_range])
    assert dict(dsfl.dropped) == {"index_range": 2}
    assert dsfl.targets is None  # one valid reply < min_train_clients=2: nothing fused


def test_a_reply_over_the_size_limit_is_rejected_before_it_is_decoded():
    fd = make("fd", None, "server.max_payload_bytes=1000")
    small = good_fd()  # 300 bytes with the .npy headers
    big = reply(1, arrays=fd_bad(logits=np.zeros((2, 400), np.float32)))  # no meta: not decoded
    fd.aggregate_train(1, [reply(0, small), big, reply(2, small)])
    assert dict(fd.dropped) == {"too_large": 1}


def test_an_array_flower_cannot_deserialise_is_malformed():
    fd = make("fd")
    content = RecordDict({wire.METRICS: MetricRecord({"num_train": 5})})
    broken = Array(dtype="float32", shape=(2, 2), stype="numpy.ndarray", data=b"not npy")
    content[wire.KNOWLEDGE] = ArrayRecord({"logits": broken, "counts": Array(np.ones(2, int))})
    content[wire.KNOWLEDGE_META] = ConfigRecord({"kind": "class_logits"})
    bad = Message(content=content, metadata=metadata(1))
    fd.aggregate_train(1, [reply(0, good_fd()), bad, reply(2, good_fd())])
    assert dict(fd.dropped) == {"malformed": 1}


def test_error_replies_and_missing_replies_are_counted_by_reason(tmp_path):
    fd = make("fd", tmp_path)
    crash = error_reply(1, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "\nException ... boom\n")
    _, diagnostics = fd.aggregate_train(1, [reply(0, good_fd()), crash])  # client 2: silent
    assert dict(fd.dropped) == {"client_error": 1, "no_reply": 1}
    assert diagnostics["replies"] == 1
    gone = error_reply(1, ErrorCode.NODE_UNAVAILABLE, "node unavailable")
    fd.aggregate_train(2, [reply(0, good_fd()), gone, reply(2, good_fd())])
    assert fd.dropped["client_unavailable"] == 1
    assert not fd.strikes  # failures are not strikes: only bad payloads are


def test_a_round_where_every_client_raised_stops_the_run_but_unavailable_nodes_do_not():
    fd = make("fd")
    with pytest.raises(RuntimeError, match="every client failed"):
        fd.aggregate_train(1, [error_reply(c, 2, "bug") for c in NODES])
    fd.aggregate_train(2, [error_reply(c, ErrorCode.NODE_UNAVAILABLE, "gone") for c in NODES])
    assert fd.dropped["client_unavailable"] == 3


def test_a_client_that_keeps_sending_bad_payloads_is_excluded_after_max_strikes(tmp_path):
    fd = make("fd", tmp_path, "server.max_strikes=2")
    nan = ClassLogits(np.full((2, 2), np.nan, np.float32), np.ones(2, np.int64))
    for rnd in (1, 2):
        fd.aggregate_train(rnd, [reply(0, good_fd()), reply(1, nan), reply(2, good_fd())])
        fd.recorder.end_round(rnd, complete_upto=rnd)
    assert fd.excluded == {1: 2} and fd.strikes[1] == 2
    assert rounds.sample(fd, 3) == [0, 2]  # never asked again
    rows = fd.recorder.finish()["rounds"]
    assert "excluded" not in rows[0] and rows[1]["excluded"] == [1]


def test_every_client_excluded_stops_the_run():
    fd = make("fd", None, "server.max_strikes=1")
    nan = ClassLogits(np.full((2, 2), np.nan, np.float32), np.ones(2, np.int64))
    fd.aggregate_train(1, [reply(c, nan) for c in NODES])
    with pytest.raises(RuntimeError, match="every client has been excluded"):
        rounds.sample(fd, 2)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("server.max_strikes=0", "server.max_strikes must be null or an integer >= 1"),
        ("server.max_payload_bytes=-5", "server.max_payload_bytes must be null"),
        ("server.round_timeout=0", "server.round_timeout must be a number of seconds"),
    ],
)
def test_server_limits_are_checked_before_the_run(override, message):
    from fedkd.errors import ConfigError
    from server.app import check_options

    with pytest.raises(ConfigError, match=message):
        check_options(compose([override]))


# ---------------------------------------------------------------- injected broken payloads
def corrupted_reply(cid: int, strategy, payload, mode: str) -> Message:
    """What a client with ``faults.bad_payload.mode=<mode>`` sends instead of ``payload``."""
    from fedkd.client import faults

    bad = {**strategy.cfg["faults"]["bad_payload"], "clients": [cid], "mode": mode}
    cfg = {**strategy.cfg, "faults": {**strategy.cfg["faults"], "bad_payload": bad}}
    arrays, meta = faults.corrupt(
        cfg, 1, payload.kind, payload.to_arrays(), {"kind": payload.kind, **payload.meta()}
    )
    content = RecordDict({wire.METRICS: MetricRecord({"num_train": 5})})
    wire.put_knowledge(content, arrays, meta)
    return Message(content=content, metadata=metadata(cid))


@pytest.mark.parametrize("name", ["fd", "dsfl", "fedproto", "vote"])
@pytest.mark.parametrize("mode", ["nan", "inf", "dtype", "shape", "classes", "indices", "kind"])
def test_every_injected_malformation_is_rejected_for_its_reason(name, mode):
    from fedkd.client.faults import BAD_MODES

    size = {"dsfl": ["strategy.open_size=2"], "vote": ["strategy.query_size=2"]}
    strategy = make(name, None, *size.get(name, []))
    if name in ("fd", "fedproto"):
        if mode == "indices":
            pytest.skip("per-class payloads carry no indices")
        width = 2 if name == "fd" else strategy.info.feature_dim
        kind = ClassLogits if name == "fd" else Prototypes
        good = kind(np.ones((2, width), np.float32), np.array([3, 2]))
    elif name == "dsfl":
        good = PublicLogits(strategy.indices_for(1), np.full((2, 2), 0.5, np.float32), "probs")
    else:
        if mode in ("nan", "inf", "dtype"):
            pytest.skip("votes hold no floats")
        good = Votes(strategy.indices_for(1), np.zeros((2, 1), np.int64))
    replies = [reply(0, good), corrupted_reply(1, strategy, good, mode), reply(2, good)]
    strategy.aggregate_train(1, replies)
    expected = "value_range" if (name, mode) == ("vote", "classes") else BAD_MODES[mode]
    assert dict(strategy.dropped) == {expected: 1}


def test_an_oversized_reply_is_too_large():
    fd = make("fd", None, "server.max_payload_bytes=5000")
    fd.aggregate_train(1, [reply(0, good_fd()), corrupted_reply(1, fd, good_fd(), "oversize")])
    assert dict(fd.dropped) == {"too_large": 1, "no_reply": 1}


def test_fault_assignments_are_seeded_disjoint_and_checked():
    from fedkd.client import faults
    from fedkd.errors import ConfigError
    from server.app import check_options

    cfg = compose(["num_clients=10", "faults.crash.fraction=0.3", "faults.hang.clients=[4]"])
    again = faults.assignments(cfg)
    assert again == faults.assignments(compose(["num_clients=10", "faults.crash.fraction=0.3",
                                               "faults.hang.clients=[4]"]))  # fmt: skip
    assert len(again["crash"]) == 3 and 4 not in again["crash"] and again["hang"] == [4]
    other = faults.assignments({**cfg, "faults": {**cfg["faults"], "seed": 5}})
    assert other["crash"] != again["crash"]
    for override, message in [
        ("faults.crash.fraction=1.5", "faults.crash.fraction must be in"),
        ("faults.crash.clients=[10]", "faults.crash.clients must be a list of client ids"),
        ("faults.hang.seconds=3", "must exceed server.round_timeout"),
        ("faults.slow.seconds=900", "must be below server.round_timeout"),
        ("faults.bad_payload.mode=weird", "faults.bad_payload.mode must be one of"),
        ("+faults.flood={}", "unknown faults kind"),
        ("faults.crash.rounds=[0]", "faults.crash.rounds must be null or a list"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check_options(compose([override]))
    with pytest.raises(ConfigError, match="needs public-set knowledge"):
        check_options(
            compose(["faults.bad_payload.clients=[0]", "faults.bad_payload.mode=indices"])
        )
