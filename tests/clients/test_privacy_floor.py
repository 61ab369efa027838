"""The client's privacy floor and unpredictable noise (fedkd.privacy.floor, fedkd.privacy.noise,
clients/privacy_mod.py): a plan the server weakens is refused by the client itself."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.app import app as client_app
from clients.privacy_mod import SIMULATION_ENV, packaged_floor
from fedkd.config import compose
from fedkd.errors import ConfigError
from fedkd.plan import Plan
from fedkd.privacy.floor import Floor
from fedkd.privacy.noise import noise_rng
from protocol import wire
from protocol.channel import MEASUREMENT, PUBLIC_METRICS, SHARE_KEY
from server.app import check_deployment, prepare_run
from server.strategies import STRATEGIES

STRICT = Floor(
    mechanisms=("gaussian", "subteachers"), min_noise_multiplier=1.0, max_clip=2.0,
    max_vote_epsilon=1.0,
)  # fmt: skip
LOCAL = {"mechanism": "gaussian", "noise_multiplier": 1.5, "clip": 1.0, "seeded": False}


def test_noise_is_os_entropy_unless_seeded():
    a, b = noise_rng(False, [0, 1, 2]).normal(size=4), noise_rng(False, [0, 1, 2]).normal(size=4)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(
        noise_rng(True, [0, 1, 2]).normal(size=4), np.random.default_rng([0, 1, 2]).normal(size=4)
    )


@pytest.mark.parametrize(
    ("plan", "why"),
    [
        ({"extract": {"kind": "class_logits"}, "privacy": {**LOCAL, "noise_multiplier": 0.0}},
         "noise multiplier 0 is below the client's minimum 1"),
        ({"extract": {"kind": "class_logits"}, "privacy": {**LOCAL, "mechanism": "laplace"}},
         "laplace is not among"),
        ({"extract": {"kind": "class_logits"}, "privacy": {**LOCAL, "clip": 3.0}},
         "clip 3 exceeds the client's maximum 2"),
        ({"extract": {"kind": "class_logits"}, "privacy": {**LOCAL, "seeded": True}},
         "seeded noise"),
        ({"extract": {"kind": "public_logits", "swing_seeded": True}, "privacy": LOCAL},
         "seeded noise"),
        ({"extract": {"kind": "class_logits"}}, "un-noised"),
        ({"extract": {"kind": "votes"}, "privacy": {**LOCAL, "vote_epsilon": 2.0}},
         "vote_epsilon 2 exceeds"),
        ({"extract": {"kind": "public_logits"}, "teachers": {"shards": 2, "sigma": 0.5}},
         "noise multiplier 0.707107 is below"),
        ({"extract": {"kind": "class_logits"}, "privacy": {**LOCAL, "noise_multiplier": "9"}},
         "no valid noise_multiplier"),
    ],
)  # fmt: skip
def test_a_plan_weaker_than_the_floor_is_refused(plan, why):
    assert why in STRICT.refusal(plan, seeded_allowed=False)


@pytest.mark.parametrize(
    "plan",
    [
        {"extract": {"kind": "class_logits"}, "privacy": LOCAL},
        {"extract": {"kind": "votes"}, "privacy": {**LOCAL, "vote_epsilon": 0.5}},
        {"extract": {"kind": "public_logits"}, "teachers": {"shards": 2, "sigma": 1.0}},
        {"extract": {"kind": "none"}},  # nothing leaves
        {},
    ],
)
def test_a_plan_at_or_above_the_floor_is_accepted(plan):
    assert STRICT.refusal(plan, seeded_allowed=False) is None
    seeded = {**plan, "privacy": {**plan["privacy"], "seeded": True}} if "privacy" in plan else plan
    assert STRICT.refusal(seeded, seeded_allowed=True) is None


def test_node_config_sets_the_floor_over_the_packaged_defaults():
    defaults = packaged_floor()
    assert defaults == compose([])["privacy_floor"]  # the node's own configs/, one default
    floor = Floor.from_node_config(
        {"privacy-mechanisms": "gaussian, laplace", "privacy-min-noise-multiplier": 2}, defaults
    )
    assert floor.mechanisms == ("gaussian", "laplace") and floor.min_noise_multiplier == 2.0
    assert floor.max_clip == defaults["max_clip"]
    with pytest.raises(ConfigError, match="node config.mechanisms: unknown central"):
        Floor.from_node_config({"privacy-mechanisms": "central"}, defaults)
    with pytest.raises(ConfigError, match="node config.min_noise_multiplier must be a number"):
        Floor.from_node_config({"privacy-min-noise-multiplier": "lots"}, defaults)
    with pytest.raises(ConfigError, match="privacy_floor.max_clip must be a number > 0"):
        Floor.from_section({**defaults, "max_clip": 0})


def test_deployments_refuse_seeded_noise():
    check_deployment(compose(["privacy=gaussian"]))
    with pytest.raises(ConfigError, match="simulation.seeded_noise=true is for simulations only"):
        check_deployment(compose(["privacy=gaussian", "simulation.seeded_noise=true"]))


def delivered(content: RecordDict, node_id: int) -> Message:
    """A train message as the SuperLink delivers it to node ``node_id``."""
    metadata = Metadata(
        run_id=1, message_id=f"m{node_id}", src_node_id=1, dst_node_id=node_id,
        reply_to_message_id="", group_id="1", created_at=0.0, ttl=600.0,
        message_type=MessageType.TRAIN,
    )  # fmt: skip
    return Message(content=content, metadata=metadata)


def round_trip(strategy, node_config: dict, change_plan=None):
    """configure_train -> (the server may change the plan) -> ClientApp -> aggregate_train's input."""
    before = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    # what the ServerApp's runtime sets before a strategy makes messages
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    try:
        sent = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), None))
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before
    replies = []
    for out in sent:
        node = out.metadata.dst_node_id
        content = out.content
        if change_plan is not None:
            rnd, cfg, plan = wire.read_config(content)
            content[wire.CONFIG] = wire.make_config(rnd, json.dumps(cfg), change_plan(plan))
        context = Context(
            run_id=1, node_id=node, state=RecordDict(), run_config={},
            node_config={"partition-id": strategy.client_of[node], "num-partitions": 3, **node_config},
        )  # fmt: skip
        replies.append(client_app(delivered(content, node), context))
    return sent, replies


