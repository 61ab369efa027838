"""Lost Ray nodes and starved rounds as the server records them; placement in the report.

The two-node run itself is tests/simulations/test_multinode.py (slow)."""

from __future__ import annotations

import pytest
from helpers import info_for

from fedkd.config import check_config, compose
from fedkd.errors import ConfigError
from server import nodeloss as server_nodeloss
from server.rounds import RoundState
from server.strategies import STRATEGIES
from simulations import nodeloss
from simulations.report import Run, placement_markdown

HEAD = ("a" * 56, "10.0.0.1")
WORKER = ("b" * 56, "10.0.0.2")


def _watch(policy: str) -> nodeloss.NodeWatch:
    watch = nodeloss.NodeWatch(policy)
    watch.ran(0, HEAD)
    watch.ran(1, WORKER)
    watch.ran(1, HEAD)
    return watch


def test_events_become_one_row_per_lost_node():
    watch = _watch("replace")
    watch.lost(1, WORKER, "retrying")
    watch.lost(2, WORKER, "retrying")
    watch.lost(3, None, "retrying")  # an actor that died before it said where it ran
    watch.outcome(1, "recovered")
    watch.outcome(2, "no_reply")
    watch.outcome(3, "recovered")
    rows = server_nodeloss.node_rows(4, watch.drain(), watch.policy)
    assert rows == [
        {
            "round": 4,
            "node_id": WORKER[0],
            "node_ip": WORKER[1],
            "clients": [1, 2],
            "action": "replace",
            "recovered": [1],
            "no_reply": [2],
        },
        {
            "round": 4,
            "node_id": None,
            "node_ip": None,
            "clients": [3],
            "action": "replace",
            "recovered": [3],
            "no_reply": [],
        },
    ]
    assert watch.drain() == []  # each event is read once


def test_placement_counts_clients_and_messages_per_node():
    placement = _watch("replace").placement()
    assert placement["nodes"] == {
        HEAD[0]: {"ip": HEAD[1], "clients": [0, 1], "messages": 2},
        WORKER[0]: {"ip": WORKER[1], "clients": [1], "messages": 1},
    }
    assert placement["clients"] == {"0": [HEAD[0]], "1": sorted([HEAD[0], WORKER[0]])}


