"""The one privacy ledger (fedkd/privacy/accounting.py): releases against accounting units,
composed per unit by dp-accounting, replayed, and sent to an append-only sink."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkd.errors import ConfigError
from fedkd.privacy import EVERY, GnmaxRecorder, Ledger, Release
from fedkd.privacy.accounting import accountant, decode_event, encode_event

G = dp_accounting.GaussianDpEvent
DELTA = 1e-5


def direct(*composed: tuple[dp_accounting.DpEvent, int]) -> float:
    """dp-accounting composed by hand, without the ledger."""
    acc = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    for event, count in composed:
        acc.compose(event, count)
    return float(acc.get_epsilon(DELTA))


def test_each_unit_composes_its_own_releases_as_dp_accounting_does():
    rr = dp_accounting.SelfComposedDpEvent(dp_accounting.RandomizedResponseDpEvent(0.5, 10), 3)
    ledger = Ledger()
    ledger.record(Release("gaussian", G(2.0), [0, 1]))
    ledger.record(Release("gaussian", G(2.0), [0]))
    ledger.record(Release("laplace", rr, [1], count=4))
    assert ledger.units() == [0, 1]
    assert ledger.count(0) == 2 and ledger.count(1) == 5 and ledger.count(1, ["laplace"]) == 4
    assert ledger.epsilon(0, DELTA) == direct((G(2.0), 2))
    assert ledger.epsilon(1, DELTA) == direct((G(2.0), 1), (rr, 4))
    assert ledger.epsilon(1, DELTA, mechanisms=["laplace"]) == direct((rr, 4))
    assert ledger.epsilon(2, DELTA) == 0.0  # released nothing
    # the §5.3 worked example: z = 5, 50 releases -> 7.1 at delta 1e-5
    assert Ledger().record(Release("g", G(5.0), [3], 50)).epsilon(3, DELTA) == pytest.approx(
        7.1, rel=0.02
    )


def test_an_id_listed_twice_pays_twice():
    ledger = Ledger().record(Release("gaussian", G(1.0), [4, 4]))
    assert ledger.count(4) == 2
    assert ledger.epsilon(4, DELTA) == direct((G(1.0), 2))


def test_shared_releases_count_toward_every_unit():
    ledger = Ledger()
    ledger.record(Release("gaussian", G(3.0), [0], count=5))
    ledger.record(Release("gnmax", G(10.0), EVERY, count=7))
    ledger.record(Release("gnmax", G(4.0), EVERY, count=2))
    assert ledger.units() == [0]  # a shared release is nobody's own
    assert ledger.shared_count("gnmax") == 9
    shared = ((G(10.0), 7), (G(4.0), 2))
    assert ledger.epsilon(EVERY, DELTA) == direct(*shared)
    assert ledger.epsilon(9, DELTA) == direct(*shared)  # a client that only voted
    assert ledger.epsilon(0, DELTA) == direct((G(3.0), 5), *shared)
    assert ledger.epsilon(0, DELTA, mechanisms=["gaussian"]) == direct((G(3.0), 5))
    assert ledger.epsilon(EVERY, DELTA) < ledger.epsilon(0, DELTA)


def test_one_more_release_is_what_recording_it_would_give():
    ledger = Ledger().record(Release("gaussian", G(2.0), [0, 1], count=3))
    ledger.record(Release("gnmax", G(6.0), EVERY, count=4))
    more = [Release("gaussian", G(2.0), [0]), Release("gnmax", G(6.0), EVERY, count=4)]
    asked = ledger.epsilon(0, DELTA, extra=more)
    assert ledger.epsilon(1, DELTA, extra=more) < asked  # client 1 is not in the first
    for release in more:
        ledger.record(release)
    assert ledger.epsilon(0, DELTA) == asked
    assert ledger.count(0) == 4


def test_a_replay_gives_the_same_epsilon_and_the_sink_sees_every_release_first():
    seen: list[dict] = []
    ledger = Ledger()
    ledger.sink = seen.append
    records = [
        Release("gaussian", G(1.5), [0, 2]),
        Release("gnmax", dp_accounting.NonPrivateDpEvent(), EVERY, count=0),  # not a release
        Release("gnmax", G(8.0), EVERY, count=3),
        Release("gaussian", G(1.5), [2]),
    ]
    for release in records:
        ledger.record(release)
    assert [Release.from_dict(json.loads(json.dumps(d))) for d in seen] == [
        records[0],
        records[2],
        records[3],
    ]
    from_state = Ledger().load_state_dict(json.loads(json.dumps(ledger.state_dict())))
    from_log = Ledger().load_state_dict({"orders": None, "releases": seen})
    for unit in (0, 1, 2, EVERY):
        assert from_state.epsilon(unit, DELTA) == ledger.epsilon(unit, DELTA)
        assert from_log.epsilon(unit, DELTA) == ledger.epsilon(unit, DELTA)
    ledger.load_state_dict(ledger.state_dict())
    assert len(seen) == 3  # a replay is not a new release


def test_events_round_trip_through_json():
    rr = dp_accounting.RandomizedResponseDpEvent(0.25, 4)
    events = [
        G(0.7),
        dp_accounting.NonPrivateDpEvent(),
        dp_accounting.LaplaceDpEvent(2.0),
        dp_accounting.SelfComposedDpEvent(rr, 30),
        dp_accounting.ComposedDpEvent([G(1.0), G(1.0)]),
    ]
    for event in events:
        assert decode_event(json.loads(json.dumps(encode_event(event)))) == event
    assert encode_event(G(0.7)) == {"type": "GaussianDpEvent", "noise_multiplier": 0.7}


def test_bad_releases_are_refused_with_what_to_change():
    with pytest.raises(ConfigError, match="client ids or 'every'"):
        Release("gnmax", G(1.0), "all")
    with pytest.raises(ConfigError, match="int client ids"):
        Release("gaussian", G(1.0), [True])
    with pytest.raises(ConfigError, match="count must be an int >= 0"):
        Release("gaussian", G(1.0), [0], count=-1)
    with pytest.raises(ConfigError, match="dp_accounting.DpEvent"):
        Ledger().record(Release("gaussian", 1.0, [0]))
    with pytest.raises(ConfigError, match="not a dp_accounting event"):
        decode_event({"type": "accountant"})
    with pytest.raises(ConfigError, match="delta must be in"):
        Ledger().epsilon(0, 1.0)


def test_the_gnmax_recorder_charges_every_unit_of_its_ledger():
    ledger = Ledger().record(Release("gaussian", G(2.0), [0]))
    recorder = GnmaxRecorder(ledger, votes_per_teacher=2)
    recorder.gnmax(4.0, 10).threshold_check(3.0, 5)
    answer = G(4.0 / math.sqrt(4.0))  # sigma / sqrt(2k)
    assert recorder.epsilon(DELTA) == direct((answer, 10), (G(3.0), 5))
    assert ledger.epsilon(0, DELTA) == direct((G(2.0), 1), (answer, 10), (G(3.0), 5))
    assert recorder.state_dict() == {"num_queries": 10, "num_answered": 10}
    assert accountant().get_epsilon(DELTA) == 0  # a fresh accountant: nothing spent


RELEASES = st.lists(
    st.tuples(
        st.floats(0.3, 20.0),
        st.integers(1, 20),
        st.one_of(st.just(EVERY), st.lists(st.integers(0, 3), min_size=1, max_size=4)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(RELEASES)
def test_epsilon_never_decreases_as_releases_are_recorded(releases):
    ledger = Ledger()
    before = {u: 0.0 for u in (0, 1, 2, 3, EVERY)}
    for z, count, units in releases:
        ledger.record(Release("gaussian" if units != EVERY else "gnmax", G(z), units, count))
        for unit, eps in before.items():
            now = ledger.epsilon(unit, DELTA)
            assert now >= eps
            if units == EVERY or unit in units:
                assert now > eps  # a unit that paid has spent more
            before[unit] = now
