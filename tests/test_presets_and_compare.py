"""Experiment presets compose and pass every check; the comparison table aggregates seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedkd.config import compose
from server.app import check_options
from simulations.compare import METHODS, aggregate, write_tables

PRESETS = sorted(
    p.stem for p in (Path(__file__).parent.parent / "configs" / "experiment").glob("*.yaml")
)


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
    assert rows["local_test_acc_best"] == pytest.approx(
        (70.0, 14.1421356)
    )  # mean 70, sample std sqrt(200)
    assert rows["global_test_acc_last"] == pytest.approx((30.0, 14.1421356))
    assert rows["kb_per_round"] == pytest.approx((2.0, 1.4142136))
    md = tmp_path / "t.md"
    write_tables([{"method": "fd", "alpha": 0.1, "runs": 2, **rows}], 2, md, "note")
    text = md.read_text()
    assert (
        "| fd | 0.1 | 2/2 | 70.0 ± 14.1 | 60.0 ± 14.1 | 40.0 ± 14.1 | 30.0 ± 14.1 | 2.0 ± 1.4 |"
        in text
    )
    assert md.with_suffix(".csv").read_text().splitlines()[1].startswith("fd,0.1,2,70.0000,14.1421")


def test_failed_runs_show_as_failed(tmp_path):
    rows = aggregate([])
    md = tmp_path / "t.md"
    write_tables([{"method": "dsfl", "alpha": 5.0, "runs": 0, **rows}], 3, md, "note")
    assert "| dsfl | 5 | 0/3 | failed |" in md.read_text()
