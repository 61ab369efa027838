"""One round's two halves, for every strategy: the messages out and the replies in.

``train_messages`` samples the round's clients (``sample``), builds their instructions
(the strategy's ``plan`` plus the confusion flag and the privacy entries, each sampled
client's payload and the shared request), charges local privacy noise and notes in the
round's :class:`RoundState` the bytes sent to each client; ``close_train`` takes the
replies through the reply checker against that state, records them, rolls back a
poisoned round or fuses the accepted uploads (``server/fusion.py``), marks a starved
round in the state and returns the round's diagnostics. ``evaluate_messages`` /
``close_evaluate`` do the same for the one final evaluate exchange of strategies with a
server model. The strategy (``server/strategies/base.py``) keeps the loop and the hooks;
these functions read only its hooks and collaborators.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from fedkd.plan import Plan
from protocol import wire
from server.exchange import send_and_receive
from server.messages import Instructions

if TYPE_CHECKING:
    from server.strategies.base import FedkdStrategy

log = logging.getLogger("fedkd")


@dataclass
class RoundState:
    """The round in progress: its number, the bytes sent to each sampled client (the
    clients whose replies the round waits for) and whether it starved (fewer valid
    replies than ``server.min_train_clients``, read by ``server/nodeloss.py``)."""

    number: int = 0
    bytes_down: dict[int, int] = field(default_factory=dict)  # client id -> bytes sent
    starved: bool = False


def sample(strategy: FedkdStrategy, server_round: int) -> list[int]:
    """The round's client ids: the eligible ones (``ReplyChecker.eligible``), sampled from
    the round's seeded ``sample`` stream (``server/streams.py``)."""
    s = strategy
    eligible = s.replies.eligible(s.node_of, server_round, s.max_strikes)
    return s.random.sample(eligible, server_round, s.fraction_train, s.min_train_clients)


def train_messages(strategy: FedkdStrategy, state: RoundState) -> list[Message]:
    """The round's train messages, one per sampled client; ``state`` notes the bytes sent."""
    s, server_round = strategy, state.number
    plan = s.plan(server_round)
    if s.confusions.due(s.eval_round(server_round)):
        plan = plan.with_(confusion=True)
    sampled = sample(s, server_round)
    if s.privacy is not None:
        plan = plan.with_(**s.privacy.plan_entries(s.seeded_noise))
        s.privacy.charge_sampled(sampled)  # local noise: each sampled client releases
    built = Instructions(
        server_round, s.info.cfg_json, plan, message_type=MessageType.TRAIN,
        knowledge=s.cfg["knowledge"], request=s.request_for(server_round),
    )  # fmt: skip
    messages, state.bytes_down = {}, {}
    for cid in sampled:
        message = built.to(s.node_of[cid], s.payload_for(server_round, cid))
        state.bytes_down[cid] = wire.payload_bytes(message.content)
        messages[cid] = message
    return [messages[cid] for cid in longest_first(sampled, s.workload)]


def longest_first(clients: list[int], workload: dict[int, int]) -> list[int]:
    """``clients`` by their last reported training samples, most first (ties and clients not
    heard from yet in sampling order): the engine hands messages to its workers in the order they
    were pushed, and a round ends with its slowest client, so the longest jobs start first
    (longest-processing-time-first). Only the order of the pushes changes: the messages
    are built in sampling order, and no result depends on the order replies arrive in."""
    return sorted(clients, key=lambda cid: -workload.get(cid, 0))


