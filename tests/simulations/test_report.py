"""Reports, sweep tables, HParams records and console levels.

Fast tests work on hand-made run directories and a RunRecorder fed by hand;
the slow one runs a real two-seed Hydra multirun (KnFu, 5 clients, 3 rounds)
and checks the sweep-root table, the report figures and the HParams events.
"""

from __future__ import annotations

import csv
import json
import logging
import struct
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, run_fedkd_sim

from server.recorder import RunRecorder, console_options, flatten_config, hparams_of
from simulations import report as rep
from simulations.sweep import aggregate, differing_keys, label, load_run, write_sweep_summary

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk; fails unless ``path`` is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    return struct.unpack(">II", data[16:24])


def base_config(**changes) -> dict:
    cfg = {
        "num_clients": 2,
        "num_rounds": 2,
        "seed": 0,
        "logging": {"level": "normal", "progress": False},
        "model": {"feature_dim": 32, "family": [{"name": "mlp", "hidden": [64]}]},
        "strategy": {"name": "fd", "temperature": 1.0},
    }
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return cfg


def fake_summary(local_best: float, global_last: float, status: str = "finished") -> dict:
    return {
        "status": status,
        "strategy": "fd",
        "num_rounds": 2,
        "wall_time_s": 1.0,
        "final": {
            "local_test_acc": {"last": local_best - 0.1, "last_round": 2},
            "global_test_acc": {"last": global_last, "last_round": 2},
        },
        "bytes_per_round": {"bytes_up": 1024.0, "bytes_down": 1024.0, "total": 2048.0},
        "rounds": [
            {
                "round": r,
                "local_test_acc": local_best * r / 2,
                "local_test_acc_std": 0.05,
                "global_test_acc": global_last * r / 2,
                "global_test_acc_std": 0.02,
                "bytes_up": 1024.0,
                "bytes_down": 1024.0,
            }
            for r in (1, 2)
        ],
        "clients": {},
    }


