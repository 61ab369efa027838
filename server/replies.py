"""Checking the replies of a round: validation, rejection reasons, strikes and exclusion.

Every reply is read before fusion; a bad one is rejected with a reason
(``fedkd.errors.REJECT_REASONS``), counted per run and per client, and logged on one
line naming the client. A reply rejected for its payload (``PAYLOAD_REASONS``) is a
strike once the round is read (``settle``); ``server.max_strikes`` strikes exclude the
client from sampling. Clients rejected for NaN/Inf are remembered for the round
(``nonfinite``): when most of a round is non-finite after a fusion, the strategy blames
the knowledge it broadcast, not the clients (``server/fusion.py``).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord
from flwr.common.constant import ErrorCode

from fedkd.bounds import Bounds, check_magnitude
from fedkd.confusion import GLOBAL_CONFUSION, check_confusion
from fedkd.encoding import DecodeLimits
from fedkd.errors import PAYLOAD_REASONS, PayloadError
from fedkd.metrics_schema import NonFiniteMetric, check_metrics
from protocol import wire
from protocol.channel import measurement_of
from server import nodeloss

log = logging.getLogger("fedkd")
rounds_log = logging.getLogger("fedkd.rounds")  # run.log; the console only when verbose


def error_summary(reason: str) -> str:
    """The ClientApp's own exception message out of Flower's error reason (which wraps it
    in the Ray traceback: ``... ClientAppException occurred. Message: <message>'>``)."""
    if "Message: " in reason:
        reason = reason.rsplit("Message: ", 1)[1].removesuffix("'>")
    return " ".join(reason.split())


def validate_upload(payload: Any, kind: str, info: Any, bounds: Bounds) -> None:
    """PayloadError unless ``payload`` is of ``kind``, fits the run (``info``: a
    ``RunInfo``), holds only float32-range values and stays within ``bounds``."""
    if payload is None or payload.kind != kind:
        got = "nothing" if payload is None else payload.kind
        raise PayloadError(f"expected a '{kind}' payload, got {got}", "wrong_kind")
    payload.validate(
        num_classes=info.num_classes, num_public=info.num_public, feature_dim=info.feature_dim
    )
    for name, array in payload.to_arrays().items():
        with np.errstate(over="ignore"):
            in_range = (
                not np.issubdtype(array.dtype, np.floating)
                or np.isfinite(array.astype(np.float32)).all()
            )
        # float64 values beyond float32's range would turn into Inf once fused
        if not in_range:
            raise PayloadError(f"'{name}' has values outside the float32 range", "non_finite")
    check_magnitude(payload, bounds)


@dataclass
class Accepted:
    """One usable reply: its client, metrics, decoded payload and confusion counts."""

    cid: int
    metrics: dict[str, Any]
    payload: Any
    confusion: np.ndarray | None
    recorded: dict[str, Any] = field(default_factory=dict)  # what the recorder got


class ReplyChecker:
    """Reads replies into :class:`Accepted` ones and keeps the run's rejections and strikes."""

    def __init__(self, bounds: Bounds, decode_limits: DecodeLimits, num_classes: int) -> None:
        self.bounds = bounds
        self.decode_limits = decode_limits
        self.num_classes = num_classes
        self.client_of: dict[int, int] = {}  # node id -> client id
        # message id -> node id: the SuperLink answers for a lost node with its own error reply
        self.sent_to: dict[str, int] = {}
        self.dropped: Counter[str] = Counter()  # rejected replies of the run, by reason
        self.strikes: Counter[int] = Counter()  # client id -> replies rejected for their payload
        self.excluded: dict[int, int] = {}  # client id -> round it was excluded in
        # client id -> reason -> rounds: who dropped out, for summary.json
        self.dropped_clients: dict[int, dict[str, list[int]]] = {}
        self.rejected_now: dict[int, str] = {}  # this round: client id -> reason
        self.strikes_now: list[int] = []  # this round: clients whose payload was rejected
        self.nonfinite_now: set[int] = set()  # this round: rejected for NaN/Inf
        self.measured: dict[int, dict[str, float]] = {}  # client id -> measurement (recorder)

    @classmethod
    def for_run(
        cls, cfg: dict[str, Any], bounds: Bounds, num_classes: int, max_bytes: int | None
    ) -> ReplyChecker:
        """The checker of a run: replies may use the run's one knowledge encoding."""
        encoding = cfg["knowledge"]["encoding"]
        limits = DecodeLimits(encodings=(encoding,), max_columns=num_classes, max_bytes=max_bytes)
        return cls(bounds, limits, num_classes)

    def eligible(
        self, node_of: dict[int, int], server_round: int, max_strikes: int | None
    ) -> list[int]:
        """The clients not excluded, in id order (RuntimeError when none is left)."""
        ids = sorted(c for c in node_of if c not in self.excluded)
        if not ids:
            raise RuntimeError(
                f"round {server_round}: every client has been excluded after "
                f"server.max_strikes={max_strikes} rejected replies"
            )
        return ids

    def begin_round(self) -> None:
        self.rejected_now, self.strikes_now, self.nonfinite_now = {}, [], set()

    def client_of_reply(self, msg: Message) -> int:
        """The client a reply answers for; the SuperLink itself answers for a lost node."""
        node = msg.metadata.src_node_id
        if node not in self.client_of:
            node = self.sent_to.get(msg.metadata.reply_to_message_id, node)
        return self.client_of.get(node, -1)

    def drop(self, server_round: int, cid: int, reason: str, detail: str) -> None:
        """Reject one reply: counted by reason, logged on one line naming the client."""
        self.dropped[reason] += 1
        self.dropped_clients.setdefault(cid, {}).setdefault(reason, []).append(server_round)
        self.rejected_now[cid] = reason
        detail = " ".join(str(detail).split())[:300]  # Flower error reasons span lines
        # a lost Ray node has its own line (server.nodeloss): this one goes to run.log only
        quiet = detail.startswith(nodeloss.LOST_REASON)
        (rounds_log.info if quiet else log.warning)(
            "round %d: rejected reply of client %d (%s): %s", server_round, cid, reason, detail
        )
        if reason in PAYLOAD_REASONS and cid >= 0:
            self.strikes_now.append(cid)  # counted by settle, once the round is read

    def collect(
        self,
        server_round: int,
        replies: list[Message],
        sampled: list[int],
        timeout: float,
        validate: Callable[[int, int, Any], None] | None,
        max_payload_bytes: int | None,
        extra: Callable[[int], dict[str, Any]],
        recorder: Any,
    ) -> list[Accepted]:
        """A train round's usable replies, each one's metrics with ``extra(cid)`` added and
        given to ``recorder`` (with the client's measurement); a sampled client without a
        reply is rejected (``no_reply``). RuntimeError when every client failed."""
        self.begin_round()
        replied = {self.client_of_reply(m) for m in replies}
        for cid in sorted(set(sampled) - replied):
            self.drop(server_round, cid, "no_reply", f"nothing within {timeout:g}s")
        # a node that is gone is not a bug; a ClientApp that raises everywhere is
        errors = [
            m.error.reason
            for m in replies
            if m.has_error() and m.error.code != ErrorCode.NODE_UNAVAILABLE
        ]
        if replies and len(errors) == len(replies):
            raise RuntimeError(
                f"round {server_round}: every client failed; first error: {errors[0]}"
            )
        kept = []
        for reply in self.accept(server_round, replies, validate, max_payload_bytes):
            reply.metrics.update(extra(reply.cid))
            reply.recorded = {**self.measured.pop(reply.cid, {}), **reply.metrics}
            if recorder is not None:
                try:
                    recorder.client(server_round, reply.cid, reply.recorded)
                except Exception as err:  # the schema should make this impossible
                    detail = f"{type(err).__name__}: {err}"
                    self.drop(server_round, reply.cid, "bad_metrics", detail)
                    continue
            kept.append(reply)
        return kept

    def participation(
        self, sampled: Iterable[int], participants: Iterable[int], newly: list[int]
    ) -> dict[str, Any]:
        """Who was asked, who took part, who was rejected why and who was excluded now
        (``metrics.jsonl``)."""
        rejected = self.rejected_now
        return {
            "sampled": sorted(sampled),
            "participants": sorted(participants),
            "rejected_replies": dict(sorted(Counter(rejected.values()).items())),
            "rejected_clients": {str(c): r for c, r in sorted(rejected.items())},
            **({"excluded": sorted(newly)} if newly else {}),
        }

    def accept(
        self,
        server_round: int,
        replies: Iterable[Message],
        validate: Callable[[int, int, Any], None] | None,
        max_payload_bytes: int | None,
    ) -> list[Accepted]:
        """Every usable reply; the rest are rejected with a reason and a log line naming
        the client. A bad confusion array only loses itself."""
        accepted = []
        for msg in replies:
            cid = self.client_of_reply(msg)
            if msg.has_error():
                unavailable = msg.error.code == ErrorCode.NODE_UNAVAILABLE
                reason = "client_unavailable" if unavailable else "client_error"
                self.drop(server_round, cid, reason, error_summary(msg.error.reason))
                continue
            try:
                metrics, payload = self.read(msg, max_payload_bytes)
                if validate is not None:
                    validate(server_round, cid, payload)
                metrics["bytes_up"] = wire.payload_bytes(msg.content)
                # the researcher's measurement (protocol.channel): checked like the metrics,
                # recorded, never given to the strategy
                measured = check_metrics(measurement_of(msg.content), self.bounds.max_count)
            except PayloadError as err:
                self.drop(server_round, cid, err.reason, str(err))
                if err.reason == "non_finite" or isinstance(err, NonFiniteMetric):
                    self.nonfinite_now.add(cid)  # a NaN model: see server.fusion
                continue
            except Exception as err:  # nothing one reply does may stop the round
                self.drop(server_round, cid, "malformed", f"{type(err).__name__}: {err}")
                continue
            self.measured[cid] = measured
            confusion = self.confusion_of(server_round, cid, msg)
            accepted.append(Accepted(cid, metrics, payload, confusion))
        return accepted

    def read(self, msg: Message, max_payload_bytes: int | None) -> tuple[dict[str, Any], Any]:
        """The reply's metrics and decoded payload; PayloadError (with a reason) if unusable."""
        size = wire.reply_bytes(msg.content)
        if max_payload_bytes is not None and size > max_payload_bytes:
            raise PayloadError(
                f"reply carries {size} bytes of arrays, more than "
                f"server.max_payload_bytes={max_payload_bytes}",
                "too_large",
            )
        found = wire.get_record(msg.content, wire.METRICS, MetricRecord)
        if found is None:
            raise PayloadError("reply has no metrics record", "bad_metrics")
        metrics = check_metrics(found, self.bounds.max_count)
        try:
            payload = wire.get_payload(msg.content, self.decode_limits)
        except PayloadError:
            raise
        except (ValueError, TypeError, KeyError) as err:  # arrays Flower cannot deserialise
            raise PayloadError(
                f"knowledge record cannot be decoded: {err}".splitlines()[0], "malformed"
            ) from None
        return metrics, payload

    def confusion_of(self, server_round: int, cid: int, msg: Message) -> np.ndarray | None:
        """The reply's validated global-test confusion counts; a bad array: warning and None."""
        try:
            arrays = wire.get_eval_arrays(msg.content)
            if GLOBAL_CONFUSION not in arrays:
                return None
            return check_confusion(arrays[GLOBAL_CONFUSION], self.num_classes)
        except Exception as err:  # a bad measurement loses only itself
            log.warning(
                "round %d: ignored the confusion matrix of client %d: %s", server_round, cid, err
            )
            return None

    def settle(
        self, server_round: int, max_strikes: int | None, forgiven: Iterable[int] = ()
    ) -> list[int]:
        """Strike the clients whose payload was rejected this round, except ``forgiven``
        (victims of poisoned knowledge); exclude at ``max_strikes``. Returns the clients
        excluded now."""
        strikes, self.strikes_now = self.strikes_now, []
        forgiven = set(forgiven)
        newly = []
        for cid in strikes:
            if cid in forgiven:
                continue
            self.strikes[cid] += 1
            full = max_strikes is not None and self.strikes[cid] >= max_strikes
            if full and cid not in self.excluded:
                self.excluded[cid] = server_round
                newly.append(cid)
                log.warning(
                    "round %d: client %d excluded after %d rejected replies (server.max_strikes)",
                    server_round,
                    cid,
                    self.strikes[cid],
                )
        return newly

    def state_dict(self) -> dict[str, Any]:
        return {
            "rejected_replies": dict(self.dropped),
            "strikes": dict(self.strikes),
            "excluded": dict(self.excluded),
            "dropped_clients": {
                str(c): {r: list(rs) for r, rs in reasons.items()}
                for c, reasons in self.dropped_clients.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dropped = Counter(state["rejected_replies"])
        self.strikes = Counter({int(c): n for c, n in state["strikes"].items()})
        self.excluded = {int(c): int(r) for c, r in state["excluded"].items()}
        self.dropped_clients = {
            int(c): {r: [int(x) for x in rs] for r, rs in reasons.items()}
            for c, reasons in state.get("dropped_clients", {}).items()
        }