@pytest.fixture(scope="module")
def fd_info():
    cfg = compose(
        ["num_clients=3", "privacy=gaussian", "privacy.noise_multiplier=1.0", "client.epochs=1"]
    )
    return prepare_run(cfg)


def fd_strategy(info):
    strategy = STRATEGIES.get("fd")(info)
    strategy.node_of = {c: 100 + c for c in range(3)}
    strategy.client_of = {100 + c: c for c in range(3)}
    return strategy


def lower_noise(plan):
    return plan.with_(privacy=replace(plan.privacy, noise_multiplier=0.0))


def without_privacy(plan):
    return plan.with_(privacy=None)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lower_noise, "noise multiplier 0 is below the client's minimum 0.5"),
        (without_privacy, "un-noised"),
    ],
)
def test_a_deployed_client_refuses_a_server_that_lowers_its_noise(fd_info, change, why):
    """Real Flower messages: the strategy's train messages, changed as a curious server
    would, through the ClientApp (with its mod) and back into ``aggregate_train``."""
    floor = {"privacy-min-noise-multiplier": 0.5, "privacy-mechanisms": "gaussian"}
    strategy = fd_strategy(fd_info)
    _, replies = round_trip(strategy, floor, change)
    assert all(r.has_error() for r in replies)
    assert all(why in r.error.reason for r in replies)
    assert not any(wire.KNOWLEDGE in r.content.array_records for r in replies if r.has_content())
    with pytest.raises(RuntimeError, match=f"every client failed; first error: client 0 .*{why}"):
        strategy.aggregate_train(1, replies)  # the run stops with the client's own line


