"""The comparison and sweep tables, written from runs the test makes, byte for byte.

``simulations/tables.py`` builds the cells, Markdown and CSV of both ``fedkd-compare``'s
tables and a sweep's ``summary.md``; the expected files below are what each writes for
these inputs (a failed setting, a setting with one finished run, string and float axes).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from simulations import tables
from simulations.compare import aggregate, write_tables
from simulations.sweep import write_sweep_summary

EXPECTED = {
    "c1.md": (
        "| method | alpha | runs | local-test last | global-test last | KB/round |\n"
        "|---|---|---|---|---|---|\n"
        "| fd | 0.1 | 2/2 | 60.0 ± 14.1 | 30.0 ± 14.1 | 2.0 ± 1.4 |\n"
        "| dsfl | 5 | 0/2 | failed | failed | failed |\n"
        "| knfu | 0.5 | 1/2 | 91.2 ± 0.0 | 81.0 ± 0.0 | 229.7 ± 0.0 |\n"
        "\n"
        "Setting: test note.\n"
    ),
    "c1.csv": (
        "method,alpha,runs,local-test_last_mean,local-test_last_std,global-test_last_mean,global-test_last_std,KB_per_round_mean,KB_per_round_std\n"
        "fd,0.1,2,60.0000,14.1421,30.0000,14.1421,2.0000,1.4142\n"
        "dsfl,5.0,0,nan,nan,nan,nan,nan,nan\n"
        "knfu,0.5,1,91.2300,0.0000,81.0000,0.0000,229.7000,0.0000\n"
    ),
    "c2.md": (
        "| method | kind | runs | honest global-test last | honest local-test last | rejected/run | excluded attackers | excluded honest |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| fd-mean | none | 2/1 | 35.0 | 65.0 | 1.5 | 0.5 | 0.0 |\n"
        "\n"
        "note two\n"
    ),
    "c2.csv": (
        "method,kind,runs,honest_global-test_last_mean,honest_global-test_last_std,honest_local-test_last_mean,honest_local-test_last_std,rejected_per_run_mean,rejected_per_run_std,excluded_attackers_mean,excluded_attackers_std,excluded_honest_mean,excluded_honest_std\n"
        "fd-mean,none,2,35.0000,7.0711,65.0000,7.0711,1.5000,2.1213,0.5000,0.7071,0.0000,0.0000\n"
    ),
    "sweep/summary.md": (
        "# Sweep summary: <ROOT>/sweep\n"
        "\n"
        "5 runs, grouped by `strategy.name`.\n"
        "\n"
        "| strategy.name | runs | seeds | local-test last | global-test last | KB/round |\n"
        "|---|---|---|---|---|---|\n"
        "| dsfl | 0/1 |  | failed | failed | failed |\n"
        "| fd | 2/2 | 0 1 | 70.0 ± 14.1 | 40.0 ± 14.1 | 14.2 ± 0.0 |\n"
        "| knfu | 1/2 | 0 | 90.0 | 85.0 | 229.7 |\n"
        "\n"
        "Accuracies in % (mean over clients, final round; no round is selected on the test set), KB/round = bytes up + down per round over all clients; mean ± sample std over the finished runs of each setting (runs = finished/jobs).\n"
    ),
    "sweep/summary.csv": (
        "strategy.name,runs,total,seeds,local_test_acc.last_mean,local_test_acc.last_std,global_test_acc.last_mean,global_test_acc.last_std,kb_per_round_mean,kb_per_round_std\n"
        "dsfl,0,1,,nan,nan,nan,nan,nan,nan\n"
        "fd,2,2,0 1,70.0000,14.1421,40.0000,14.1421,14.2000,0.0000\n"
        "knfu,1,2,0,90.0000,0.0000,85.0000,0.0000,229.7000,0.0000\n"
    ),
    "one/summary.md": (
        "# Sweep summary: <ROOT>/one\n"
        "\n"
        "1 runs, grouped by nothing (one setting).\n"
        "\n"
        "| setting | runs | seeds | local-test last | global-test last | KB/round |\n"
        "|---|---|---|---|---|---|\n"
        "| all runs | 1/1 | 0 | 50.0 | 25.0 | 2.0 |\n"
        "\n"
        "Accuracies in % (mean over clients, final round; no round is selected on the test set), KB/round = bytes up + down per round over all clients; mean ± sample std over the finished runs of each setting (runs = finished/jobs).\n"
    ),
    "one/summary.csv": (
        "runs,total,seeds,local_test_acc.last_mean,local_test_acc.last_std,global_test_acc.last_mean,global_test_acc.last_std,kb_per_round_mean,kb_per_round_std\n"
        "1,1,0,50.0000,0.0000,25.0000,0.0000,2.0000,0.0000\n"
    ),
}


def summary(local, global_, kb, status="finished", **extra):
    return {
        "status": status,
        "final": {"local_test_acc": {"last": local}, "global_test_acc": {"last": global_}},
        "bytes_per_round": {"total": kb * 1024},
        **extra,
    }


def write_runs(out: Path) -> None:
    rows = [
        {"method": "fd", "value": 0.1, "runs": 2, **aggregate([summary(0.7, 0.4, 1.0), summary(0.5, 0.2, 3.0)])},
        {"method": "dsfl", "value": 5.0, "runs": 0, **aggregate([])},
        {"method": "knfu", "value": 0.5, "runs": 1, **aggregate([summary(0.9123, 0.81, 229.7)])},
    ]  # fmt: skip
    write_tables(rows, 2, out / "c1.md", "Setting: test note.")
    hostile = [
        summary(0.7, 0.4, 1.0, attackers=[0], rejected_replies={"value_range": 3}),
        summary(0.6, 0.3, 1.0, attackers=[1], excluded_clients={"1": 3}),
    ]
    rows = [{"method": "fd-mean", "value": "none", "runs": 2, **aggregate(hostile, "hostile")}]
    write_tables(rows, 1, out / "c2.md", "note two", "hostile", "kind")

    jobs = [
        ("fd", 0, summary(0.8, 0.5, 14.2)),
        ("fd", 1, summary(0.6, 0.3, 14.2)),
        ("knfu", 0, summary(0.9, 0.85, 229.7)),
        ("knfu", 1, None),  # did not finish
        ("dsfl", 0, summary(0.1, 0.1, 1.0, status="failed")),
    ]
    for i, (strategy, seed, result) in enumerate(jobs):
        job = out / "sweep" / f"strategy={strategy},seed={seed}"
        job.mkdir(parents=True)
        config = {
            "strategy": {"name": strategy, **({"beta": 10} if strategy == "knfu" else {})},
            "seed": seed,
            "num_rounds": 5,
            "logging": {"level": "quiet" if i else "normal"},
        }
        (job / "config.yaml").write_text(yaml.safe_dump(config))
        if result is not None:
            (job / "summary.json").write_text(json.dumps(result))
    write_sweep_summary(out / "sweep")
    one = out / "one"
    one.mkdir()
    (one / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "strategy": {"name": "fd"}}))
    (one / "summary.json").write_text(json.dumps(summary(0.5, 0.25, 2.0)))
    write_sweep_summary(one)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tables_are_written_byte_for_byte(tmp_path, name):
    write_runs(tmp_path)
    text = (tmp_path / name).read_text(encoding="utf-8").replace(str(tmp_path), "<ROOT>")
    assert text == EXPECTED[name]


def test_cells():
    assert tables.cell((61.25, 0.04), single=False) == "61.2 ± 0.0"
    assert tables.cell((61.25, 0.04), single=True) == "61.2"
    assert tables.cell((math.nan, math.nan), single=False) == "n/a"
    assert tables.cell((math.nan, math.nan), single=True, missing="failed") == "failed"
    assert all(math.isnan(v) for v in tables.mean_std([]))  # no value
    assert tables.mean_std([3.0]) == (3.0, 0.0)
    assert tables.mean_std([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2)))
