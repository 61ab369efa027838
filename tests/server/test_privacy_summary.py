"""What a run says about its privacy: GNMax under its own name, the budget over both
ledgers, fedka's unprotected weights, and delta bounds (server/privacy.py)."""

from __future__ import annotations

import pytest
from helpers import info_for

from fedkd.config import compose
from fedkd.errors import ConfigError
from fedkd.privacy import GnmaxRecorder
from fedkd.privacy.release import round_event
from server.privacy import check_privacy, check_record_delta, privacy_summary
from server.strategies import STRATEGIES

VOTE = ("strategy=vote", "strategy.query_size=3", "strategy.voting.threshold=0")
GNMAX = (*VOTE, "strategy.voting.noise=gnmax", "strategy.voting.sigma=4")


def test_gnmax_epsilon_is_in_the_summary_under_its_own_name():
    vote = STRATEGIES.get("vote")(info_for(*GNMAX))
    vote.voting.recorder.gnmax(4.0, 30)
    gnmax = privacy_summary(vote)["privacy"]["gnmax"]
    assert gnmax["epsilon"] == pytest.approx(GnmaxRecorder().gnmax(4.0, 30).epsilon(1e-5))
    assert gnmax["unit"].startswith("client-level") and gnmax["delta"] == 1e-5
    assert gnmax["queries"] == gnmax["answered"] == 30 and gnmax["seeded_noise"] is False
    assert privacy_summary(STRATEGIES.get("vote")(info_for(*VOTE))) == {}  # no noise, no claim


def test_the_budget_counts_gnmax_with_the_local_mod():
    """Local randomized response on the votes and GNMax on their histogram, composed."""
    overrides = (
        *GNMAX,
        "privacy=gaussian",
        "privacy.vote_epsilon=0.05",
        "privacy.budget_epsilon=5",
    )
    vote = STRATEGIES.get("vote")(info_for(*overrides))
    vote.node_of = {0: 1, 1: 2, 2: 3}
    assert vote.voting.recorder.ledger is vote.privacy.ledger is vote.ledger  # one ledger
    assert vote.privacy.shared == ("gnmax",)
    alone = GnmaxRecorder()  # one round's worst case: every query answered
    assert vote.vote_round_bound() == [alone.gnmax_release(4.0, 3)]
    assert vote.vote_round_bound()[0].event.noise_multiplier == 4.0 / alone.gnmax_sensitivity
    rounds = 0
    while vote.budget_allows(rounds + 1):
        rounds += 1
        vote.current.number = rounds
        vote.privacy.charge([0, 1, 2])
        vote.voting.recorder.gnmax(4.0, 3)
    summary = privacy_summary(vote)["privacy"]
    assert (
        summary["epsilon_total_max"]
        <= 5
        < vote.privacy.total_epsilon(0, [vote.privacy.release([0]), alone.gnmax_release(4.0, 3)])
    )
    # the total is one accountant over both streams: more than either alone
    assert summary["epsilon_total_max"] > max(summary["epsilon_max"], summary["gnmax"]["epsilon"])
    event = round_event("gaussian", 0.0, "votes", 3, 0.05, 2)
    assert vote.privacy.event == event


def test_fedka_says_its_weights_are_not_protected():
    from server.app import prepare_run

    cfg = compose(
        ["+experiment=fedka_digits_domains", "strategy.voting.noise=gnmax",
         "strategy.voting.threshold=0"]
    )  # fmt: skip
    fedka = STRATEGIES.get("fedka")(prepare_run(cfg))
    fedka.voting.recorder.gnmax(1.0, 5)
    summary = privacy_summary(fedka)["privacy"]
    assert summary["gnmax"]["epsilon"] > 0
    assert "raw weights reach the server" in summary["not_protected"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy=gaussian", "privacy.delta=0.2"], "privacy.delta=0.2 must be below 1/10"),
        (["privacy=central", "strategy=dsfl", "num_clients=4", "privacy.delta=0.25"],
         "must be below 1/4 (the clients it protects)"),
    ],
)  # fmt: skip
def test_client_level_delta_is_below_one_over_the_clients(overrides, message):
    cfg = compose(overrides)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_privacy(cfg, STRATEGIES.get(cfg["strategy"]["name"]))


def test_record_level_and_gnmax_delta_bounds():
    cfg = compose(["strategy=dsfl", "privacy=subteachers", "privacy.delta=0.01"])
    check_privacy(cfg, STRATEGIES.get("dsfl"))  # client count is not its unit
    with pytest.raises(
        ConfigError, match=r"privacy.delta=0.01 must be below 1/300 \(the records of a client"
    ):
        check_record_delta(cfg, 300)
    check_record_delta(cfg, 99)
    with pytest.raises(ConfigError, match="strategy.voting.delta=0.2 must be below 1/10"):
        check_record_delta(compose([*GNMAX, "strategy.voting.delta=0.2"]), 50)