def test_a_deployed_client_accepts_the_plan_at_its_floor_and_noises(fd_info):
    floor = {"privacy-min-noise-multiplier": 1.0, "privacy-mechanisms": "gaussian"}
    strategy = fd_strategy(fd_info)
    _, replies = round_trip(strategy, floor)
    assert not any(r.has_error() for r in replies)
    _, again = round_trip(fd_strategy(fd_info), floor)
    for first, second in zip(replies, again, strict=True):  # same training, fresh noise
        a, b = wire.get_payload(first.content), wire.get_payload(second.content)
        assert not np.allclose(a.logits, b.logits)


@pytest.mark.parametrize(
    ("overrides", "draw"),
    [
        (["privacy=central", "strategy=fd"], lambda s: s.privacy.rng(s.seed, 3).normal(size=4)),
        (
            ["strategy=vote", "strategy.voting.noise=gnmax", "strategy.voting.threshold=0"],
            lambda s: s.random.noise_rng_for(3, "vote_noise").normal(size=4),
        ),
    ],
)
def test_server_side_noise_is_fresh_unless_the_simulation_seeds_it(overrides, draw):
    from helpers import info_for

    name = next(o for o in overrides if o.startswith("strategy=")).split("=")[1]
    fresh = STRATEGIES.get(name)
    one, two = (fresh(info_for(*overrides)) for _ in range(2))
    assert not np.array_equal(draw(one), draw(two))
    seeded = [*overrides, "simulation.seeded_noise=true"]
    one, two = (fresh(info_for(*seeded)) for _ in range(2))
    np.testing.assert_array_equal(draw(one), draw(two))
    assert one.privacy is None or one.privacy.summary()["seeded_noise"] is True


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["privacy=gaussian", "privacy.noise_multiplier=1", "privacy_floor.min_noise_multiplier=2"],
         "privacy.noise_multiplier=1 is below privacy_floor.min_noise_multiplier=2.0"),
        (["privacy=central", "strategy=dsfl", "privacy_floor.mechanisms=[gaussian]"],
         "privacy=central releases what privacy_floor.mechanisms=['gaussian'] refuses (none)"),
        (["privacy=gaussian", "privacy_floor.max_clip=0.5"], "privacy.clip=1.0 exceeds"),
        (["privacy_floor.mechanisms=[gaussian, bad]"], "privacy_floor.mechanisms: unknown bad"),
    ],
)  # fmt: skip
def test_a_simulation_its_clients_would_refuse_fails_before_it_starts(overrides, message):
    from server.app import check_options

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_options(compose(overrides))


def test_under_privacy_the_strategys_channel_carries_nothing_private(fd_info, monkeypatch):
    """Deployment: the reply's metrics hold only ids; the node keeps its measurement unless it
    opts in. Simulation: the measurement travels apart and reaches the recorder only."""
    floor = {"privacy-min-noise-multiplier": 1.0, "privacy-mechanisms": "gaussian"}
    _, replies = round_trip(fd_strategy(fd_info), floor)
    for reply in replies:
        assert set(reply.content.metric_records[wire.METRICS]) <= set(PUBLIC_METRICS)
        assert set(reply.content.metric_records) == {wire.METRICS}
        assert wire.EVAL not in reply.content.array_records
        assert set(reply.content.array_records) == {wire.KNOWLEDGE}  # noised, charged
    _, shared = round_trip(fd_strategy(fd_info), {**floor, SHARE_KEY: True})
    assert all("train_loss" in r.content.metric_records[MEASUREMENT] for r in shared)

    monkeypatch.setenv(SIMULATION_ENV, "1")
    strategy = fd_strategy(fd_info)
    seen = {}
    strategy.fuse = lambda rnd, uploads, num_train: seen.update(num_train) or {}
    _, replies = round_trip(strategy, {})
    for reply in replies:
        assert set(reply.content.metric_records[wire.METRICS]) <= set(PUBLIC_METRICS)
        assert "num_train" in reply.content.metric_records[MEASUREMENT]
    recorded = []
    strategy.recorder = type("Rec", (), {})()
    strategy.recorder.client = lambda rnd, cid, m: recorded.append(m)
    strategy.recorder.server_extra = lambda *a: None
    strategy.current.bytes_down = dict.fromkeys(range(3), 0)
    strategy.aggregate_train(1, replies)
    assert seen == {0: 1, 1: 1, 2: 1}  # the strategy never learns num_train
    assert all("global_test_acc" in m and m["num_train"] > 1 for m in recorded)


