"""Privacy noise nobody can regenerate (fedkd.privacy.noise): two runs of the same config and
seed release different noise; ``simulation.seeded_noise`` makes them repeat (not a guarantee)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from clients.subteachers import teacher_release
from fedkd.client.runtime import ClientTensors
from fedkd.knowledge import PublicLogits
from fedkd.models import build_model
from fedkd.plan import TeachersSpec
from fedkd.privacy.swing import SwingSpec, swing_payload


def small_teachers():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (24,), generator=g)
    data = ClientTensors(
        train_x=x, train_y=y, test_x=x[:2], test_y=y[:2], global_x=x[:2], global_y=y[:2],
        public_x=torch.rand(6, 1, 8, 8, generator=g), num_classes=10, input_shape=(1, 8, 8),
    )  # fmt: skip
    models = []
    for t in range(3):
        torch.manual_seed(t)
        models.append(build_model({"name": "mlp", "hidden": [16]}, (1, 8, 8), 10, 8))
    return data, models


@pytest.mark.parametrize("seeded", [False, True])
def test_sub_teachers_release_fresh_noise_unless_seeded(seeded):
    data, models = small_teachers()
    cfg = {
        "epochs": 1,
        "batch_size": 4,
        "eval_batch_size": 64,
        "optimizer": {"name": "sgd", "lr": 0.1},
    }
    out = [
        teacher_release(
            copy.deepcopy(models), data, TeachersSpec(shards=len(models), sigma=0.1, seeded=seeded), np.arange(6), cfg,
            torch.Generator().manual_seed(1), torch.device("cpu"), seed=0, server_round=1, pid=0,
        ).values
        for _ in range(2)
    ]  # fmt: skip
    assert np.array_equal(out[0], out[1]) == seeded


@pytest.mark.parametrize("seeded", [False, True])
def test_swing_noise_is_fresh_unless_seeded_and_batches_stay_reproducible(seeded):
    logits = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    payload = PublicLogits(indices=np.arange(5), values=logits, space="logits")
    spec = SwingSpec(score="memorisation").to_dict()
    outs, after = [], []
    for _ in range(2):
        g = torch.Generator().manual_seed(7)
        outs.append(swing_payload(payload, None, spec, None, g, seeded=seeded).values)
        after.append(torch.randint(0, 1000, (3,), generator=g).tolist())  # the next batch draw
    assert np.array_equal(outs[0], outs[1]) == seeded
    assert after[0] == after[1]  # one draw taken either way: batch order unchanged


def released(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if not k.endswith("_time") and k != "client_time"} for r in rows
    ]


@pytest.mark.slow
def test_two_runs_of_one_config_release_different_noise_unless_seeded(tmp_path, sim_session):
    """fd under local DP: round 2 distils on the noised teacher, so its metrics show the noise.

    The four runs share one Ray session (their numbers are those of separate runs)."""
    args = [
        "num_clients=3", "num_rounds=2", "privacy=gaussian", "privacy.noise_multiplier=1",
        "logging.progress=false", "logging.table=false", "logging.level=quiet",
    ]  # fmt: skip
    runs = {}
    for name, extra in (("a", []), ("b", []), ("c", ["simulation.seeded_noise=true"]),
                        ("d", ["simulation.seeded_noise=true"])):  # fmt: skip
        result = sim_session.run([*args, *extra, f"hydra.run.dir={tmp_path / name}"])
        assert result.status == 0, f"run {name}: {result.last_line}"
        runs[name] = released(tmp_path / name)
    first = [r for r in runs["a"] if r["round"] == 1]
    assert first == [r for r in runs["b"] if r["round"] == 1]  # before any noise arrives
    assert runs["a"] != runs["b"]  # fresh noise: round 2 differs
    assert runs["c"] == runs["d"]  # seeded: to the last digit
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["privacy"]["seeded_noise"] is True
    assert "not a guarantee" in summary["privacy"]["guarantee"]


def _released_twice(name: str, overrides: list[str], seeded: bool) -> tuple:
    """What a fresh strategy releases for the same uploads, twice (two runs of one config)."""
    from helpers import info_for, uploads_for

    from server.strategies import STRATEGIES

    extra = ["simulation.seeded_noise=true"] if seeded else []
    out = []
    for _ in range(2):
        strategy = STRATEGIES.get(name)(info_for(*overrides, *extra, num_public=30))
        strategy.fuse(1, uploads_for(strategy), {0: 5, 1: 3, 2: 4})
        payload = strategy.payload_for(2, 0)
        out.append({k: v.copy() for k, v in payload.to_arrays().items()})
    return tuple(out)


@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("fd", ["strategy=fd", "privacy=central", "privacy.noise_multiplier=1"]),
        ("dsfl", ["strategy=dsfl", "strategy.open_size=30", "privacy=central",
                  "privacy.noise_multiplier=1"]),
        ("vote", ["strategy=vote", "strategy.query_size=30", "strategy.voting.noise=gnmax",
                  "strategy.voting.sigma=50", "strategy.voting.threshold=0"]),
    ],
)  # fmt: skip
def test_central_and_gnmax_noise_is_fresh_unless_seeded(name, overrides, seeded):
    first, second = _released_twice(name, overrides, seeded)
    same = all(np.array_equal(first[k], second[k]) for k in first)
    assert same is seeded