def close_train(
    strategy: FedkdStrategy, server_round: int, replies: Iterable[Message], state: RoundState
) -> MetricRecord:
    """Check, record and fuse the round's replies to the messages ``state`` notes; the
    round's diagnostics."""
    s, sent = strategy, state.bytes_down
    replies, check, record = list(replies), s.replies, s.recorder
    eval_round = s.eval_round(server_round)

    def extra(cid: int) -> dict[str, Any]:
        out = {"bytes_down": sent.get(cid, 0), "eval_round": eval_round}
        return out if s.privacy is None else {**out, "epsilon": s.privacy.epsilon(cid)}

    accepted = check.collect(
        server_round, replies, sorted(sent), s.round_timeout,
        s.validate_upload, s.max_payload_bytes, extra, record,
    )  # fmt: skip
    uploads = {r.cid: r.payload for r in accepted}
    num_train = {r.cid: int(r.metrics.get("num_train", 1)) for r in accepted}
    s.workload.update(num_train)  # the next rounds push the longest jobs first
    s.confusions.record(record, eval_round, [(r.cid, r.confusion) for r in accepted])
    answered = sum(1 for m in replies if not m.has_error())
    poisoned = s.guard.poisoned(server_round, check.nonfinite_now, answered)
    newly = check.settle(server_round, s.max_strikes, poisoned)
    # health reads the researcher's view (the measurement too): logged, never fused
    accs = {r.cid: r.recorded.get("global_test_acc") for r in accepted}
    collapse = s.health.update(eval_round, accs)
    if collapse is not None:
        log.warning("%s", collapse)
        if record is not None:
            record.server_extra(server_round, {"collapse_warning": collapse})
    diagnostics = {"replies": float(len(accepted)), "rejected": float(len(check.rejected_now))}
    if record is not None:
        record.server_extra(server_round, check.participation(sent, uploads, newly))
    if poisoned:
        diagnostics["knowledge_rolled_back"] = 1.0
    elif len(accepted) < s.min_train_clients:
        state.starved = True
        log.warning(
            "round %d: %d valid replies < min_train_clients=%d; knowledge not updated",
            server_round, len(accepted), s.min_train_clients,
        )  # fmt: skip
    elif s.upload_kind is not None:
        failures = s.guard.failures
        diagnostics.update(s.guard.fuse(server_round, uploads, num_train))
        if s.dp.central and s.guard.failures == failures:
            s.privacy.charge(sorted(s.node_of))  # the noised aggregate: all pay
    if s.privacy is not None:
        diagnostics["epsilon"] = s.privacy.max_epsilon()
        if s.seeded_noise:  # beside epsilon everywhere it is shown: not a guarantee
            diagnostics["seeded_noise"] = 1.0
    return MetricRecord(diagnostics)


def evaluate_messages(strategy: FedkdStrategy, server_round: int) -> list[Message]:
    """After the last round, strategies with a server model send it to every client."""
    s = strategy
    if not s.final_evaluation or server_round != int(s.cfg["num_rounds"]):
        return []
    plan = Plan(confusion=s.confusions.due(server_round))
    built = Instructions(
        server_round, s.info.cfg_json, plan, message_type=MessageType.EVALUATE,
        knowledge=s.cfg["knowledge"],
    )  # fmt: skip
    return [
        built.to(s.node_of[cid], s.payload_for(server_round + 1, cid)) for cid in sorted(s.node_of)
    ]


def close_evaluate(
    strategy: FedkdStrategy, server_round: int, replies: Iterable[Message]
) -> MetricRecord | None:
    """Record the final evaluation's replies (no knowledge is fused)."""
    s = strategy
    s.replies.strikes_now = []
    accepted = s.replies.accept(server_round, replies, None, s.max_payload_bytes)
    s.replies.settle(server_round, s.max_strikes)
    for reply in accepted:
        reply.metrics.pop("bytes_up", None)
        if s.recorder is not None:
            measured = s.replies.measured.pop(reply.cid, {})
            s.recorder.client(server_round, reply.cid, {**measured, **reply.metrics})
    s.confusions.record(s.recorder, server_round, [(r.cid, r.confusion) for r in accepted])
    return MetricRecord({"replies": float(len(accepted))}) if accepted else None


def train_exchange(
    strategy: FedkdStrategy, grid: Grid, server_round: int, timeout: float, result: Result
) -> None:
    """One train round through Flower's hooks: messages out, replies in, metrics recorded."""
    s, started = strategy, time.perf_counter()
    messages = list(s.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid))
    replies = send_and_receive(grid, messages, timeout, s.poll_interval)
    # the grid has set each message's id while pushing it
    s.replies.sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    _, metrics = s.aggregate_train(server_round, replies)
    if metrics is not None:
        result.train_metrics_clientapp[server_round] = metrics
        if s.recorder is not None:
            elapsed = time.perf_counter() - started
            s.recorder.server(server_round, {**dict(metrics), "round_time_s": elapsed})


def evaluate_exchange(
    strategy: FedkdStrategy, grid: Grid, num_rounds: int, timeout: float, result: Result
) -> None:
    """The final evaluate exchange, for strategies that send one (``final_evaluation``)."""
    s = strategy
    messages = s.configure_evaluate(num_rounds, ArrayRecord(), ConfigRecord(), grid)
    if messages:
        replies = send_and_receive(grid, messages, timeout, s.poll_interval)
        metrics = s.aggregate_evaluate(num_rounds, replies)
        if metrics is not None:
            result.evaluate_metrics_clientapp[num_rounds] = metrics
