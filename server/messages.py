"""The one way the server builds an instruction message for a client (``protocol.wire``).

A message carries the round, the run's config and the plan (``wire.CONFIG``), the
knowledge payload meant for that client when there is one, and the arrays every
sampled client receives (``wire.REQUEST``, e.g. public-set indices). Train and
evaluate instructions are built the same way.

A round's instructions share their records (``Instructions``): the config record and the
request are the same for every client, and a payload object the strategy sends to several
clients (FD's global teacher, a broadcast model) is encoded once. Records are read-only
once built (the engine pickles each message to its worker; a client gets its own copy), so
sharing changes nothing a client receives.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Message, RecordDict

from protocol import wire


class Instructions:
    """The instructions of one round and message type, each record encoded once."""

    def __init__(
        self,
        server_round: int,
        cfg_json: str,
        plan: Any,
        *,
        message_type: str,
        knowledge: dict[str, Any] | None = None,
        request: dict[str, np.ndarray] | None = None,
    ) -> None:
        self.message_type, self.knowledge = message_type, knowledge
        self.config = wire.make_config(server_round, cfg_json, plan)
        self.request = None if request is None else wire.arrays_to_record(request)
        # id(payload) -> (the payload, kept so its id is not reused; its encoded records)
        self.encoded: dict[int, tuple[Any, RecordDict]] = {}

    def payload_records(self, payload: Any) -> RecordDict:
        """The knowledge records of ``payload``, encoded on its first use this round."""
        held = self.encoded.get(id(payload))
        if held is None or held[0] is not payload:
            records = RecordDict()
            wire.put_payload(records, payload, self.knowledge)
            held = self.encoded[id(payload)] = (payload, records)
        return held[1]

    def to(self, node_id: int, payload: Any | None = None) -> Message:
        """The message telling node ``node_id`` what to do, with ``payload`` if not None."""
        content = RecordDict({wire.CONFIG: self.config})
        if payload is not None:
            for key, record in self.payload_records(payload).items():
                content[key] = record
        if self.request is not None:
            content[wire.REQUEST] = self.request
        return Message(content=content, dst_node_id=node_id, message_type=self.message_type)


def instruction(
    server_round: int,
    cfg_json: str,
    plan: Any,
    *,
    node_id: int,
    message_type: str,
    payload: Any | None = None,
    knowledge: dict[str, Any] | None = None,
    request: dict[str, np.ndarray] | None = None,
) -> Message:
    """The message telling node ``node_id`` what to do in ``server_round``.

    ``knowledge``: the run config's ``knowledge`` section (the payload's encoding)."""
    built = Instructions(
        server_round, cfg_json, plan, message_type=message_type, knowledge=knowledge,
        request=request,
    )  # fmt: skip
    return built.to(node_id, payload)
