"""Experiment presets compose and pass every check; the comparison table aggregates seeds."""

from __future__ import annotations

import pytest
from helpers import ROOT

from fedkd.config import compose
from server.app import check_options
from simulations.compare import DOMAINS, METHODS, aggregate, write_tables

PRESETS = sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml"))


def test_there_is_a_preset_per_method():
    assert {"fd", "fedmd", "dsfl", "knfu", "fedproto", "feddf"} <= set(PRESETS)
    assert {"fedka_digits_domains", "vote_digits_domains"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_composes_and_passes_checks(name):
    cfg = compose([f"+experiment={name}"])
    assert cfg["strategy"]["name"] == name.removesuffix("_digits_domains")
    check_options(cfg)


def test_every_compare_method_is_a_valid_config():
    for label, overrides in METHODS.items():
        assert check_options(compose(overrides)).name == overrides[0].split("=")[1], label
    for domain in DOMAINS:
        check_options(compose([*METHODS["fedka"], f"split.target_domain={domain}"]))


def summary(local_best, local_last, global_best, global_last, total_bytes):
    def entry(best, last):
        return {"best": best, "last": last}

    return {
        "final": {
            "local_test_acc": entry(local_best, local_last),
            "global_test_acc": entry(global_best, global_last),
        },
        "bytes_per_round": {"total": total_bytes},
    }


def test_aggregate_mean_and_std_over_seeds(tmp_path):
    rows = aggregate([summary(0.8, 0.7, 0.5, 0.4, 1024), summary(0.6, 0.5, 0.3, 0.2, 3072)])
    assert rows["KB/round"] == pytest.approx((2.0, 1.4142136))
    assert rows["local-test last"] == pytest.approx((60.0, 14.1421356))  # sample std sqrt(200)
    assert rows["global-test last"] == pytest.approx((30.0, 14.1421356))
    # the last round only: the best round of the test curve is never a column
    assert not any("best" in header for header in rows)
    md = tmp_path / "t.md"
    write_tables([{"method": "fd", "value": 0.1, "runs": 2, **rows}], 2, md, "note")
    text = md.read_text()
    assert "| fd | 0.1 | 2/2 | 60.0 ± 14.1 | 30.0 ± 14.1 | 2.0 ± 1.4 |" in text
    assert md.with_suffix(".csv").read_text().splitlines()[1].startswith("fd,0.1,2,60.0000,14.1421")


def test_failed_runs_show_as_failed(tmp_path):
    rows = aggregate([])
    md = tmp_path / "t.md"
    write_tables([{"method": "dsfl", "value": 5.0, "runs": 0, **rows}], 3, md, "note")
    assert "| dsfl | 5 | 0/3 | failed |" in md.read_text()


def domain_summary(global_model, clients_last, voting, group_effect):
    final = {"global_test_acc": {"best": clients_last, "last": clients_last}}
    if global_model is not None:
        final["global_model_target_acc"] = {"best": global_model + 0.1, "last": global_model}
    last = {} if voting is None else {"voting_acc": voting, "group_effect": group_effect}
    return {
        "final": final,
        "rounds": [{"round": 1}, {"round": 2, **last}],
        "bytes_per_round": {"total": 2048},
    }


def test_domain_table_uses_the_global_model_where_there_is_one(tmp_path):
    fedka = aggregate(
        [domain_summary(0.6, 0.5, 0.55, 0.1), domain_summary(0.8, 0.7, 0.75, 0.1)], "domain"
    )
    assert fedka["target last"] == pytest.approx((70.0, 14.1421356))
    assert fedka["clients' target last"] == pytest.approx((60.0, 14.1421356))
    assert fedka["group effect last"] == pytest.approx((10.0, 0.0))
    vote = aggregate([domain_summary(None, 0.4, None, None)], "domain")
    assert vote["target last"] == pytest.approx((40.0, 0.0))  # the mean client's
    md = tmp_path / "d.md"
    rows = [
        {"method": "fedka", "value": "rotated", "runs": 2, **fedka},
        {"method": "vote-hetero", "value": "rotated", "runs": 1, **vote},
    ]
    write_tables(rows, 2, md, "note", "domain", "target_domain")
    text = md.read_text()
    assert "| method | target_domain | runs | target last |" in text
    assert (
        "| vote-hetero | rotated | 1/2 | 40.0 ± 0.0 | 40.0 ± 0.0 | n/a | n/a | 2.0 ± 0.0 |" in text
    )


def test_attack_columns_use_the_honest_clients():
    from simulations.compare import PRESETS, ROBUST

    preset = PRESETS["attacks"]
    assert preset["axis"] == "attack.fraction" and preset["values"] == [0.0, 0.1, 0.2, 0.3]
    assert preset["methods"] == ROBUST and len(preset["seeds"]) == 3
    attacked = summary(0.9, 0.9, 0.9, 0.9, 0)
    attacked["final"]["honest_global_test_acc"] = {"best": 0.6, "last": 0.5}
    attacked.update(attackers=[1, 4], rejected_replies={"shape": 2})
    clean = summary(0.9, 0.9, 0.7, 0.7, 0)  # no attackers: every client is honest
    rows = aggregate([attacked, clean], "attack")
    assert rows["honest global-test last"] == pytest.approx((60.0, 14.1421356))
    assert rows["attackers"] == pytest.approx((1.0, 1.4142136))
    assert rows["rejected/run"] == pytest.approx((1.0, 1.4142136))
    for label in preset["methods"]:
        check_options(compose([*METHODS[label], "attack.kind=random_logits"]))


def test_distill_columns_report_health_and_the_server_model():
    from simulations.compare import PRESETS

    preset = PRESETS["distill"]
    assert preset["values"] == [0.1, 0.5, 5.0] and preset["seeds"] == [0, 1, 2]
    dsfl = summary(0.9, 0.9, 0.8, 0.8, 2048)
    dsfl["final"]["server_model_acc"] = {"best": 0.9, "last": 0.7}
    dsfl["final"]["after_distill_global_acc"] = {"best": 0.9, "last": 0.75}
    dsfl["rounds"] = [{"round": 1, "target_acc": 0.2}, {"round": 2, "target_acc": 0.6}]
    local = summary(0.9, 0.95, 0.3, 0.3, 0)
    rows = aggregate([dsfl], "distill")
    assert rows["server model"] == pytest.approx((70.0, 0.0))  # the last round, not the best
    assert rows["after distil"] == pytest.approx((75.0, 0.0))
    assert rows["target acc"] == pytest.approx((60.0, 0.0))  # the last round's
    assert (
        aggregate([local], "distill")["server model"][0]
        != aggregate([local], "distill")["server model"][0]
    )  # NaN: no server model, shown as n/a
    for label in preset["methods"]:
        check_options(compose(METHODS[label]))