def make_run(path: Path, cfg: dict, summary: dict | None, lines: list[dict] = ()) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    if summary is not None:
        (path / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


# ---------------------------------------------------------------- labels and sweep tables
def test_differing_keys_leave_out_what_a_group_choice_implies():
    fd0 = flatten_config(base_config())
    fd1 = flatten_config(base_config(seed=1))
    knfu = base_config(seed=1, **{"strategy.name": "knfu"})
    knfu["strategy"]["beta"] = 10.0
    knfu_b0 = base_config(seed=1, **{"strategy.name": "knfu"})
    knfu_b0["strategy"]["beta"] = 0.0
    keys = differing_keys([fd0, fd1, flatten_config(knfu)])
    assert keys == ["seed", "strategy.name"]  # strategy.beta comes with strategy=knfu
    keys = differing_keys([fd0, flatten_config(knfu), flatten_config(knfu_b0)])
    assert keys == ["seed", "strategy.name", "strategy.beta"]  # varies within knfu
    assert label(flatten_config(knfu), keys) == "seed=1 strategy.name=knfu strategy.beta=10.0"
    assert label(fd0, keys) == "seed=0 strategy.name=fd"
    # logging switches never label a run
    assert differing_keys([fd0, flatten_config(base_config(**{"logging.level": "quiet"}))]) == []


def test_sweep_table_is_mean_and_sample_std_over_seeds(tmp_path):
    root = tmp_path / "sweep"
    make_run(root / "0", base_config(seed=0), fake_summary(0.50, 0.30))
    make_run(root / "1", base_config(seed=1), fake_summary(0.70, 0.40))
    make_run(root / "2", base_config(seed=2), fake_summary(0.99, 0.99, status="failed"))
    knfu = base_config(seed=0, **{"strategy.name": "knfu"})
    knfu["strategy"]["beta"] = 10.0
    make_run(root / "3", knfu, fake_summary(0.80, 0.60))
    (root / "multirun.yaml").write_text("{}\n")

    keys, rows = aggregate([load_run(root / str(i)) for i in range(4)])
    assert keys == ["strategy.name"]
    fd, kn = rows
    assert (fd["runs"], fd["total"], fd["seeds"]) == (
        2,
        3,
        [0, 1],
    )  # the failed run is not averaged
    mean, std = fd["local_test_acc.last"]
    assert mean == pytest.approx(50.0) and std == pytest.approx(14.142136, abs=1e-5)
    assert fd["global_test_acc.last"] == (pytest.approx(35.0), pytest.approx(7.0710678))
    assert fd["kb_per_round"] == (pytest.approx(2.0), 0.0)
    assert kn["runs"] == 1 and kn["local_test_acc.last"] == (pytest.approx(70.0), 0.0)
    assert not any(".best" in key for key in fd)  # no round is selected on the test set

    md, csv_path = write_sweep_summary(root)
    text = md.read_text()
    assert "| strategy.name | runs | seeds |" in text
    assert "| fd | 2/3 | 0 1 | 50.0 ± 14.1 | 35.0 ± 7.1 | 2.0 ± 0.0 |" in text
    assert "| knfu | 1/1 | 0 | 70.0 | 60.0 | 2.0 |" in text
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["strategy.name"] == "fd" and rows[0]["runs"] == "2" and rows[0]["total"] == "3"
    assert float(rows[0]["local_test_acc.last_mean"]) == pytest.approx(50.0)
    assert float(rows[0]["local_test_acc.last_std"]) == pytest.approx(14.1421, abs=1e-4)


def test_sweep_callback_is_registered_in_the_config():
    cfg = yaml.safe_load((ROOT / "configs" / "config.yaml").read_text())
    targets = [c["_target_"] for c in cfg["hydra"]["callbacks"].values()]
    assert "simulations.sweep.SweepSummary" in targets
    from hydra.experimental.callback import Callback

    from simulations.sweep import SweepSummary

    assert issubclass(SweepSummary, Callback)


# ---------------------------------------------------------------- report on hand-made runs
def fake_lines(epsilon: bool, fusion: bool) -> list[dict]:
    lines = []
    for rnd in (1, 2):
        for cid in (0, 1, 2):
            line = {
                "round": rnd,
                "client": cid,
                "local_test_acc": 0.2 * rnd + 0.1 * cid,
                "global_test_acc": 0.1 * rnd + 0.05 * cid,
                "bytes_up": 100.0,
                "bytes_down": 200.0,
            }
            if epsilon:
                line["epsilon"] = 0.5 * rnd + 0.01 * cid
            if fusion:
                line["fusion_weights"] = {str(j): (0.8 if j == cid else 0.1) for j in range(3)}
            lines.append(line)
    return lines


def test_report_on_hand_made_runs_draws_optional_figures(tmp_path):
    knfu = base_config(seed=1, **{"strategy.name": "knfu"})
    a = make_run(tmp_path / "a", base_config(), fake_summary(0.5, 0.3), fake_lines(True, False))
    b = make_run(tmp_path / "b", knfu, fake_summary(0.6, 0.4), fake_lines(False, True))
    mean = [[0.75, 0.25], [0.5, 0.5]]
    confusion = {"rounds": [{"round": 2, "clients": {"0": [[3, 1], [2, 2]]}, "mean_client": mean}]}
    (a / "confusion.json").write_text(json.dumps(confusion))
    out = tmp_path / "report"
    rep.main([str(a), str(b), "--out", str(out)])
    expected = {
        "accuracy": rep.figure_pixels("accuracy"),
        "clients": rep.figure_pixels("clients", 2),
        "accuracy_vs_bytes": rep.figure_pixels("accuracy_vs_bytes"),
        "epsilon": rep.figure_pixels("epsilon"),
        "fusion_weights": rep.figure_pixels("fusion_weights", 1),  # only run b has weights
        "confusion": rep.figure_pixels("confusion", 1),  # only run a has confusion.json
    }
    for name, size in expected.items():
        assert png_size(out / f"{name}.png") == size, name
    text = (out / "summary.md").read_text()
    assert "| seed=0 strategy.name=fd | fd |" in text
    assert "| seed=1 strategy.name=knfu |" in text
    assert "![epsilon](epsilon.png)" in text


def test_methods_are_mean_and_std_over_seeds(tmp_path):
    runs = []
    for seed, (local, glob) in enumerate([(0.5, 0.3), (0.7, 0.5)]):
        cfg = base_config(seed=seed)
        runs.append(make_run(tmp_path / f"fd{seed}", cfg, fake_summary(local, glob)))
    knfu = base_config(seed=0, **{"strategy.name": "knfu"})
    runs.append(make_run(tmp_path / "knfu", knfu, fake_summary(0.9, 0.8)))
    loaded = rep.load_runs(runs)
    groups = rep.methods(loaded)
    assert [(m.label, len(m.runs)) for m in groups] == [("strategy=fd", 2), ("strategy=knfu", 1)]
    rounds, mean, std = rep._over_seeds(groups[0], "local_test_acc")
    assert rounds == [1, 2]
    assert mean == pytest.approx([0.3, 0.6])  # round r: local_best * r / 2 for 0.5 and 0.7
    assert std == pytest.approx([0.1 / 2**0.5, 0.2 / 2**0.5])  # sample std of two seeds
    assert rep._over_seeds(groups[1], "local_test_acc")[2] == [0.0] * len(rounds)


@pytest.mark.parametrize(("fmt", "magic"), [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_report_writes_vector_formats(tmp_path, fmt, magic):
    a = make_run(tmp_path / "a", base_config(), fake_summary(0.5, 0.3), fake_lines(False, True))
    out = tmp_path / "out"
    rep.main([str(a), "--out", str(out), "--format", fmt])
    for name in ("accuracy", "clients", "accuracy_vs_bytes", "fusion_weights"):
        assert (out / f"{name}.{fmt}").read_bytes().startswith(magic), name
    assert f"![accuracy](accuracy.{fmt})" in (out / "summary.md").read_text()


def test_report_dpi_sets_the_png_size_and_bad_options_fail(tmp_path, capsys):
    a = make_run(tmp_path / "a", base_config(), fake_summary(0.5, 0.3), fake_lines(False, False))
    rep.main([str(a), "--out", str(tmp_path / "o"), "--dpi", "300"])
    assert png_size(tmp_path / "o" / "accuracy.png") == rep.figure_pixels("accuracy", dpi=300)
    assert rep.figure_pixels("accuracy", dpi=300) == (3300, 1350)
    with pytest.raises(SystemExit):
        rep.main([str(a), "--format", "jpg"])
    with pytest.raises(SystemExit):
        rep.main([str(a), "--out", str(tmp_path / "p"), "--dpi", "5"])
    assert "--dpi 5: use 20 to 1200" in capsys.readouterr().err


def test_report_skips_absent_optional_figures_and_reports_no_runs(tmp_path, capsys):
    a = make_run(tmp_path / "a", base_config(), fake_summary(0.5, 0.3), fake_lines(False, False))
    written = rep.report([a], tmp_path / "out")
    assert {p.name for p in written} == {
        "accuracy.png",
        "clients.png",
        "accuracy_vs_bytes.png",
        "summary.md",
    }
    assert "| a | fd |" in (tmp_path / "out" / "summary.md").read_text()  # one run: its folder
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit):
        rep.main([str(empty)])
    assert "no finished run" in capsys.readouterr().err


# ---------------------------------------------------------------- recorder: hparams, table, levels
def read_hparams(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    acc = EventAccumulator(str(folder))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    scalars = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}
    return start.session_start_info.hparams, scalars


def test_recorder_writes_hparams_table_and_round_lines(tmp_path, caplog):
    cfg = base_config(**{"strategy.name": "knfu"})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    recorder = RunRecorder(tmp_path, num_rounds=2, progress=False, table=False)
    with caplog.at_level(logging.INFO, logger="fedkd.rounds"):
        for rnd in (1, 2):
            for cid in (0, 1):
                recorder.client(
                    rnd,
                    cid,
                    {"local_test_acc": 0.5 + 0.1 * cid, "global_test_acc": 0.3, "num_train": 10},
                )
            recorder.end_round(rnd, complete_upto=rnd)
        summary = recorder.finish({"strategy": "knfu"})
    round_lines = [r.getMessage() for r in caplog.records if r.name == "fedkd.rounds"]
    assert len(round_lines) == 2 and round_lines[1].startswith(
        "round 2/2  local_test_acc 0.5500 ± 0.0500"
    )
    assert "eta 0:00:00" in round_lines[1]

    # the session lives in the server run: its metrics are the server's scalars, and no
    # separate run of one-point charts shows up in the Scalars tab
    hparams, scalars = read_hparams(tmp_path / "tensorboard" / "server")
    assert not (tmp_path / "tensorboard" / "hparams").exists()
    assert hparams["strategy.name"].string_value == "knfu"
    assert hparams["num_clients"].number_value == 2
    assert hparams["model.family"].string_value == '[{"name":"mlp","hidden":[64]}]'
    assert not any(key.startswith("logging.") for key in hparams)
    assert scalars["accuracy/local_test_mean"] == pytest.approx(0.55)
    assert scalars["accuracy/local_test_std"] == pytest.approx(0.05)
    assert scalars["accuracy/global_test_mean"] == pytest.approx(0.3)
    assert summary["final"]["local_test_acc"] == {"last": pytest.approx(0.55), "last_round": 2}

    table = (tmp_path / "table.txt").read_text()
    assert "per-client accuracy" in table and "0.600" in table and "bytes/round" in table


def test_table_marks_dropped_clients(tmp_path):
    recorder = RunRecorder(tmp_path, num_rounds=3, progress=False, table=False, config={})
    for rnd in (1, 2, 3):
        for cid in (0, 1):
            if cid == 1 and rnd > 1:
                continue  # client 1 stops answering after round 1
            recorder.client(rnd, cid, {"local_test_acc": 0.5, "global_test_acc": 0.4})
        recorder.end_round(rnd, complete_upto=rnd)
    recorder.finish({"dropped_clients": {"1": {"no_reply": [2, 3]}, "2": {"no_reply": [1]}}})
    rows = {
        line.split("│")[1].strip(): line
        for line in (tmp_path / "table.txt").read_text().splitlines()
        if line.count("│") > 4
    }
    assert "no_reply in rounds 2, 3; last from round 1" in rows["1"]
    assert "no_reply" not in rows["0"]
    assert "no_reply in round 1; never answered" in rows["2"]  # a client with no values at all


def test_hparams_values_are_numbers_and_strings():
    values = hparams_of({"a": {"b": True, "c": None, "d": [1, 2]}, "e": 3, "logging": {"x": 1}})
    assert values == {"a.b": "true", "a.c": "null", "a.d": "[1,2]", "e": 3}


def test_console_levels():
    from fedkd.errors import ConfigError

    keys = {"progress": True, "table": True, "verbose": False}
    assert console_options({**keys, "level": "normal"}) == keys
    assert console_options({**keys, "level": "quiet"}) == dict.fromkeys(keys, False)
    assert console_options({**keys, "level": "verbose"})["verbose"] is True
    assert console_options({**keys, "table": False, "level": "verbose"})["table"] is False
    with pytest.raises(ConfigError, match="logging.level"):
        console_options({**keys, "level": "loud"})


# ---------------------------------------------------------------- a real sweep
@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """``-m seed=0,1``: two real KnFu runs under one sweep root (~50 s)."""
    root = tmp_path_factory.mktemp("sweep")
    result = run_fedkd_sim(
        [
            "-m",
            "strategy=knfu",
            "seed=0,1",
            "num_clients=5",
            "num_rounds=3",
            "logging.progress=false",
            "logging.table=false",
            f"hydra.sweep.dir={root}",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.mark.slow
def test_real_sweep_root_table_report_and_hparams(sweep, tmp_path):
    text = (sweep / "summary.md").read_text()
    assert "| all runs | 2/2 | 0 1 |" in text  # only the seed differs: one setting
    assert (sweep / "summary.csv").is_file()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["seed=0", "seed=1"]
    for job in ("seed=0", "seed=1"):
        assert (sweep / job / "table.txt").is_file()
        assert "round 3/3" in (sweep / job / "run.log").read_text()
        hparams, scalars = read_hparams(sweep / job / "tensorboard" / "server")
        assert hparams["strategy.name"].string_value == "knfu"
        assert hparams["seed"].number_value == int(job.removeprefix("seed="))
        assert 0 < scalars["accuracy/local_test_mean"] <= 1

    out = tmp_path / "report"
    written = rep.report([sweep / "seed=0", sweep / "seed=1"], out)
    assert out / "summary.md" in written
    sizes = {
        "accuracy.png": rep.figure_pixels("accuracy"),
        "clients.png": rep.figure_pixels("clients", 2),
        "accuracy_vs_bytes.png": rep.figure_pixels("accuracy_vs_bytes"),
        "fusion_weights.png": rep.figure_pixels("fusion_weights", 2),  # KnFu runs have weights
        "confusion.png": rep.figure_pixels("confusion", 1),  # one method: mean over its seeds
    }
    for name, size in sizes.items():
        assert png_size(out / name) == size, name
    import matplotlib.image

    assert matplotlib.image.imread(out / "accuracy.png").shape[:2] == sizes["accuracy.png"][::-1]
    assert not (out / "epsilon.png").exists()  # no run records epsilon yet
    md = (out / "summary.md").read_text()
    assert "| seed=0 | knfu | finished | 3 |" in md
    assert "| seed=1 | knfu | finished | 3 |" in md
    # the sweep root stands for its jobs
    assert png_size(rep.report([sweep], tmp_path / "whole")[0]) == sizes["accuracy.png"]
