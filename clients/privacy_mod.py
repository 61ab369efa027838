"""The client-side privacy mod: a Flower mod that noises every outgoing knowledge payload.

It wraps the ClientApp (``ClientApp(mods=[privacy_mod])``): after the round ran, the
reply's knowledge payload (public-set logits or probabilities, per-class logits and
their counts, prototypes, votes, weights) is replaced by
:func:`fedkd.privacy.release.privatize` under the spec the server put in the plan
(``plan["privacy"]``: mechanism, calibrated noise multiplier, clip bounds). The
client's own model and metrics are untouched: only what leaves the client is noised.
Without ``plan["privacy"]`` (``privacy=none`` or ``central``) the reply passes through.

Noise is seeded by (seed, round, client) when the plan says ``seeded`` (reproducible
simulations); ``privacy.seeded_noise=false`` draws from the OS instead, which is what a
real deployment wants (a known seed lets anyone subtract the noise).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Context, Message, MessageType

from clients import wire
from fedkd.privacy.release import LocalSpec, privatize

_STREAM = 7  # keeps the noise stream apart from the batch-order generator


def privacy_mod(
    message: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    reply = call_next(message, context)
    if message.metadata.message_type != MessageType.TRAIN or reply.has_error():
        return reply
    server_round, cfg, plan = wire.read_config(message.content)
    spec = plan.get("privacy")
    payload = wire.get_payload(reply.content)
    if not spec or payload is None:
        return reply
    pid = int(context.node_config.get("partition-id", 0))
    rng = (
        np.random.default_rng([int(cfg["seed"]), server_round, pid, _STREAM])
        if spec.get("seeded", True)
        else np.random.default_rng()
    )
    noised = privatize(payload, LocalSpec.from_dict(spec), rng)
    wire.put_payload(reply.content, noised, cfg.get("knowledge"))  # noise first, then encode
    return reply
