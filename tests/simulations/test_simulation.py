"""End-to-end: real Ray-backed Flower simulations through the ``fedkd-sim`` CLI.

Runs are over 5 digits clients and 3 rounds. The strategy and privacy runs share one
Ray session (``helpers.SimSession``: each is still a whole run, with the numbers of a
separate one: ``tests/simulations/test_session.py`` checks that to the last digit); the
config errors run ``fedkd-sim`` as a subprocess (a hung run is killed by its process id).
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import run_fedkd_sim

pytestmark = pytest.mark.slow

SMALL = ["num_clients=5", "num_rounds=3", "logging.progress=false", "logging.table=false"]


def run_cli(args: list[str], run_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return run_fedkd_sim([*args, f"hydra.run.dir={run_dir}"], timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def tensorboard_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


STRATEGY_ARGS = {
    "local": [],
    "fd": [],
    "fedmd": ["strategy.distill.start_round=2", "strategy.distill.steps=5"],
    "dsfl": ["strategy.distill.start_round=2", "strategy.distill.steps=5"],
    "fedavg": ["model=mlp"],
    "knfu": ["strategy.distill.start_round=2", "strategy.distill.steps=5"],
    "fedproto": [],
    "feddf": [],
    # leave-one-domain-out on digits_domains: 5 source-domain clients, target "rotated"
    "fedka": ["+experiment=fedka_digits_domains", "strategy.batches=8", "strategy.vote_batches=16"],
    "vote": ["+experiment=vote_digits_domains"],
}


PRIVACY_ARGS = {
    "central-dsfl": ["strategy=dsfl", "privacy=central", "privacy.target_epsilon=20"],
    "local-votes": ["strategy=vote", "+experiment=vote_digits_domains", "privacy=gaussian"],
    "laplace-prototypes": ["strategy=fedproto", "privacy=laplace", "privacy.clip=5"],
    "subteachers-dsfl": ["strategy=dsfl", "privacy=subteachers", "privacy.shards=3"],
}
RUN_ARGS = {
    **{name: [f"strategy={name}", *args] for name, args in STRATEGY_ARGS.items()},
    **{f"privacy:{name}": args for name, args in PRIVACY_ARGS.items()},
}


class Runs(dict):
    """Short runs (strategies, privacy mechanisms) in one Ray session, in the background.

    Only the runs the selected tests use are started (so ``-k`` runs only what it
    needs), in the order the tests use them, while earlier tests check their runs.
    """

    def __init__(self, factory, session, wanted: list[str]) -> None:
        super().__init__()
        self.factory = factory
        self.session = session
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.futures = {name: self.pool.submit(self._run, name) for name in wanted}

    def _run(self, name: str):
        run_dir = self.factory.mktemp(name.replace(":", "-"))
        return run_dir, self.session.run([*RUN_ARGS[name], *SMALL, f"hydra.run.dir={run_dir}"])

    def __missing__(self, name: str) -> Path:
        future = self.futures.get(name) or self.pool.submit(self._run, name)
        run_dir, result = future.result()
        assert result.status == 0, f"{name} failed ({run_dir / 'run.log'}): {result.last_line}"
        self[name] = run_dir
        return run_dir


def _wanted_runs(session) -> list[str]:
    """The RUN_ARGS keys of the selected tests that use the ``runs`` fixture."""
    wanted = []
    for item in session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "runs" in getattr(item, "fixturenames", ()) and "name" in params:
            wanted.append(params["name"])
        if "runs" in getattr(item, "fixturenames", ()) and "mechanism" in params:
            wanted.append(f"privacy:{params['mechanism']}")
    return [n for n in dict.fromkeys(wanted) if n in RUN_ARGS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, request, sim_session) -> Runs:
    pool = Runs(tmp_path_factory, sim_session, _wanted_runs(request.session))
    yield pool
    pool.pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", sorted(STRATEGY_ARGS))
def test_every_strategy_completes_with_all_clients(runs, name):
    rows = read_metrics(runs[name])
    rounds = {r["round"] for r in rows}
    assert rounds >= {1, 2, 3}
    for rnd in (1, 2, 3):
        assert sorted(r["client"] for r in rows if r["round"] == rnd) == list(range(5))
    summary = json.loads((runs[name] / "summary.json").read_text())
    assert summary["strategy"] == name
    assert summary["rejected_replies"] == {} and summary["excluded_clients"] == {}
    assert 0.0 < summary["final"]["local_test_acc"]["last"] <= 1.0
    # no fault holds a client back: each worker queues the next client behind its current one
    assert "; 2 message(s) per worker" in (runs[name] / "run.log").read_text()


@pytest.mark.parametrize("name", ["fd", "fedmd", "dsfl", "knfu", "fedproto"])
def test_knowledge_is_exchanged_and_used(runs, name):
    rows = read_metrics(runs[name])
    first = [r for r in rows if r["round"] == 1]
    later = [r for r in rows if r["round"] >= 2]
    assert all(r["bytes_up"] > 0 for r in first + later)
    assert all(r["distill_loss"] == 0 for r in first)  # nothing to distil yet
    # from round 2 the fused knowledge travels down on top of any request (indices)
    assert min(r["bytes_down"] for r in later) > max(r["bytes_down"] for r in first)
    assert all(r["distill_loss"] > 0 for r in later)


def server_rows(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "summary.json").read_text())["rounds"]


def test_fedka_produces_pseudo_labels_and_fine_tunes_the_global_model_on_them(runs):
    rows = server_rows(runs["fedka"])
    assert [r["round"] for r in rows] == [1, 2, 3]
    target = 300  # the rotated domain: every target sample gets a pseudo-label (threshold 0)
    assert all(abs(r["pseudo_labels"] - target) <= 10 for r in rows)
    assert all(r["vote_finetune_loss"] > 0 for r in rows)
    # the labels were used: fine-tuning on them moved the global model
    assert all(r["finetune_weight_shift"] > 0 for r in rows)
    for r in rows:
        assert r["group_effect"] == pytest.approx(
            r["global_model_target_acc"] - r["client_target_acc"]
        )
        assert 0 <= r["voting_acc"] <= 1
    clients = read_metrics(runs["fedka"])
    assert all(c["domain_loss"] > 0 and c["mmd_loss"] > 0 for c in clients)
    # server-side target accuracy of the uploaded models = what the clients measured
    for rnd in (1, 2, 3):
        mine = [c["global_test_acc"] for c in clients if c["round"] == rnd]
        row = next(r for r in rows if r["round"] == rnd)
        assert row["client_target_acc"] == pytest.approx(sum(mine) / len(mine), abs=1e-6)
    summary = json.loads((runs["fedka"] / "summary.json").read_text())
    assert set(summary["final"]["global_model_target_acc"]) == {"last", "last_round"}


def test_vote_releases_consensus_labels_that_clients_distil_on(runs):
    rows = {r["round"]: r for r in server_rows(runs["vote"])}
    assert rows[3]["pseudo_labels"] > 0  # untrained round-1 models may agree nowhere
    for r in rows.values():
        assert r["answered_share"] == pytest.approx(r["pseudo_labels"] / 300)
        assert 0 <= r["vote_agreement"] <= 1
    clients = read_metrics(runs["vote"])
    for c in clients:
        # a round distils on the labels released by the round before, if there were any
        released = c["round"] > 1 and rows[c["round"] - 1]["pseudo_labels"] > 0
        assert (c["distill_loss"] > 0) == released
    # labels only: a vote is 8 bytes per sample, far less than logits
    assert max(c["bytes_up"] for c in clients) < 300 * 8 * 2 + 4096


@pytest.mark.parametrize("name", ["fedmd", "dsfl", "knfu"])
def test_distillation_health_is_logged_every_round(runs, name):
    rows = read_metrics(runs[name])
    # clients: global-test accuracy after distillation and after local training, once
    # they distil (from round 2); in round 1 there is nothing to distil
    for row in rows:
        has = {"after_distill_global_acc", "after_train_global_acc"} <= set(row)
        assert has == (row["round"] >= 2)
    server = server_rows(runs[name])
    for row in server:  # the fused targets against the held-back public labels
        assert 0.0 <= row["target_acc"] <= 1.0 and row["target_entropy"] >= 0.0
    summary = json.loads((runs[name] / "summary.json").read_text())
    assert summary["collapse_warnings"] == []  # a healthy run raises none
    if name == "dsfl":  # the paper's server model, evaluated every round
        assert all(0.0 <= row["server_model_acc"] <= 1.0 for row in server)


def test_local_exchanges_nothing(runs):
    rows = read_metrics(runs["local"])
    assert all(r["bytes_up"] == 0 and r["bytes_down"] == 0 and r["distill_loss"] == 0 for r in rows)


def test_knfu_logs_fusion_weights(runs):
    rows = read_metrics(runs["knfu"])
    for row in (r for r in rows if r["round"] >= 1):
        weights = row["fusion_weights"]
        assert sorted(weights) == [str(c) for c in range(5)]
        assert abs(sum(weights.values()) - 1) < 1e-4
        assert weights[str(row["client"])] == max(weights.values())  # self-weight is the largest
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(runs["knfu"] / "tensorboard" / "server"), size_guidance={"images": 0}
    )
    acc.Reload()
    assert "fusion/weights" in acc.Tags()["images"]
    assert len(acc.Images("fusion/weights")) == 3


def test_fedproto_reports_nearest_prototype_accuracy(runs):
    rows = read_metrics(runs["fedproto"])
    later = [r for r in rows if r["round"] >= 2]
    assert all(
        0 <= r["local_test_proto_acc"] <= 1 and 0 <= r["global_test_proto_acc"] <= 1 for r in later
    )
    summary = json.loads((runs["fedproto"] / "summary.json").read_text())
    assert "global_test_proto_acc" in summary["final"]


def test_feddf_distils_a_server_model_per_architecture(runs):
    summary = json.loads((runs["feddf"] / "summary.json").read_text())
    rounds = [r for r in summary["rounds"] if r["round"] >= 1]
    assert all(r["distill_steps"] > 0 for r in rounds if "distill_steps" in r)
    assert {
        "server_model_acc/group_0",
        "server_model_acc/group_1",
        "server_model_acc/group_2",
    } <= set(rounds[0])
    rows = read_metrics(runs["feddf"])
    for rnd in (1, 2, 3):  # clients of one architecture group hold the same distilled model
        accs = {r["client"]: round(r["global_test_acc"], 6) for r in rows if r["round"] == rnd}
        assert accs[0] == accs[3] and accs[1] == accs[4]


def test_fedavg_clients_evaluate_one_global_model(runs):
    rows = read_metrics(runs["fedavg"])
    for rnd in (0, 1, 2, 3):
        accs = {round(r["global_test_acc"], 6) for r in rows if r["round"] == rnd}
        assert len(accs) == 1, f"round {rnd}: clients hold different global models {accs}"
    assert all(r["bytes_down"] > 0 and r["bytes_up"] > 0 for r in rows if r["round"] >= 1)


@pytest.mark.parametrize("name", sorted(STRATEGY_ARGS))
def test_mean_client_confusion_matrix_of_the_last_round(runs, name):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(runs[name] / "tensorboard" / "server"), size_guidance={"images": 0})
    acc.Reload()
    (image,) = acc.Images("confusion/mean_client")  # logging.confusion_every=0: last round only
    assert image.step == 3 and image.encoded_image_string.startswith(b"\x89PNG")
    (entry,) = json.loads((runs[name] / "confusion.json").read_text())["rounds"]
    assert entry["round"] == 3 and sorted(entry["clients"]) == [str(c) for c in range(5)]
    split = yaml.safe_load((runs[name] / "config.yaml").read_text())["split"]
    # the global test set: balanced, or the whole held-out domain (leave-one-domain-out)
    true_counts = np.array(entry["clients"]["0"]).sum(axis=1)
    if split.get("target_domain") is None:
        assert (true_counts == split["global_test_per_class"]).all()
    rows = {r["client"]: r for r in read_metrics(runs[name]) if r["round"] == 3}
    for cid, counts in entry["clients"].items():
        counts = np.array(counts)
        assert counts.shape == (10, 10)
        assert (counts.sum(axis=1) == true_counts).all()
        assert np.trace(counts) / counts.sum() == pytest.approx(rows[int(cid)]["global_test_acc"])
    np.testing.assert_allclose(np.sum(entry["mean_client"], axis=1), 1.0, atol=1e-5)
    # the counts travel outside the knowledge payload: bytes up do not change in round 3
    ups = [r["bytes_up"] for r in read_metrics(runs[name]) if r["client"] == 0 and "bytes_up" in r]
    assert len(set(ups)) == 1


@pytest.mark.parametrize("name", ["fd", "fedavg"])
def test_tensorboard_holds_per_client_scalars(runs, name):
    board = runs[name] / "tensorboard"
    for cid in range(5):
        scalars = tensorboard_scalars(board / f"client_{cid}")
        for tag in (
            "loss/train",
            "accuracy/local_test",
            "accuracy/global_test",
            "traffic/bytes_up",
            "traffic/bytes_down",
        ):
            assert tag in scalars, f"client_{cid} lacks {tag}"
        assert [step for step, _ in scalars["loss/train"]] == [1, 2, 3]
    server = tensorboard_scalars(board / "server")
    for tag in ("accuracy/local_test_mean", "accuracy/local_test_std", "time/round_s"):
        assert tag in server, f"server lacks {tag}"
    assert "traffic/bytes_up_total" in server and "traffic/bytes_up" not in server


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["strategy=fedavg"], "identical models"),
        (["partition.alpha=-1"], "partition.alpha must be > 0"),
        (["num_clients=5000"], "fewer samples"),
        (["strategy=dsfl", "strategy.era_temperature=2"], "era_temperature"),
        (["model.family=[{name: nosuchnet}]"], "unknown model 'nosuchnet'"),
        (["num_rounds=0"], "num_rounds"),
    ],
)
def test_invalid_config_stops_before_ray_with_one_line(tmp_path, args, message):
    keys = {a.split("=")[0] for a in args}
    small = [a for a in SMALL if a.split("=")[0] not in keys]
    result = run_cli([*args, *small], tmp_path / "bad", timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_unknown_strategy_is_a_clear_hydra_error(tmp_path):
    result = run_cli(["strategy=nosuch", *SMALL], tmp_path / "bad", timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "fedkd-sim: error: strategy=nosuch: no such strategy (options: dsfl, fd, fedavg, "
        "feddf, fedka, fedmd, fedproto, knfu, local, vote)"
    ]


def test_local_dp_logs_epsilon_everywhere_and_stops_at_the_budget(tmp_path, sim_session):
    # z = 1, two releases a round (logits + counts): epsilon 7.08, 10.7, 13.8 after 1, 2, 3 rounds
    run_dir = tmp_path / "dp"
    args = ["strategy=fd", *SMALL, "privacy=gaussian", "privacy.noise_multiplier=1.0"]
    result = sim_session.run([*args, "privacy.budget_epsilon=12", f"hydra.run.dir={run_dir}"])
    assert result.status == 0, result.last_line
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and "privacy budget" in summary["stop_reason"]
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    privacy = summary["privacy"]
    assert privacy["unit"].startswith("local") and privacy["epsilon_max"] == pytest.approx(
        10.73, abs=0.01
    )
    rows = read_metrics(run_dir)
    assert all(r["epsilon"] > 0 for r in rows)
    assert max(r["epsilon"] for r in rows) == pytest.approx(privacy["epsilon_max"])
    server = tensorboard_scalars(run_dir / "tensorboard" / "server")
    assert [step for step, _ in server["privacy/epsilon"]] == [1, 2]
    assert "privacy/epsilon" in tensorboard_scalars(run_dir / "tensorboard" / "client_0")


@pytest.mark.parametrize("mechanism", sorted(PRIVACY_ARGS))
def test_every_privacy_mechanism_runs_and_accounts(runs, mechanism):
    run_dir = runs[f"privacy:{mechanism}"]
    args = PRIVACY_ARGS[mechanism]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    target = 20.0 if "central" in args[1] else 8.0  # calibrated over the 3 planned rounds
    assert summary["privacy"]["epsilon_max"] == pytest.approx(target, rel=1e-3)
    assert [round(r["epsilon"], 3) for r in summary["rounds"]][-1] == pytest.approx(
        target, rel=1e-3
    )
