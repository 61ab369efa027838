"""A round's outgoing messages (server/messages.py, server/rounds.py): records shared
between clients still carry each client exactly what it would get alone, and the
longest jobs are pushed first."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from helpers import NODES, make, reply

from fedkd.knowledge import ClassLogits
from protocol import wire
from server import messages, rounds


@pytest.fixture
def plain_messages(monkeypatch):
    """Flower's Message needs a live run; the outgoing messages become plain records."""
    monkeypatch.setattr(
        messages,
        "Message",
        lambda content, dst_node_id, message_type: SimpleNamespace(
            content=content, dst_node_id=dst_node_id
        ),
    )


def teacher(value: float) -> ClassLogits:
    return ClassLogits(np.full((2, 2), value, np.float32), np.array([3, 2]))


def test_one_payload_sent_to_every_client_is_encoded_once_and_reads_back(plain_messages):
    fd = make("fd", None, "knowledge.encoding=float16")
    fd.global_teacher = teacher(0.25)
    sent = list(fd.configure_train(2, None, None, None))
    assert len(sent) == 3
    first = sent[0].content
    for message in sent[1:]:  # the same record objects, not copies
        assert message.content[wire.CONFIG] is first[wire.CONFIG]
        assert message.content[wire.KNOWLEDGE] is first[wire.KNOWLEDGE]
    alone = messages.instruction(
        2, fd.info.cfg_json, fd.plan(2), node_id=10, message_type="train",
        payload=fd.global_teacher, knowledge=fd.cfg["knowledge"],
    ).content  # fmt: skip
    for message in sent:  # each client reads what a message built for it alone carries
        got = wire.get_payload(message.content)
        want = wire.get_payload(alone)
        np.testing.assert_array_equal(got.logits, want.logits)
        np.testing.assert_array_equal(got.counts, want.counts)
        assert wire.read_config(message.content)[0] == 2
        assert fd.current.bytes_down == dict.fromkeys(NODES, wire.payload_bytes(alone))


def test_different_payloads_are_encoded_for_their_own_client(plain_messages):
    fd = make("fd", None, "strategy.teacher=loo")
    fd.teachers = {cid: teacher(float(cid)) for cid in NODES}
    sent = {m.dst_node_id: m.content for m in fd.configure_train(2, None, None, None)}
    for cid, node in NODES.items():
        assert wire.get_payload(sent[node]).logits[0, 0] == float(cid)


def test_the_longest_jobs_are_pushed_first_once_clients_have_reported(plain_messages):
    fd = make("fd")
    first = [m.dst_node_id for m in fd.configure_train(1, None, None, None)]
    assert first == [NODES[c] for c in sorted(NODES)]  # nothing reported yet: sampling order
    rounds.close_train(
        fd, 1,
        [reply(c, teacher(1.0), metrics={"num_train": n}) for c, n in ((0, 5), (1, 50), (2, 20))],
        fd.current,
    )  # fmt: skip
    assert fd.workload == {0: 5, 1: 50, 2: 20}
    pushed = [m.dst_node_id for m in fd.configure_train(2, None, None, None)]
    assert pushed == [NODES[1], NODES[2], NODES[0]]
    assert sorted(fd.current.bytes_down) == sorted(NODES)  # every sampled client is waited for