def test_replace_logs_one_line_and_keeps_going(caplog):
    fd = STRATEGIES.get("fd")(info_for())
    fd.cluster = _watch("replace")
    fd.cluster.lost(1, WORKER, "retrying")
    fd.cluster.outcome(1, "recovered")
    with caplog.at_level("WARNING", logger="fedkd"):
        server_nodeloss.after_round(fd, 3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "round 3" in lines[0] and WORKER[1] in lines[0], lines
    assert fd.status.stop_reason is None
    assert [r["round"] for r in fd.status.node_loss] == [3]
    summary = server_nodeloss.summary(fd)
    assert summary["node_loss"] == fd.status.node_loss
    assert WORKER[0] in summary["placement"]["nodes"]
    # resumed runs keep the rows
    again = STRATEGIES.get("fd")(info_for())
    again.load_state_dict(fd.state_dict())
    assert again.status.node_loss == fd.status.node_loss


def test_fail_stops_with_a_line_naming_the_node():
    fd = STRATEGIES.get("fd")(info_for())
    fd.cluster = _watch("fail")
    fd.cluster.lost(1, WORKER, "stopped")
    server_nodeloss.after_round(fd, 2)
    assert fd.status.stop_status == "node_lost"
    assert WORKER[1] in fd.status.stop_reason and "on_node_loss=fail" in fd.status.stop_reason
    assert "\n" not in fd.status.stop_reason
    assert fd.status.node_loss[0]["action"] == "fail"


def test_starved_rounds_in_a_row_stop_the_run():
    fd = STRATEGIES.get("fd")(info_for("server.max_starved_rounds=2"))
    for rnd, starved in enumerate([True, False, True], start=1):
        fd.current = RoundState(rnd, starved=starved)
        server_nodeloss.after_round(fd, rnd)
        assert fd.status.stop_reason is None, rnd  # never two in a row yet
    fd.current = RoundState(4, starved=True)
    server_nodeloss.after_round(fd, 4)
    assert fd.status.stop_status == "starved"
    assert "rounds 3-4" in fd.status.stop_reason and "min_train_clients=2" in fd.status.stop_reason


def test_starvation_can_be_switched_off():
    fd = STRATEGIES.get("fd")(info_for("server.max_starved_rounds=null"))
    for rnd in range(1, 20):
        fd.current = RoundState(rnd, starved=True)
        server_nodeloss.after_round(fd, rnd)
    assert fd.status.stop_reason is None


@pytest.mark.parametrize("value", [0, -1, 1.5, "true"])
def test_bad_max_starved_rounds_is_one_line(value):
    cfg = compose([f"server.max_starved_rounds={value}"])
    with pytest.raises(ConfigError, match="server.max_starved_rounds"):
        check_config(cfg)


def test_unknown_policy_is_refused():
    with pytest.raises(ConfigError, match="simulation.on_node_loss must be one of replace, fail"):
        nodeloss.install("retry")


def test_ray_notices_of_a_dead_node_stay_off_the_console(capsys):
    assert nodeloss.quiet_node_deaths()
    from ray._private import worker

    dump = "Raylet is terminated. Termination is unexpected. Last 20 lines of the Raylet logs:"
    worker.print_to_stdstream({"lines": [dump], "pid": "raylet", "is_err": False}, False)
    worker.print_to_stdstream({"lines": ["other news"], "pid": "raylet", "is_err": False}, False)
    shown = capsys.readouterr()
    assert "Raylet is terminated" not in shown.out + shown.err
    assert "other news" in shown.out + shown.err


def test_report_shows_clients_per_node(tmp_path):
    summary = {
        "placement": _watch("replace").placement(),
        "node_loss": [
            {
                "round": 2,
                "node_id": WORKER[0],
                "node_ip": WORKER[1],
                "clients": [1],
                "action": "replace",
                "recovered": [1],
                "no_reply": [],
            }
        ],
    }
    run = Run(dir=tmp_path, label="two-nodes", config={}, summary=summary, lines=[])
    text = "\n".join(placement_markdown([run]))
    assert f"| `{HEAD[0][:12]}` | {HEAD[1]} | 2 | 2 |" in text
    assert f"| `{WORKER[0][:12]}` | {WORKER[1]} | 1 | 1 |" in text
    assert "Round 2" in text and "clients 1, action replace" in text


def test_a_lost_nodes_reply_is_counted_without_a_line_of_its_own(caplog):
    fd = STRATEGIES.get("fd")(info_for())
    with caplog.at_level("INFO", logger="fedkd"):
        fd.replies.drop(
            2, 3, "client_unavailable", f"{server_nodeloss.LOST_REASON} (ActorDiedError)"
        )
        fd.replies.drop(2, 4, "client_unavailable", "node went away")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "client 4" in warned[0], warned
    kept = [r for r in caplog.records if r.name == "fedkd.rounds"]  # run.log only
    assert len(kept) == 1 and "client 3" in kept[0].getMessage()
    assert fd.dropped["client_unavailable"] == 2


# ---------------------------------------------------------------- messages in flight per actor
class _Pool:
    """A Flower actor pool's surface: idle actors, their count, a factory."""

    def __init__(self, actors: list[str]) -> None:
        self.pool, self.num_actors, self.made = list(actors), len(actors), 0

    def create_actor_fn(self):
        self.made += 1
        return _Actor(f"new{self.made}")


class _Actor:
    def __init__(self, name: str) -> None:
        self.name = name
        self.__ray_call__ = type("Call", (), {"remote": staticmethod(lambda fn: f"ref-{name}")})

    def __repr__(self) -> str:
        return self.name


class _Ray:
    """Ray's calls ``_Actors`` makes: nothing placed yet answers, kills are counted."""

    def __init__(self) -> None:
        self.killed: list[object] = []

    def wait(self, refs, num_returns, timeout):
        return [], refs

    def kill(self, actor, no_restart):
        self.killed.append(actor)


def _actors(names: list[str]) -> tuple[nodeloss._Actors, _Pool, _Ray]:
    pool = _Pool([])
    actors = nodeloss._Actors(pool)  # no actor to place: the pool starts empty
    actors.ray = _Ray()
    pool.pool.extend(names)  # placed and idle
    pool.num_actors = len(names)
    actors.where = {name: (f"node-{name}", "10.0.0.1") for name in names}
    return actors, pool, actors.ray


def test_each_actor_takes_depth_messages_idle_ones_first(monkeypatch):
    monkeypatch.setattr(nodeloss, "DEPTH", 2)  # simulation.messages_per_worker=2
    actors, pool, _ = _actors(["a", "b"])
    first = [actors.take(None) for _ in range(2)]
    assert sorted(first) == ["a", "b"]  # both idle actors before a second message anywhere
    second = [actors.take(None) for _ in range(2 * (nodeloss.DEPTH - 1))]
    assert sorted(first + second) == sorted(["a", "b"] * nodeloss.DEPTH)
    assert pool.pool == [] and actors.open == []  # every actor full
    actors.give_back("a")
    assert actors.take(None) == "a"  # the freed slot
    for actor in ["a"] * nodeloss.DEPTH + ["b"] * nodeloss.DEPTH:
        actors.give_back(actor)
    assert sorted(pool.pool) == ["a", "b"] and not actors.busy and not actors.open


def test_a_queued_message_goes_behind_the_job_started_last(monkeypatch):
    monkeypatch.setattr(nodeloss, "DEPTH", 2)  # simulation.messages_per_worker=2
    """The server pushes its longest jobs first: with every actor running one, the next
    message queues in the actor that got its job last (likely the shortest), not the first."""
    actors, _, _ = _actors(["a", "b"])
    first, second = actors.take(None), actors.take(None)  # the longest job, then the next
    assert actors.take(None) == second
    actors.give_back(second)
    actors.give_back(second)
    assert actors.take(None) == second  # idle again: an idle actor before a busy one
    assert actors.take(None) == second and first in actors.open


def test_an_actor_lost_with_two_messages_in_flight_is_dropped_and_replaced_once(monkeypatch):
    monkeypatch.setattr(nodeloss, "DEPTH", 2)  # simulation.messages_per_worker=2
    actors, pool, ray = _actors(["a", "b"])
    taken = [actors.take(None) for _ in range(2 * nodeloss.DEPTH)]
    assert taken.count("a") == nodeloss.DEPTH
    where, dropped = actors.drop("a")  # the first message in "a" meets the loss
    again, dropped_again = actors.drop("a")  # and so does the second
    assert dropped and not dropped_again and where == again == ("node-a", "10.0.0.1")
    assert pool.num_actors == 1 and ray.killed == ["a"]
    actors.give_back("a")  # a late give-back of the lost actor changes nothing
    assert "a" not in pool.pool and "a" not in actors.open
    actors.replace()
    assert pool.num_actors == 2 and [p[0].name for p in actors.pending] == ["new1"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", "Auto", True, None])
def test_messages_per_worker_must_be_auto_or_a_whole_number_of_at_least_one(bad):
    with pytest.raises(ConfigError, match="simulation.messages_per_worker must be auto or"):
        nodeloss.check_depth(bad)
    assert nodeloss.check_depth(2) == 2 and nodeloss.check_depth("auto") == "auto"


def _depth_config(depth, **faults):
    cfg = compose()
    cfg["simulation"]["messages_per_worker"] = depth
    for kind, selection in faults.items():
        cfg["faults"][kind].update(selection)
    return cfg


@pytest.mark.parametrize(
    ("faults", "depth"),
    [
        ({}, 2),
        ({"crash": {"clients": [1]}, "dropout": {"fraction": 0.5}}, 2),  # answer, free the worker
        ({"bad_payload": {"clients": [0]}}, 2),
        ({"hang": {"clients": [3]}}, 1),
        ({"slow": {"fraction": 0.25, "seconds": 1.0}}, 1),
        ({"slow": {"fraction": 0.01}}, 2),  # rounds to no client out of 20
    ],
)
def test_auto_queues_a_second_message_unless_a_fault_holds_a_client_back(faults, depth):
    assert nodeloss.resolve_depth(_depth_config("auto", **faults)) == depth


def test_a_number_of_messages_per_worker_is_taken_as_it_is():
    assert nodeloss.resolve_depth(_depth_config(1)) == 1
    assert nodeloss.resolve_depth(_depth_config(3, hang={"clients": [0]})) == 3
    with pytest.raises(ConfigError, match="messages_per_worker must be"):
        nodeloss.resolve_depth(_depth_config("two"))
    with pytest.raises(ValueError, match="resolve_depth"):
        nodeloss.install("replace", depth="auto")
