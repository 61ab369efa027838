"""The append-only privacy ledger (server/ledger_log.py): a resume never forgets a release."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest
from helpers import info_for, kill_group, run_fedkd_sim, start_fedkd_sim

from fedkd import checkpoint as ckpt_io
from fedkd.privacy.accounting import encode_event
from fedkd.privacy.release import epsilon_after, round_event
from server import ledger_log
from server.strategies import STRATEGIES

LOCAL = ("strategy=fd", "privacy=gaussian", "privacy.noise_multiplier=1")
VOTE = (
    "strategy=vote", "strategy.query_size=3", "strategy.voting.noise=gnmax",
    "strategy.voting.sigma=2", "strategy.voting.threshold=0",
)  # fmt: skip


def charge_round(strategy, rnd: int) -> None:
    strategy.current.number = rnd
    strategy.privacy.charge([0, 1, 2])


def test_a_resume_charges_what_ran_after_the_checkpoint(tmp_path):
    first = STRATEGIES.get("fd")(info_for(*LOCAL))
    ledger_log.attach(first, tmp_path, resumed=False)
    for rnd in (1, 2):
        charge_round(first, rnd)
    ckpt_io.save(tmp_path / "s.ckpt", first.state_dict())  # the checkpoint of round 2
    charge_round(first, 3)  # released, then the run is killed
    lines = [json.loads(x) for x in (tmp_path / ledger_log.FILE).read_text().splitlines()]
    event = encode_event(first.privacy.event)
    assert lines == [
        {"round": r, "mechanism": "gaussian", "units": [0, 1, 2], "event": event, "count": 1}
        for r in (1, 2, 3)
    ]

    second = STRATEGIES.get("fd")(info_for(*LOCAL))
    second.load_state_dict(ckpt_io.load(tmp_path / "s.ckpt"))
    assert second.privacy.rounds[0] == 2  # what the checkpoint knew
    ledger_log.attach(second, tmp_path, resumed=True)
    assert second.privacy.rounds[0] == 3  # the log knows round 3 was released
    charge_round(second, 3)  # round 3 runs again and releases again
    assert second.privacy.rounds[0] == 4
    assert second.privacy.epsilon(0) > first.privacy.epsilon(0)


def test_a_torn_last_line_is_not_a_charge(tmp_path):
    log = ledger_log.ReleaseLog(tmp_path / ledger_log.FILE)
    log.append({"round": 1, "clients": [0]})
    with open(log.path, "a") as out:
        out.write('{"round": 2, "cli')
    assert log.entries() == [{"round": 1, "clients": [0]}]


def test_the_gnmax_releases_are_rebuilt_from_the_log(tmp_path):
    first = STRATEGIES.get("vote")(info_for(*VOTE))
    ledger_log.attach(first, tmp_path, resumed=False)
    first.current.number = 1
    first.voting.recorder.gnmax(2.0, 3)
    state = first.state_dict()
    first.current.number = 2
    first.voting.recorder.gnmax(2.0, 3)
    second = STRATEGIES.get("vote")(info_for(*VOTE))
    second.load_state_dict(state)
    ledger_log.attach(second, tmp_path, resumed=True)
    assert second.voting.epsilon() == pytest.approx(first.voting.epsilon())
    fresh = STRATEGIES.get("vote")(info_for(*VOTE))
    ledger_log.attach(fresh, tmp_path, resumed=False)  # a new run starts a new log
    assert (tmp_path / ledger_log.FILE).read_text() == ""


def checkpoint_round(run_dir: Path) -> int:
    try:
        with zipfile.ZipFile(run_dir / "checkpoints" / "server.ckpt") as archive:
            return json.loads(archive.read("state.json"))["round"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return 0


@pytest.mark.slow
def test_a_run_killed_with_privacy_on_resumes_with_at_least_the_uninterrupted_epsilon(tmp_path):
    """Kill after round 3 was charged (checkpoint of round 2), resume: round 3 is charged again.

    Client 0 straggles 500 s in round 3 (under the 600 s round timeout), far longer than the
    test waits, so round 3 cannot end before the kill; the resume shortens it to 0 s."""
    run_dir = tmp_path / "killed"
    args = [
        "num_clients=3", "num_rounds=4", "checkpoint.every=2", *LOCAL,
        "logging.progress=false", "logging.table=false", "logging.level=quiet",
        "faults.slow.clients=[0]", "faults.slow.rounds=[3]", "faults.slow.seconds=500",
    ]  # fmt: skip
    proc = start_fedkd_sim([*args, f"hydra.run.dir={run_dir}"], tmp_path / "killed.log")
    log = run_dir / ledger_log.FILE
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            charged = log.read_text() if log.exists() else ""
            if checkpoint_round(run_dir) == 2 and '"round": 3' in charged:
                break  # round 3's plan went out (charged) and client 0 is still on it
            time.sleep(0.05)
    finally:
        code = kill_group(proc)
    assert code == -9, (tmp_path / "killed.log").read_text()[-3000:]
    assert not (run_dir / "summary.json").exists()
    resumed = run_fedkd_sim(
        [f"resume={run_dir}", "faults.slow.seconds=0", "logging.level=quiet"], timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    uninterrupted = epsilon_after(round_event("gaussian", 1.0, "class_logits", 10, None), 4, 1e-5)
    assert summary["privacy"]["rounds_charged"] == {"0": 5, "1": 5, "2": 5}
    assert summary["privacy"]["epsilon_max"] >= uninterrupted
    assert summary["privacy"]["epsilon_max"] == pytest.approx(
        epsilon_after(round_event("gaussian", 1.0, "class_logits", 10, None), 5, 1e-5)
    )
