"""The client-side privacy mod: the client's floor, then noise on every outgoing payload.

It wraps the ClientApp (``ClientApp(mods=[privacy_mod])``). Before a train round runs,
the plan is held against the client's own floor (:class:`fedkd.privacy.floor.Floor`): a
plan weaker than the floor (too little noise, a mechanism the client does not accept,
seeded noise, un-noised knowledge when ``none`` is not accepted) gets an error reply
naming why, and nothing the client knows leaves. After the round ran, the reply's
knowledge payload (public-set logits or probabilities, per-class logits and their
counts, prototypes, votes, weights) is replaced by
:func:`fedkd.privacy.release.privatize` under the spec the server put in the plan
(``Plan.privacy``). The client's own model is untouched: only what leaves is noised.

Where the floor comes from:

- **deployment** (a SuperNode): its node config (``privacy-mechanisms``,
  ``privacy-min-noise-multiplier``, ``privacy-max-clip``, ``privacy-max-vote-epsilon``),
  with the node's own copy of ``configs/config.yaml``'s ``privacy_floor`` for keys it
  does not set: never the server's message. Seeded noise is always refused.
- **simulation** (the launcher marks its Ray workers with ``FEDKD_SIMULATION=1``): the run
  config's ``privacy_floor`` section, and seeded noise only with the run config's
  ``simulation.seeded_noise=true``.

Noise comes from OS entropy (``fedkd.privacy.noise``); seeded by (seed, round, client)
only where the plan says ``seeded`` and the floor allows it.

Last, under privacy, the reply's metrics are split (:mod:`protocol.channel`): the strategy's
``metrics`` keep only what is not derived from private data; losses, accuracies, sizes and
timing go to the researcher's ``measurement`` record (simulation) or stay on the node
(deployment, unless it opts in). This applies to train and evaluate replies and to the
start-up handshake.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from functools import lru_cache
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MessageType
from flwr.common.constant import ErrorCode

from clients.simulation_mark import SIMULATION_ENV, in_simulation  # noqa: F401 (re-exported)
from fedkd.errors import ConfigError
from fedkd.plan import Plan, PlanError
from fedkd.privacy.floor import Floor
from fedkd.privacy.noise import noise_rng, seeded_noise
from fedkd.privacy.release import LocalSpec, privatize
from protocol import channel, wire

_STREAM = 7  # keeps the noise stream apart from the batch-order generator


@lru_cache(maxsize=1)
def packaged_floor() -> dict[str, Any]:
    """``privacy_floor`` of this node's own ``configs/config.yaml`` (a deployment's defaults)."""
    from omegaconf import OmegaConf

    from fedkd.config import config_dir

    section = OmegaConf.load(config_dir() / "config.yaml").get("privacy_floor")
    return dict(OmegaConf.to_container(section)) if section is not None else {}


def client_floor(context: Context, cfg: Mapping[str, Any]) -> tuple[Floor, bool]:
    """(this client's floor, whether seeded noise is allowed); ConfigError if malformed."""
    if in_simulation():
        section = cfg.get("privacy_floor")
        if section is None:
            raise ConfigError("the run config has no privacy_floor section")
        return Floor.from_section(section), seeded_noise(cfg)
    return Floor.from_node_config(context.node_config, packaged_floor()), False


def refusal(message: Message, context: Context) -> str | None:
    """Why this client refuses the train message's plan (one line), or None."""
    return _refusal(message, context)[0]


FloorOrError = tuple[Floor, bool] | ConfigError  # client_floor's answer, or why it has none


def _floor(context: Context, cfg: Mapping[str, Any]) -> FloorOrError:
    try:
        return client_floor(context, cfg)
    except ConfigError as err:
        return err


_PLAN_DICTS: dict[int, tuple[Plan, dict[str, Any]]] = {}  # id -> (plan, its wire form)
_PLAN_DICTS_MAX = 64


def _plan_dict(plan: Plan) -> dict[str, Any]:
    """``plan.to_dict()`` once per plan object (``wire.read_config`` hands out one per
    distinct config record): the floor only reads it. Keyed by identity, the plan kept
    beside it so its id cannot be reused meanwhile."""
    hit = _PLAN_DICTS.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit[1]
    if len(_PLAN_DICTS) >= _PLAN_DICTS_MAX:
        _PLAN_DICTS.clear()
    wire_form = plan.to_dict()
    _PLAN_DICTS[id(plan)] = (plan, wire_form)
    return wire_form


def _refusal(message: Message, context: Context) -> tuple[str | None, FloorOrError | None]:
    """(``refusal``'s answer, the floor it held the plan against: None if it got no floor)."""
    try:
        _, cfg, plan = wire.read_config(message.content)
    except PlanError as err:
        return f"malformed plan: {err}", None
    except (KeyError, ValueError, TypeError) as err:
        return f"unreadable plan ({type(err).__name__}: {err})", None
    try:
        floor = _floor(context, cfg)
        if isinstance(floor, ConfigError):
            return str(floor), floor
        return floor[0].refusal(_plan_dict(plan), seeded_allowed=floor[1]), floor
    except (KeyError, ValueError, TypeError) as err:
        return f"unreadable plan ({type(err).__name__}: {err})", None


def _accepts_none(floor: FloorOrError) -> bool:
    """Whether the client's floor accepts un-noised releases (a malformed floor: no)."""
    return not isinstance(floor, ConfigError) and "none" in floor[0].mechanisms


def privacy_mod(
    message: Message, context: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """The floor, then noise and the metrics split (module docstring).

    The message's config is decoded once (``wire.read_config`` caches it) and the floor
    is built once per message: the refusal and the split share it.
    """
    kind = message.metadata.message_type
    floor: FloorOrError | None = None
    if kind == MessageType.TRAIN:
        why, floor = _refusal(message, context)
        if why is not None:
            pid = context.node_config.get("partition-id", "?")
            kind_of_refusal = "" if why.startswith("malformed plan") else " (privacy floor)"
            reason = f"client {pid} refuses the plan{kind_of_refusal}: {why}"
            error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
            return Message(error, reply_to=message)
    reply = call_next(message, context)
    if reply.has_error() or kind not in (
        MessageType.TRAIN,
        MessageType.EVALUATE,
        MessageType.QUERY,
    ):
        return reply  # query.save_state / restore_state carry no private data
    server_round, cfg, plan = 0, {}, Plan()
    # the handshake may come without a config
    if wire.get_record(message.content, wire.CONFIG, ConfigRecord) is not None:
        server_round, cfg, plan = wire.read_config(message.content)
    if kind == MessageType.TRAIN and plan.privacy is not None:
        spec = plan.privacy
        payload = wire.get_payload(reply.content)
        if payload is not None:
            pid = int(context.node_config.get("partition-id", 0))
            key = [int(cfg["seed"]), server_round, pid, _STREAM]
            noised = privatize(
                payload, LocalSpec.from_dict(asdict(spec)), noise_rng(spec.seeded, key)
            )
            wire.put_payload(reply.content, noised, cfg["knowledge"])  # noise, then encode
    if floor is None:
        floor = _floor(context, cfg)
    if channel.private_round(plan, cfg, _accepts_none(floor)):
        channel.split(
            reply.content, channel.shares_measurement(context.node_config, in_simulation())
        )
    return reply
