"""The one way the server builds an instruction message for a client (``protocol.wire``).

A message carries the round, the run's config and the plan (``wire.CONFIG``), the
knowledge payload meant for that client when there is one, and the arrays every
sampled client receives (``wire.REQUEST``, e.g. public-set indices). Train and
evaluate instructions are built the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Message, RecordDict

from protocol import wire


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
    content = RecordDict({wire.CONFIG: wire.make_config(server_round, cfg_json, plan)})
    if payload is not None:
        wire.put_payload(content, payload, knowledge)
    if request is not None:
        content[wire.REQUEST] = wire.arrays_to_record(request)
    return Message(content=content, dst_node_id=node_id, message_type=message_type)
