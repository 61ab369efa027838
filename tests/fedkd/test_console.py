"""The console and fast config errors.

Log lines go through rich's console above the progress bar at every level;
the ETA ignores the first round's start-up; a bad config stops with one line
naming what to change, before torch or Flower is imported, and the failed
run's run.log holds the same line.
"""

from __future__ import annotations

import io
import logging
import os
import re

import pytest
from helpers import run_fedkd_sim
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from fedkd.config import compose
from fedkd.console import ConsoleHandler, EtaColumn, RoundClock, clock, route_through_console
from fedkd.errors import ConfigError, FedkdError
from fedkd.schema import check_early, check_top_level, explain_compose_error
from simulations.run import console_logging

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_is_unknown_until_two_rounds_and_skips_the_start_up():
    t = FakeTime()
    rc = RoundClock(10, now=t)
    assert rc.remaining() is None and clock(rc.remaining()) == "-:--:--"
    t.now = 60.0  # round 1 ends after a minute of Ray start-up
    rc.record(1)
    assert rc.started and rc.remaining() is None
    t.now = 62.0
    rc.record(2)
    t.now = 64.0
    rc.record(3)
    assert rc.seconds_per_round() == pytest.approx(2.0)
    assert rc.remaining() == pytest.approx(14.0)  # 7 rounds left at 2 s, not at 21 s
    t.now = 65.0
    assert rc.remaining() == pytest.approx(13.0)  # counts down between rounds
    assert clock(rc.remaining()) == "0:00:13"


def test_resumed_run_measures_from_its_first_round():
    t = FakeTime()
    rc = RoundClock(10, now=t)
    t.now = 30.0
    rc.record(6)  # the first round after a resume from round 5
    t.now = 33.0
    rc.record(7)
    assert rc.remaining() == pytest.approx(9.0)


def _render(console: Console) -> list[str]:
    text = ANSI.sub("", console.file.getvalue())
    return [part for line in text.split("\n") for part in line.split("\r") if part.strip()]


def test_log_lines_print_above_the_progress_bar():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    logger = logging.getLogger("fedkd.test_console")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler(io.StringIO()))
    route_through_console(logger, console)
    assert [type(h) for h in logger.handlers] == [ConsoleHandler]
    rc = RoundClock(4)
    progress = Progress(
        TextColumn("round {task.completed}/{task.total}"),
        BarColumn(),
        EtaColumn(rc),
        console=console,
        auto_refresh=False,
    )
    progress.start()
    task = progress.add_task("", total=4)
    progress.refresh()
    logger.info("checkpoint of round 2 written")
    progress.update(task, completed=2)
    progress.refresh()
    progress.stop()
    lines = _render(console)
    assert "checkpoint of round 2 written" in [line.strip() for line in lines]
    assert not any("round 0/4" in line and "checkpoint" in line for line in lines)
    assert any(line.startswith("round 2/4") and "eta" in line for line in lines)


@pytest.mark.parametrize("level", ["quiet", "normal", "verbose"])
def test_console_handler_replaces_the_stream_handler_at_every_level(level):
    root = logging.getLogger()
    saved = list(root.handlers)
    stream = logging.StreamHandler(io.StringIO())
    try:
        root.handlers = [stream]
        console_logging({"level": level, "verbose": level == "verbose"})
        (handler,) = root.handlers
        assert isinstance(handler, ConsoleHandler)
        assert handler.level == (logging.WARNING if level == "quiet" else logging.NOTSET)
        record = logging.LogRecord("fedkd.rounds", logging.INFO, "", 0, "round 1/2", None, None)
        assert bool(handler.filter(record)) == (level == "verbose")
    finally:
        root.handlers = saved


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["num_client=5"],
            "unknown config key 'num_client' (num_client=5); did you mean num_clients?",
        ),
        (["strategy.reducr=mean"], "did you mean strategy.reducer?"),
        (["strategy=fdd"], "strategy=fdd: no such strategy; did you mean fd?"),
        (["partition=diriclet"], "did you mean dirichlet?"),
        (["+num_clients=3"], "num_clients exists: write num_clients=3 without '+'"),
    ],
)
def test_composition_errors_say_what_to_write(overrides, expected):
    with pytest.raises(ConfigError) as err:
        compose(overrides)
    assert expected in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["+num_client=5"], "unknown top-level key 'num_client'"),
        (["num_clients=0"], "num_clients must be an integer >= 1 (got 0)"),
        (["partition.alpha=-1"], "e.g. partition.alpha=0.5"),
        (
            ["strategy.reducer=medain"],
            "strategy.reducer=medain: unknown reducer; did you mean median?",
        ),
        (
            ["dataset=hf", "dataset.path=./no/such/folder"],
            "'./no/such/folder' from the hub or disk: no such directory; set dataset.path",
        ),
    ],
)
def test_early_checks_refuse_bad_values(overrides, expected):
    with pytest.raises(FedkdError, match=re.escape(expected)):
        check_early(compose(overrides), overrides)


def test_default_config_and_experiments_pass_the_early_checks():
    check_early(compose([]))
    for experiment in ("fd", "fedka_digits_domains"):
        overrides = [f"+experiment={experiment}"]
        check_early(compose(overrides), overrides)


def test_an_experiment_may_declare_a_top_level_key(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "config.yaml").write_text("num_clients: 2\n")
    (tmp_path / "experiment" / "extra.yaml").write_text("# @package _global_\nmy_knob: 1\n")
    cfg = {"num_clients": 2, "my_knob": 1}
    check_top_level(cfg, ["+experiment=extra"], root=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown top-level key 'my_knob'"):
        check_top_level(cfg, [], root=str(tmp_path))


def test_unknown_hydra_message_keeps_its_first_line():
    assert explain_compose_error("something odd\nmore") == "something odd"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["num_client=5"], "did you mean num_clients?"),
        (["+num_client=5"], "unknown top-level key 'num_client'"),
        (["strategy.reducer=medain"], "did you mean median?"),
    ],
)
def test_launcher_fails_in_one_line_without_torch_or_flower(tmp_path, args, expected):
    run_dir = tmp_path / "bad"
    result = run_fedkd_sim([*args, f"hydra.run.dir={run_dir}"], timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_failed_run_writes_its_error_to_run_log_before_importing_torch(tmp_path):
    run_dir = tmp_path / "bad"
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    result = run_fedkd_sim(["num_clients=0", f"hydra.run.dir={run_dir}"], timeout=120, env=env)
    assert result.returncode == 1
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "fedkd.schema" in imported and "numpy" in imported
    assert not {"torch", "flwr", "ray"} & imported
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == ["fedkd-sim: error: num_clients must be an integer >= 1 (got 0)"]
    assert "num_clients must be an integer >= 1 (got 0)" in (run_dir / "run.log").read_text()


def test_a_split_that_cannot_be_made_fails_before_importing_torch(tmp_path):
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    args = ["split.global_test_per_class=1000", f"hydra.run.dir={tmp_path / 'bad'}"]
    result = run_fedkd_sim(args, timeout=120, env=env)
    assert result.returncode == 1
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "fedkd.data" in imported and not {"torch", "flwr", "ray"} & imported
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("fedkd-sim: error: class "), result.stderr
    assert "set split.global_test_per_class=" in errors[0] and "or lower" in errors[0]