def test_without_privacy_the_metrics_stay_where_they_were():
    info = prepare_run(compose(["num_clients=3", "client.epochs=1"]))
    _, replies = round_trip(fd_strategy(info), {})
    for reply in replies:
        assert {"num_train", "train_loss", "global_test_acc"} <= set(
            reply.content.metric_records[wire.METRICS]
        )
        assert MEASUREMENT not in reply.content.metric_records


def test_the_handshake_keeps_data_sizes_on_a_private_node():
    cfg = compose(["num_clients=3", "privacy=gaussian"])
    content = RecordDict({wire.CONFIG: wire.make_config(0, json.dumps(cfg), Plan())})
    metadata = Metadata(
        run_id=1, message_id="q", src_node_id=1, dst_node_id=5, reply_to_message_id="",
        group_id="", created_at=0.0, ttl=60.0, message_type=MessageType.QUERY,
    )  # fmt: skip
    context = Context(
        run_id=1, node_id=5, state=RecordDict(), run_config={},
        node_config={"partition-id": 1, "num-partitions": 3},
    )  # fmt: skip
    reply = client_app(Message(content=content, metadata=metadata), context)
    assert dict(reply.content.metric_records[wire.METRICS]) == {
        "partition_id": 1,
        "num_partitions": 3,
    }
    assert MEASUREMENT not in reply.content.metric_records


@pytest.mark.slow
def test_in_a_real_run_clients_refuse_a_calibrated_noise_below_their_floor(tmp_path):
    """Through Flower and Ray: a target epsilon of 1000 calibrates z far below the clients'
    floor of 0.5; every client answers with its refusal and nothing is released."""
    from helpers import run_fedkd_sim

    run_dir = tmp_path / "refused"
    result = run_fedkd_sim(
        ["num_clients=3", "num_rounds=2", "privacy=gaussian", "privacy.target_epsilon=1000",
         "privacy_floor.min_noise_multiplier=0.5", "logging.progress=false",
         "logging.table=false", f"hydra.run.dir={run_dir}"],
        timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert re.search(
        r"every client failed; first error: client \d refuses the plan \(privacy floor\): "
        r"noise multiplier 0\.\d+ is below the client's minimum 0\.5",
        result.stderr,
    ), result.stderr[-3000:]
    metrics = run_dir / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == ""
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["privacy"]["rounds_charged"] == {"0": 1, "1": 1, "2": 1}  # charged anyway


def test_the_floor_reads_each_plans_wire_form_built_once():
    """The privacy mod's check reads ``plan.to_dict()``: built once per plan object (the
    decoded config's cache hands out one per record), equal to a fresh one, never another
    plan's, and the memo stays bounded."""
    from clients import privacy_mod
    from fedkd.plan import Plan

    plan, other = Plan(), Plan(confusion=True)
    first = privacy_mod._plan_dict(plan)
    assert privacy_mod._plan_dict(plan) is first and first == plan.to_dict()
    assert privacy_mod._plan_dict(other) == other.to_dict() != first
    for confusion in [True, False] * privacy_mod._PLAN_DICTS_MAX:
        privacy_mod._plan_dict(Plan(confusion=confusion))
    assert len(privacy_mod._PLAN_DICTS) <= privacy_mod._PLAN_DICTS_MAX
