"""The typed plan: every strategy's plan survives the wire, and a malformed one is refused."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from flwr.app import ConfigRecord, RecordDict
from helpers import info_for

from fedkd.config import compose
from fedkd.plan import DistillSpec, ExtractSpec, Plan, PlanError, RegulariserSpec
from protocol import wire
from server.strategies.registry import STRATEGIES


def through_the_wire(plan: Plan) -> Plan:
    content = RecordDict({wire.CONFIG: wire.make_config(4, json.dumps({"seed": 0}), plan)})
    server_round, cfg, back = wire.read_config(content)
    assert (server_round, cfg) == (4, {"seed": 0})
    return back


def sent(plan_json: str) -> RecordDict:
    return RecordDict({wire.CONFIG: ConfigRecord({"round": 1, "cfg": "{}", "plan": plan_json})})


@pytest.mark.parametrize("name", sorted(STRATEGIES.names()))
def test_every_strategys_plan_round_trips(name):
    overrides = [f"strategy={name}", "num_clients=3"]
    if name in ("fedavg", "fedka"):  # homogeneous federations only
        overrides.append("model=mlp")
    strategy = STRATEGIES.get(name)(info_for(*overrides))
    for server_round in (1, 2):
        plan = strategy.plan(server_round)
        assert isinstance(plan, Plan)
        assert through_the_wire(plan) == plan


def test_a_full_plan_round_trips():
    plan = Plan(
        load_weights=True,
        train_epochs=3,
        distill=DistillSpec(loss="kl", batch_size=8, when="after", steps=5, optimizer={"name": "sgd", "lr": 0.1}),
        regulariser=RegulariserSpec("class_logits", loss="kl", beta=0.3, temperature=2.0),
        extract=ExtractSpec("public_logits", space="probs", temperature=2.0, swing={"t_hi": 9.0}),
        confusion=True,
    )  # fmt: skip
    assert through_the_wire(plan) == plan


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"extract": {"kind": "votes", "topk": 2}}, "unknown key plan.extract.topk"),
        ({"distil": None}, "unknown key plan.distil"),
        ({"regulariser": {"kind": "prototypes", "loss": "mse"}}, "plan.regulariser.beta is missing"),
        ({"load_weights": "yes"}, "plan.load_weights must be bool"),
        ({"train_epochs": 2.5}, "plan.train_epochs must be int"),
        ({"distill": {"loss": "kl", "batch_size": 8, "when": "during"}}, "distill.when must be one of"),
        ({"extract": "public"}, "plan.extract must be a mapping"),
        ({"extract": {"kind": "public_logits", "at": "start"}}, "extract.at must be one of"),
    ],
)  # fmt: skip
def test_a_malformed_plan_is_refused_naming_the_key(plan, message):
    with pytest.raises(PlanError, match=message):
        Plan.from_dict(plan)
    with pytest.raises(PlanError, match=message):
        wire.read_config(sent(json.dumps(plan)))


def test_a_plan_that_is_not_json_is_refused():
    with pytest.raises(PlanError, match="not JSON"):
        wire.read_config(sent("{extract"))


def test_the_server_sends_plans_only():
    with pytest.raises(TypeError, match="fedkd.plan.Plan"):
        wire.make_config(1, "{}", {"extract": {"kind": "none"}})


def test_the_client_replies_with_an_error_to_a_malformed_plan():
    """The ClientApp rebuilds the plan before anything else: a misspelt key is an error
    reply naming the key, never an instruction silently ignored."""
    from flwr.app import Context, Message, MessageType, Metadata

    from clients.app import app as client_app

    cfg = compose(["num_clients=3"])
    content = RecordDict(
        {
            wire.CONFIG: ConfigRecord(
                {"round": 1, "cfg": json.dumps(cfg), "plan": json.dumps({"extrakt": {}})}
            )
        }
    )
    metadata = Metadata(
        run_id=1, message_id="m", src_node_id=0, dst_node_id=1, reply_to_message_id="",
        group_id="", created_at=0.0, ttl=60.0, message_type=MessageType.TRAIN,
    )  # fmt: skip
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 3},
        state=RecordDict(), run_config={},
    )  # fmt: skip
    reply = client_app(Message(content=content, metadata=metadata), context)
    assert reply.has_error()
    assert "refuses the plan: malformed plan: unknown key plan.extrakt" in reply.error.reason


def test_a_config_is_decoded_once_and_shared_read_only():
    plan = Plan(extract=ExtractSpec(kind="class_logits"))
    record = wire.make_config(3, json.dumps({"seed": 0, "client": {"epochs": 1}}), plan)
    first = wire.read_config(RecordDict({wire.CONFIG: record}))
    again = wire.read_config(RecordDict({wire.CONFIG: ConfigRecord(dict(record))}))
    assert again[1] is first[1] and again[2] is first[2]  # the same record: decoded once
    cfg = first[1]
    with pytest.raises(TypeError, match="read-only"):
        cfg["seed"] = 1
    with pytest.raises(TypeError, match="read-only"):
        cfg["client"].update(epochs=2)
    changed = {**cfg, "seed": 1}  # a copy is a plain dict
    changed["client"] = dict(cfg["client"], epochs=2)
    assert cfg == {"seed": 0, "client": {"epochs": 1}}
    assert type(copy.deepcopy(cfg)["client"]) is dict
    assert type(pickle.loads(pickle.dumps(cfg))) is dict


def test_a_malformed_plan_is_refused_by_every_reader():
    content = sent(json.dumps({"extract": "public"}))
    for _ in range(2):  # a failure is not cached
        with pytest.raises(PlanError, match="plan.extract must be a mapping"):
            wire.read_config(content)
