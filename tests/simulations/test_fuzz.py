"""The fast profile of the hostile-reply fuzzer (``simulations/fuzz.py``): every strategy.

A few hundred hostile rounds per strategy (fewer where fusion trains a server
model), fed to the real ``aggregate_train``; hypothesis shrinks and reports the
first broken invariant. ``fedkd-fuzz`` runs the long profile (10,000 per strategy).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedkd.errors import PayloadError
from simulations import fuzz

EXAMPLES = {"feddf": 25, "fedka": 25}  # fusion distils / fine-tunes a model: slower
# DS-FL's server student distils on every fused target (100 steps from round 5): 2 steps
# still run that path; the hostile replies and the invariants do not depend on the budget
EXTRA = {"dsfl": ["strategy.distill.steps=2"]}


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = fuzz.build(name, EXTRA.get(name))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(fuzz.SETUPS))
def test_no_hostile_reply_breaks_an_invariant(name, built):
    outcomes: Counter = Counter()
    examples = EXAMPLES.get(name, 200)
    fuzz.property_for(built(name), lambda c, o: outcomes.update([(c, o)]), examples, False)()
    assert sum(outcomes.values()) >= examples
    assert not any(o == "escape" for _, o in outcomes)
    # the generator reaches both outcomes: honest-looking replies are accepted, others rejected
    assert any(o == "accepted" for _, o in outcomes) and any(o != "accepted" for _, o in outcomes)


def test_the_invariants_catch_an_escape_and_a_rejected_honest_client(built, monkeypatch):
    fd = built("fd")
    rng = np.random.default_rng(0)
    replies = [fuzz.honest_message(fd, 1, c, rng) for c in (0, fuzz.HOSTILE, 2)]
    assert fuzz.check_round(fd, 1, replies) == "accepted"

    def explode(*args):
        raise MemoryError("from the property's own strategy")

    monkeypatch.setattr(fd.replies, "accept", explode)
    with pytest.raises(fuzz.Escape, match="MemoryError escaped aggregate_train"):
        fuzz.check_round(fd, 1, replies)
    monkeypatch.undo()

    def reject_all(server_round, cid, payload):
        raise PayloadError("no", "shape")

    monkeypatch.setattr(fd, "validate_upload", reject_all)
    with pytest.raises(fuzz.Escape, match="honest client 0 rejected"):
        fuzz.check_round(fd, 1, replies)


def test_the_table_is_built_from_the_counts():
    stats = {"fd": {"honest": Counter({"accepted": 3}), "metrics": Counter({"bad_metrics": 2})}}
    text = fuzz.table(stats, {"fd": 5}, 5)
    assert "| honest | 3 | 3 | - | 0 |" in text
    assert "| metrics | 2 | 0 | bad_metrics 2 | 0 |" in text
    assert "fd 5" in text
