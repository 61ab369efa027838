"""Reliability end to end: real ``fedkd-sim`` processes with injected faults and hostile clients.

Every fault happens inside the ClientApp (an exception, a sleep past the round
timeout, Flower's NODE_UNAVAILABLE reply, a malformed payload), so the server
sees what it would see from broken clients.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from procs import run_fedkd_sim

pytestmark = pytest.mark.slow

QUIET = ["logging.progress=false", "logging.table=false"]


def run_cli(args: list[str], run_dir: Path, timeout: float = 300):
    return run_fedkd_sim([*args, *QUIET, f"hydra.run.dir={run_dir}"], timeout)


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


FAULTS = [
    "num_clients=10",
    "num_rounds=3",
    "faults.crash.fraction=0.3",  # 3 seeded clients raise in every round
    "faults.bad_payload.clients=[1]",  # NaN, then float16, then a wrong shape
    "faults.bad_payload.mode=cycle",
    "faults.dropout.clients=[2]",  # gone in round 2, back in round 3
    "faults.dropout.rounds=[2]",
    "faults.hang.clients=[3]",  # sleeps past the round timeout in round 2
    "faults.hang.rounds=[2]",
    "faults.hang.seconds=17",
    "server.round_timeout=15",
    "server.max_strikes=3",
]


def test_faulty_and_broken_clients_are_survived_and_counted(tmp_path):
    run_dir = tmp_path / "faults"
    result = run_cli(FAULTS, run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(run_dir)
    assert summary["status"] == "finished"
    crash = summary["faults"]["crash"]
    assert len(crash) == 3 and not {1, 2, 3} & set(crash)
    assert summary["faults"] == {"dropout": [2], "hang": [3], "crash": crash, "bad_payload": [1]}
    rows = {r["round"]: r for r in summary["rounds"]}
    healthy = sorted(set(range(10)) - set(crash) - {1, 2, 3})
    assert rows[1]["participants"] == sorted([*healthy, 2, 3])
    assert rows[2]["participants"] == healthy  # 2 dropped out, 3 hung
    assert rows[3]["participants"] == sorted([*healthy, 2, 3])  # both came back
    crashed = {str(c): "client_error" for c in crash}
    assert rows[1]["rejected_clients"] == {**crashed, "1": "non_finite"}
    assert rows[2]["rejected_clients"] == {
        **crashed,
        "1": "dtype",
        "2": "client_unavailable",
        "3": "no_reply",
    }
    assert rows[3]["rejected_clients"] == {**crashed, "1": "shape"}
    assert rows[3]["excluded"] == [1]
    assert summary["excluded_clients"] == {"1": 3}
    assert summary["rejected_replies"] == {
        "client_error": 9,
        "client_unavailable": 1,
        "dtype": 1,
        "no_reply": 1,
        "non_finite": 1,
        "shape": 1,
    }
    # the round with a hanging client waited for the timeout, not for the client
    assert 15 <= rows[2]["round_time_s"] < 17
    assert all(r["replies"] >= 2 for r in rows.values())  # every round fused
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {m["client"] for m in metrics} == set(range(10)) - set(crash) - {1}
    # the console shows one line per rejected reply, not Flower's tracebacks
    assert "Traceback" not in result.stderr + result.stdout
