"""The base class of every fedkd strategy: a Flower ``Strategy`` over knowledge.

A subclass says what the clients do (``plan``), what the server sends each of
them (``payload_for``, ``request_for``) and how uploads are fused (``fuse``);
the base class does sampling, message building, reply validation, byte
accounting and metric recording. One round is one exchange: the train reply
carries the client's evaluation, so ``configure_evaluate`` sends nothing except
for strategies with a server model to evaluate at the end (FedAvg).

The base class also adds ``confusion: true`` to the plan of the exchanges
whose evaluation ``logging.confusion_every`` selects, so every strategy gets
the mean client's confusion matrix without touching its own ``plan``.

Reliability: every reply is checked before fusion and a bad one is
rejected with a reason (``fedkd.errors.REJECT_REASONS``), logged on one line
naming the client and counted per round (``rejected_replies``); payload
rejections are strikes (``server.max_strikes`` excludes the client); a fusion
that leaves NaN/Inf is rolled back; ``state_dict``/``load_state_dict`` and
``checkpoint`` let a run be checkpointed and resumed (``server/checkpoint.py``).
"""

from __future__ import annotations

import copy
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedkd.bounds import Bounds, cap_uploads, cap_weights, check_magnitude, clip_uploads
from fedkd.confusion import GLOBAL_CONFUSION, check_confusion, confusion_due, mean_client_confusion
from fedkd.encoding import DecodeLimits
from fedkd.errors import PAYLOAD_REASONS, ConfigError, PayloadError
from fedkd.knowledge import Payload
from fedkd.metrics_schema import NonFiniteMetric, check_metrics
from fedkd.plan import Plan, PrivacySpec, TeachersSpec
from fedkd.privacy.noise import noise_rng, seeded_noise
from fedkd.sampling import sample_clients
from fedkd.strategy_options import SPECS, StrategySpec, check_strategy
from protocol import wire
from protocol.channel import measurement_of
from server import nodeloss
from server.checkpoint import (
    Checkpointer,
    discard_round,
    restore_clients,
    rng_state,
    save_clients,
)
from server.exchange import send_and_receive
from server.health import CollapseWatch
from server.privacy import PrivacyLedger, build_ledger, vote_ledger
from server.recorder import RunRecorder
from server.roster import Roster, discover

log = logging.getLogger("fedkd")
rounds_log = logging.getLogger("fedkd.rounds")  # run.log; the console only when verbose


@dataclass(frozen=True)
class RunInfo:
    """What the server knows about the run before it starts."""

    num_clients: int
    num_classes: int
    num_public: int
    input_shape: tuple[int, ...]
    feature_dim: int
    cfg: dict[str, Any]
    cfg_json: str


def error_summary(reason: str) -> str:
    """The ClientApp's own exception message out of Flower's error reason (which wraps it
    in the Ray traceback: ``... ClientAppException occurred. Message: <message>'>``)."""
    if "Message: " in reason:
        reason = reason.rsplit("Message: ", 1)[1].removesuffix("'>")
    return " ".join(reason.split())


class FusionError(RuntimeError):
    """Fusion produced unusable knowledge; the round keeps the previous knowledge."""


def check_finite_tree(name: str, value: Any) -> None:
    """FusionError if any float array in ``value`` (payloads, dicts, lists) is not finite."""
    if isinstance(value, Payload):
        value = value.to_arrays()
    if isinstance(value, np.ndarray):
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise FusionError(f"fused {name} contains NaN or Inf")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_finite_tree(f"{name}.{key}", item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_finite_tree(name, item)


class FedkdStrategy(Strategy):
    # the traits (fedkd.strategy_options.StrategySpec) come from SPECS[name]
    name: ClassVar[str] = ""
    upload_kind: ClassVar[str | None] = None  # fedkd.knowledge kind every reply must carry
    upload_space: ClassVar[str] = "logits"
    needs_public_set: ClassVar[bool] = False
    supports_central: ClassVar[bool] = False  # fuses with a plain mean: privacy=central applies
    personalised: ClassVar[bool] = False  # a different fused payload per client (KnFu)
    supports_swing: ClassVar[bool] = False  # uploads probabilities a Swing release can replace
    homogeneous_only: ClassVar[bool] = False  # averages weights: identical models everywhere
    subset_key: ClassVar[str] = ""  # strategy option holding the per-round subset size
    final_evaluation: ClassVar[bool] = False  # send one evaluate exchange after the last round

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = SPECS.get(cls.__dict__.get("name", ""))
        if spec is not None:  # a concrete strategy: its traits are its spec's
            for trait in StrategySpec.TRAITS:
                setattr(cls, trait, getattr(spec, trait))

    def __init__(
        self, info: RunInfo, recorder: RunRecorder | None = None, roster: Roster | None = None
    ) -> None:
        self.info = info
        self.cfg = info.cfg
        self.params: dict[str, Any] = info.cfg["strategy"]
        server = info.cfg["server"]
        self.fraction_train = float(server["fraction_train"])
        self.min_train_clients = int(server["min_train_clients"])
        limit = server.get("max_payload_bytes")
        self.max_payload_bytes = None if limit is None else int(limit)
        strikes = server.get("max_strikes")
        self.max_strikes = None if strikes is None else int(strikes)
        starved = server.get("max_starved_rounds")
        self.max_starved_rounds = None if starved is None else int(starved)
        self.starved_now = False  # this round: fewer than min_train_clients valid replies
        self.starved_run = 0  # consecutive such rounds
        self.node_loss: list[dict[str, Any]] = []  # summary.json rows (server.nodeloss)
        # the simulation's lost actors and placement (simulations.nodeloss); None: deployed
        self.cluster: Any = None
        self.stop_status = "stopped"  # with stop_reason: node_lost / starved (server.nodeloss)
        self.bounds = Bounds.from_config(info.cfg.get("bounds"))
        encoding = (info.cfg.get("knowledge") or {}).get("encoding", "float32")
        self.decode_limits = DecodeLimits(
            encodings=(encoding,),
            max_columns=info.num_classes,
            max_bytes=self.max_payload_bytes,
        )
        self._strikes_now: list[int] = []  # this round: clients whose payload was rejected
        self._nonfinite_now: set[int] = set()  # this round: rejected for NaN/Inf
        self._knowledge_before: dict[str, Any] | None = None  # before the last fusion
        self._poisoned_since: int | None = None  # round of the last rollback, while it lasts
        self.recorder = recorder
        self.round_timeout = float(server["round_timeout"])
        self.poll_interval = float(server.get("poll_interval", 0.05))
        self.seed = int(info.cfg["seed"])
        self.seeded_noise = seeded_noise(info.cfg)
        self.confusion_every = (info.cfg.get("logging") or {}).get("confusion_every", 0)
        self._round = 0
        self._bytes_down: dict[int, int] = {}  # client id -> bytes sent this round
        self.node_of: dict[int, int] = {}  # client (partition) id -> node id
        self.client_of: dict[int, int] = {}  # node id -> client id
        if roster is not None:
            self.use_roster(roster)
        self.dropped: Counter[str] = Counter()  # rejected replies of the run, by reason
        self.strikes: Counter[int] = Counter()  # client id -> replies rejected for their payload
        self.excluded: dict[int, int] = {}  # client id -> round it was excluded in
        self.fusion_failures = 0
        self._rejected_now: dict[int, str] = {}  # this round: client id -> reason
        self._measured: dict[int, dict[str, float]] = {}  # client id -> measurement (recorder only)
        self.checkpointer: Checkpointer | None = None  # set by run_server
        self.resume_from: dict[str, Any] | None = None  # a loaded checkpoint to continue from
        self.setup()
        self.privacy: PrivacyLedger | None = build_ledger(
            info.cfg, self.upload_kind, self.privacy_rows(), info.num_classes
        )
        if self.privacy is not None:  # label voting's GNMax counts toward budget_epsilon
            self.privacy.votes = vote_ledger(self)
        self.stop_reason: str | None = None
        self.health = CollapseWatch.from_config(info.cfg, info.num_classes)
        # client id -> reason -> rounds: who dropped out, for summary.json
        self.dropped_clients: dict[int, dict[str, list[int]]] = {}
        # message id -> node id: the SuperLink answers for a lost node with its own error reply
        self._sent_to: dict[str, int] = {}
        # who is who without the start-up handshake (set by the simulation launcher)
        self.find_roster: Callable[[Grid, float], Roster | None] | None = None

    # ---------------------------------------------------------------- hooks
    def setup(self) -> None:
        """Initialise strategy state (called at the end of ``__init__``)."""

    @classmethod
    def check_config(cls, cfg: dict[str, Any]) -> None:
        """Raise ConfigError for bad strategy options (``fedkd.strategy_options``, which the
        launchers run right after composing the config, before torch loads)."""
        check_strategy({**cfg, "strategy": {**cfg["strategy"], "name": cls.name}})

    @property
    def reducer(self) -> dict[str, Any]:
        """Keyword arguments selecting the configured reducer for fedkd.fusion functions."""
        return {
            "reducer": self.params.get("reducer", "mean"),
            "reducer_params": self.params.get("reducer_params") or {},
        }

    def plan(self, server_round: int) -> Plan:
        return Plan()

    def vote_round_bound(self) -> list[list[float]]:
        """``[z, count]`` pairs the most one more round of noisy label voting costs (GNMax);
        none by default."""
        return []

    def privacy_rows(self) -> int:
        """Rows of one upload (for the privacy cost of votes): classes by default."""
        return self.info.num_classes

    def central_mean(self, server_round: int, values: np.ndarray) -> np.ndarray:
        """``privacy=central``: the clipped, noised mean over clients (axis 0), fixed denominator."""
        assert self.privacy is not None and self.privacy.central is not None
        return self.privacy.mean(values, self.privacy.rng(self.seed, server_round))

    def central_class_mean(self, server_round: int, values: np.ndarray, counts: np.ndarray):
        """``privacy=central`` for per-class tables ``[K, C, D]``: ``(mean, present)``, each
        class averaged over a noised count of its holders (``noisy_class_mean``)."""
        assert self.privacy is not None and self.privacy.central is not None
        rng = self.privacy.rng(self.seed, server_round)
        mean, present, _ = self.privacy.class_mean(values, counts, rng)
        return mean, present

    @property
    def central(self) -> bool:
        return self.privacy is not None and self.privacy.central is not None

    def payload_for(self, server_round: int, client_id: int) -> Any | None:
        """The knowledge payload to send ``client_id`` this round (None: nothing)."""
        return None

    def request_for(self, server_round: int) -> dict[str, np.ndarray] | None:
        """Arrays every sampled client receives with its instructions (e.g. indices)."""
        return None

    def check_upload(self, server_round: int, client_id: int, payload: Any) -> None:
        """Extra strategy-specific checks on a validated upload."""

    def fuse(
        self, server_round: int, uploads: dict[int, Any], num_train: dict[int, int]
    ) -> dict[str, float]:
        """Fuse this round's uploads (client id -> payload); return diagnostics."""
        return {}

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything the strategy has learnt or counted so far, for checkpoints.

        A strategy with state of its own extends it, ``{**super().state_dict(), "x": ...}``,
        and restores its keys in ``load_state_dict``. Values are numpy arrays, knowledge
        payloads, dicts, lists and scalars (``server.checkpoint`` stores them without pickle).
        The server's random streams need no state: ``rng_for`` derives them from
        (seed, round, purpose).
        """
        return {
            "base": {
                "rejected_replies": dict(self.dropped),
                "strikes": dict(self.strikes),
                "excluded": dict(self.excluded),
                "fusion_failures": self.fusion_failures,
                "dropped_clients": {
                    str(c): {r: list(rs) for r, rs in reasons.items()}
                    for c, reasons in self.dropped_clients.items()
                },
                "stop_reason": self.stop_reason,
                "health": self.health.state_dict(),
                "node_loss": list(self.node_loss),
                "starved_run": self.starved_run,
            },
            **(
                {}
                if self.privacy is None
                else {
                    "privacy": {
                        "rounds": {str(c): n for c, n in self.privacy.rounds.items()},
                        "warned": self.privacy.warned,
                    }
                }
            ),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        base = state["base"]
        self.dropped = Counter(base["rejected_replies"])
        self.strikes = Counter({int(c): n for c, n in base["strikes"].items()})
        self.excluded = {int(c): int(r) for c, r in base["excluded"].items()}
        self.fusion_failures = int(base["fusion_failures"])
        self.dropped_clients = {
            int(c): {r: [int(x) for x in rs] for r, rs in reasons.items()}
            for c, reasons in base.get("dropped_clients", {}).items()
        }
        self.stop_reason = base.get("stop_reason")
        self.node_loss = list(base.get("node_loss", []))
        self.starved_run = int(base.get("starved_run", 0))
        if "health" in base:
            self.health.load_state_dict(base["health"])
        if self.privacy is not None and "privacy" in state:
            spent = state["privacy"]
            self.privacy.rounds = Counter({int(c): int(n) for c, n in spent["rounds"].items()})
            self.privacy.warned = bool(spent["warned"])

    # keys of state_dict() that are bookkeeping, not knowledge: not checked for NaN/Inf and
    # kept as they are when a failed fusion rolls the knowledge back (a privacy ledger
    # never forgets what was spent)
    NOT_KNOWLEDGE: ClassVar[tuple[str, ...]] = ("base", "ledger", "generator", "privacy")

    def _fuse_or_keep(
        self, server_round: int, uploads: dict[int, Any], num_train: dict[int, int]
    ) -> dict[str, float]:
        """``fuse``, then make sure no fused knowledge holds NaN/Inf; otherwise roll back."""
        before = copy.deepcopy(
            {k: v for k, v in self.state_dict().items() if k not in self.NOT_KNOWLEDGE}
        )
        try:
            # bounds.clip / bounds.weight_cap (fedkd.bounds); off: uploads and counts as they are
            uploads = cap_uploads(clip_uploads(uploads, self.bounds.clip), self.bounds.weight_cap)
            num_train = cap_weights(num_train, self.bounds.weight_cap)
            diagnostics = self.fuse(server_round, uploads, num_train)
            state = self.state_dict()
            for key in state:
                if key not in self.NOT_KNOWLEDGE:
                    check_finite_tree(key, state[key])
            self._knowledge_before = before
            return diagnostics
        except Exception as err:  # any failure of fusion keeps the last good knowledge
            self.fusion_failures += 1
            self.load_state_dict({**self.state_dict(), **before})
            detail = err if isinstance(err, FusionError) else f"{type(err).__name__}: {err}"
            detail = " ".join(str(detail).split())[:300]
            log.warning(
                "round %d: fusion skipped, previous knowledge kept: %s", server_round, detail
            )
            return {}

    # ------------------------------------------------------------ sampling
    def use_roster(self, roster: Roster) -> None:
        if roster.num_partitions != self.info.num_clients:
            raise ConfigError(
                f"the clients hold {roster.num_partitions} partitions but num_clients={self.info.num_clients}"
            )
        self.node_of, self.client_of = dict(roster.node_of), roster.client_of

    def sample(self) -> list[int]:
        """Client ids for this round: seeded, so the same seed samples the same clients."""
        ids = sorted(c for c in self.node_of if c not in self.excluded)
        if not ids:
            raise RuntimeError(
                f"round {self._round}: every client has been excluded after "
                f"server.max_strikes={self.max_strikes} rejected replies"
            )
        rng = self.rng_for(self._round, "sample")
        return sample_clients(ids, self.fraction_train, self.min_train_clients, rng)

    STREAMS = {"sample": 1, "public": 2, "vote_noise": 3}

    def rng_for(self, server_round: int, stream: str) -> np.random.Generator:
        """An independent seeded stream per (round, purpose): sampling more or fewer
        clients never changes which public samples a round uses."""
        return np.random.default_rng([self.seed, server_round, self.STREAMS[stream]])

    def noise_rng_for(self, server_round: int, stream: str) -> np.random.Generator:
        """Privacy noise (e.g. GNMax): OS entropy unless ``simulation.seeded_noise``
        (``fedkd.privacy.noise``), then the stream ``rng_for`` would give."""
        return noise_rng(self.seeded_noise, [self.seed, server_round, self.STREAMS[stream]])

    # ------------------------------------------------------ Flower Strategy
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round = server_round
        plan = self.plan(server_round)
        if self._confusion_due(self.eval_round(server_round)):
            plan = plan.with_(confusion=True)
        sampled = self.sample()
        if self.privacy is not None and self.privacy.local is not None:
            local = PrivacySpec(**self.privacy.local.to_dict(), seeded=self.seeded_noise)
            plan = plan.with_(privacy=local)
            self.privacy.charge(sampled)  # each sampled client releases once this round
        if self.privacy is not None and self.privacy.teachers is not None:
            teachers = TeachersSpec(**self.privacy.teachers, seeded=self.seeded_noise)
            plan = plan.with_(teachers=teachers)
            self.privacy.charge(sampled)
        request = self.request_for(server_round)
        messages = []
        self._bytes_down = {}
        for cid in sampled:
            content = RecordDict(
                {wire.CONFIG: wire.make_config(server_round, self.info.cfg_json, plan)}
            )
            payload = self.payload_for(server_round, cid)
            if payload is not None:
                wire.put_payload(content, payload, self.cfg.get("knowledge"))
            if request is not None:
                content[wire.REQUEST] = wire.arrays_to_record(request)
            self._bytes_down[cid] = wire.payload_bytes(content)
            messages.append(
                Message(
                    content=content, dst_node_id=self.node_of[cid], message_type=MessageType.TRAIN
                )
            )
        return messages

    def _valid_replies(
        self,
        server_round: int,
        replies: Iterable[Message],
        validate: Callable[[int, int, Any], None] | None,
    ):
        """(client id, metrics, payload, confusion counts or None) of every usable reply.

        The rest are rejected with a reason (``rejected_replies``) and a log line
        naming the client; a bad confusion array only loses itself.
        """
        accepted = []
        for msg in replies:
            cid = self._client_of_reply(msg)
            if msg.has_error():
                unavailable = msg.error.code == ErrorCode.NODE_UNAVAILABLE
                reason = "client_unavailable" if unavailable else "client_error"
                self._drop(server_round, cid, reason, error_summary(msg.error.reason))
                continue
            try:
                metrics, payload = self._read_reply(msg)
                if validate is not None:
                    validate(server_round, cid, payload)
                metrics["bytes_up"] = wire.payload_bytes(msg.content)
                # the researcher's measurement (protocol.channel): checked like the metrics,
                # recorded, never given to the strategy
                measured = check_metrics(measurement_of(msg.content), self.bounds.max_count)
            except PayloadError as err:
                self._drop(server_round, cid, err.reason, str(err))
                if err.reason == "non_finite" or isinstance(err, NonFiniteMetric):
                    self._nonfinite_now.add(cid)  # a NaN model: see _poisoned
                continue
            except Exception as err:  # nothing one reply does may stop the round
                self._drop(server_round, cid, "malformed", f"{type(err).__name__}: {err}")
                continue
            self._measured[cid] = measured
            accepted.append((cid, metrics, payload, self._confusion_of(server_round, cid, msg)))
        return accepted

    def _read_reply(self, msg: Message) -> tuple[dict[str, Any], Any]:
        """The reply's metrics and decoded payload; PayloadError (with a reason) if unusable."""
        size = wire.reply_bytes(msg.content)
        if self.max_payload_bytes is not None and size > self.max_payload_bytes:
            raise PayloadError(
                f"reply carries {size} bytes of arrays, more than "
                f"server.max_payload_bytes={self.max_payload_bytes}",
                "too_large",
            )
        if wire.METRICS not in msg.content.metric_records:
            raise PayloadError("reply has no metrics record", "bad_metrics")
        metrics = check_metrics(msg.content.metric_records[wire.METRICS], self.bounds.max_count)
        try:
            payload = wire.get_payload(msg.content, self.decode_limits)
        except PayloadError:
            raise
        except (ValueError, TypeError, KeyError) as err:  # arrays Flower cannot deserialise
            raise PayloadError(
                f"knowledge record cannot be decoded: {err}".splitlines()[0], "malformed"
            ) from None
        return metrics, payload

    def _confusion_of(self, server_round: int, cid: int, msg: Message) -> np.ndarray | None:
        """The reply's validated global-test confusion counts; a bad array: warning and None."""
        try:
            arrays = wire.get_eval_arrays(msg.content)
            if GLOBAL_CONFUSION not in arrays:
                return None
            return check_confusion(arrays[GLOBAL_CONFUSION], self.info.num_classes)
        except Exception as err:  # a bad measurement loses only itself
            log.warning(
                "round %d: ignored the confusion matrix of client %d: %s", server_round, cid, err
            )
            return None

    def _validate_upload(self, server_round: int, client_id: int, payload: Any) -> None:
        if self.upload_kind is None:
            return
        if payload is None or payload.kind != self.upload_kind:
            got = "nothing" if payload is None else payload.kind
            raise PayloadError(f"expected a '{self.upload_kind}' payload, got {got}", "wrong_kind")
        payload.validate(
            num_classes=self.info.num_classes,
            num_public=self.info.num_public,
            feature_dim=self.info.feature_dim,
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
        check_magnitude(payload, self.bounds)
        self.check_upload(server_round, client_id, payload)

    def _client_of_reply(self, msg: Message) -> int:
        """The client a reply answers for; the SuperLink itself answers for a lost node."""
        node = msg.metadata.src_node_id
        if node not in self.client_of:
            node = self._sent_to.get(msg.metadata.reply_to_message_id, node)
        return self.client_of.get(node, -1)

    def _drop(self, server_round: int, cid: int, reason: str, detail: str) -> None:
        """Reject one reply: counted by reason, logged on one line naming the client."""
        self.dropped[reason] += 1
        self.dropped_clients.setdefault(cid, {}).setdefault(reason, []).append(server_round)
        self._rejected_now[cid] = reason
        detail = " ".join(str(detail).split())[:300]  # Flower error reasons span lines
        # a lost Ray node has its own line (server.nodeloss): this one goes to run.log only
        quiet = detail.startswith(nodeloss.LOST_REASON)
        (rounds_log.info if quiet else log.warning)(
            "round %d: rejected reply of client %d (%s): %s", server_round, cid, reason, detail
        )
        if reason in PAYLOAD_REASONS and cid >= 0:
            self._strikes_now.append(cid)  # counted by _settle_strikes, once the round is read

    def _settle_strikes(self, server_round: int, forgiven: set[int] = frozenset()) -> None:
        """Strike the clients whose payload was rejected this round, except ``forgiven``
        (victims of poisoned knowledge, see ``_poisoned``); exclude at max_strikes."""
        strikes, self._strikes_now = self._strikes_now, []
        for cid in strikes:
            if cid in forgiven:
                continue
            self.strikes[cid] += 1
            if (
                self.max_strikes is not None
                and self.strikes[cid] >= self.max_strikes
                and cid not in self.excluded
            ):
                self.excluded[cid] = server_round
                log.warning(
                    "round %d: client %d excluded after %d rejected replies (server.max_strikes)",
                    server_round,
                    cid,
                    self.strikes[cid],
                )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self._rejected_now = {}
        self._strikes_now = []
        self._nonfinite_now = set()
        excluded_before = set(self.excluded)
        replied = {self._client_of_reply(m) for m in replies}
        for cid in sorted(set(self._bytes_down) - replied):
            self._drop(server_round, cid, "no_reply", f"nothing within {self.round_timeout:g}s")
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
        accepted = self._valid_replies(server_round, replies, self._validate_upload)
        uploads, num_train = {}, {}
        eval_round = self.eval_round(server_round)
        recorded = []
        watched: dict[int, dict[str, Any]] = {}  # client id -> what the recorder gets
        for cid, metrics, payload, confusion in accepted:
            metrics["bytes_down"] = self._bytes_down.get(cid, 0)
            metrics["eval_round"] = eval_round
            if self.privacy is not None:
                metrics["epsilon"] = self.privacy.epsilon(cid)
            watched[cid] = {**self._measured.pop(cid, {}), **metrics}
            if self.recorder is not None:
                try:
                    self.recorder.client(server_round, cid, watched[cid])
                except Exception as err:  # the schema should make this impossible
                    self._drop(server_round, cid, "bad_metrics", f"{type(err).__name__}: {err}")
                    continue
            uploads[cid] = payload
            num_train[cid] = int(metrics.get("num_train", 1))
            recorded.append((cid, metrics, payload, confusion))
        accepted = recorded
        self._record_confusion(eval_round, accepted)
        poisoned = self._poisoned(server_round, replies)
        self._settle_strikes(server_round, poisoned)
        # health reads the researcher's view (the measurement too): logged, never fused
        collapse = self.health.update(
            eval_round, {cid: watched[cid].get("global_test_acc") for cid, *_ in accepted}
        )
        if collapse is not None:
            log.warning("%s", collapse)
            if self.recorder is not None:
                self.recorder.server_extra(server_round, {"collapse_warning": collapse})
        reasons = Counter(self._rejected_now.values())
        diagnostics: dict[str, float] = {
            "replies": float(len(accepted)),
            "rejected": float(len(self._rejected_now)),
        }
        if self.recorder is not None:
            participation: dict[str, Any] = {
                "sampled": sorted(self._bytes_down),
                "participants": sorted(uploads),
                "rejected_replies": dict(sorted(reasons.items())),
                "rejected_clients": {str(c): r for c, r in sorted(self._rejected_now.items())},
            }
            newly = sorted(set(self.excluded) - excluded_before)
            if newly:
                participation["excluded"] = newly
            self.recorder.server_extra(server_round, participation)
        if poisoned:
            diagnostics["knowledge_rolled_back"] = 1.0
        elif len(accepted) < self.min_train_clients:
            self.starved_now = True
            log.warning(
                "round %d: %d valid replies < min_train_clients=%d; knowledge not updated",
                server_round,
                len(accepted),
                self.min_train_clients,
            )
        elif self.upload_kind is not None:
            failures = self.fusion_failures
            diagnostics.update(self._fuse_or_keep(server_round, uploads, num_train))
            if self.central and self.fusion_failures == failures:
                # the noised aggregate is released: every client pays
                self.privacy.charge(sorted(self.node_of))
        if self.privacy is not None:
            diagnostics["epsilon"] = self.privacy.max_epsilon()
            if self.seeded_noise:  # beside epsilon everywhere it is shown: not a guarantee
                diagnostics["seeded_noise"] = 1.0
        return None, MetricRecord(diagnostics)

    def _poisoned(self, server_round: int, replies: list[Message]) -> set[int]:
        """Clients not to strike because the knowledge they received is to blame.

        When most replies of a round are rejected for NaN/Inf (``non_finite`` knowledge,
        or NaN/Inf metrics: ``bad_metrics`` of a model that turned NaN) after a fusion, the
        broadcast knowledge made the honest models NaN, not the clients: the knowledge is
        rolled back to what it was before that fusion, this round does not fuse, and the
        clients rejected for ``non_finite`` get no strike, in this round and in the
        following ones while most replies stay non-finite (their models stay broken).
        """
        victims = set(self._nonfinite_now)
        answered = sum(1 for m in replies if not m.has_error())
        if 2 * len(victims) <= answered:
            self._poisoned_since = None
            return set()
        if self._knowledge_before is not None:
            self.load_state_dict({**self.state_dict(), **self._knowledge_before})
            self._knowledge_before = None
            self._poisoned_since = server_round
            log.warning(
                "round %d: %d of %d replies non-finite after the last fusion: knowledge rolled "
                "back to before it, no strikes",
                server_round,
                len(victims),
                answered,
            )
        elif self._poisoned_since is None:
            return set()  # no fusion to blame: the clients are
        # the models the poisoned knowledge broke stay broken: not their clients' fault
        return victims

    def budget_allows(self, server_round: int) -> bool:
        """False when another round would push a client past ``privacy.budget_epsilon``
        and the run is set to stop; with ``on_budget: warn`` it warns once and goes on."""
        if self.privacy is None or not self.privacy.exhausted(
            sorted(self.node_of), self.vote_round_bound()
        ):
            return True
        budget = self.privacy.budget
        if self.privacy.on_budget == "warn":
            if not self.privacy.warned:
                log.warning(
                    "round %d: privacy budget epsilon=%g exceeded; going on", server_round, budget
                )
                self.privacy.warned = True
            return True
        self.stop_reason = f"privacy budget epsilon={budget:g} reached before round {server_round}"
        log.warning("stopping: %s", self.stop_reason)
        return False

    @staticmethod
    def require_finite(name: str, array: np.ndarray) -> np.ndarray:
        """Fused knowledge must be finite; raising keeps the previous round's knowledge."""
        if not np.isfinite(array).all():
            raise FusionError(f"fused {name} contains NaN or Inf")
        return array

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self.final_evaluation or server_round != int(self.cfg["num_rounds"]):
            return []
        plan = Plan(confusion=self._confusion_due(server_round))
        messages = []
        for cid in sorted(self.node_of):
            content = RecordDict(
                {wire.CONFIG: wire.make_config(server_round, self.info.cfg_json, plan)}
            )
            payload = self.payload_for(server_round + 1, cid)
            if payload is not None:
                wire.put_payload(content, payload, self.cfg.get("knowledge"))
            messages.append(
                Message(
                    content=content,
                    dst_node_id=self.node_of[cid],
                    message_type=MessageType.EVALUATE,
                )
            )
        return messages

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        self._strikes_now = []
        accepted = self._valid_replies(server_round, replies, None)
        self._settle_strikes(server_round)
        for cid, metrics, _, _ in accepted:
            metrics.pop("bytes_up", None)
            if self.recorder is not None:
                self.recorder.client(server_round, cid, {**self._measured.pop(cid, {}), **metrics})
        self._record_confusion(server_round, accepted)
        return MetricRecord({"replies": float(len(accepted))}) if accepted else None

    # ------------------------------------------------------- confusion matrix
    def eval_round(self, server_round: int) -> int:
        """The round whose models a train reply of ``server_round`` evaluates."""
        return server_round - 1 if self.plan(server_round).eval_received else server_round

    def _confusion_due(self, eval_round: int) -> bool:
        """Whether that evaluation should carry confusion counts (``logging.confusion_every``)."""
        num_rounds = int(self.cfg["num_rounds"])
        last = num_rounds if self.final_evaluation else self.eval_round(num_rounds)
        return confusion_due(self.confusion_every, eval_round, last)

    def _record_confusion(self, eval_round: int, accepted: list) -> None:
        """The mean client's matrix of this evaluation, for TensorBoard and confusion.json."""
        counts = {cid: conf for cid, _, _, conf in accepted if conf is not None}
        if counts and self.recorder is not None:
            mean = mean_client_confusion([counts[c] for c in sorted(counts)])
            self.recorder.confusion(eval_round, counts, mean)

    def summary(self) -> None:
        log.info("strategy %s: %s", self.name, self.params)

    # ------------------------------------------------------------ checkpoints
    def checkpoint(self, grid: Grid, server_round: int, timeout: float) -> bool:
        """Clients save their state, then the server writes its checkpoint (atomically).

        Any failure is one error line and leaves the previous checkpoint the good one.
        """
        assert self.checkpointer is not None
        keep = self.checkpointer.last_round
        error = save_clients(
            grid, self.node_of, self.checkpointer.clients_folder, server_round, keep, timeout
        )
        if error is not None:
            discard_round(self.checkpointer.clients_folder, sorted(self.node_of), server_round)
            log.error(
                "checkpoint of round %d not written: %s; the last good checkpoint is %s",
                server_round,
                error,
                f"round {keep}" if keep else "none",
            )
            return False
        state = {
            "strategy_name": self.name,
            "strategy": self.state_dict(),
            "recorder": None if self.recorder is None else self.recorder.state_dict(),
            "rng": rng_state(),
        }
        return self.checkpointer.write(server_round, state, sorted(self.node_of))

    # ------------------------------------------------------------ the loop
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run ``num_rounds`` rounds of one exchange each (Flower's loop sends two)."""
        self.summary()
        result = Result()
        if not self.node_of:
            found = self.find_roster(grid, timeout) if self.find_roster is not None else None
            self.use_roster(found or discover(grid, timeout, expected=self.info.num_clients))
        eval_lag = 1 if self.final_evaluation else 0
        empty = ArrayRecord()
        first = 1
        if self.resume_from is not None and self.checkpointer is not None:
            done = int(self.resume_from["round"])
            restore_clients(grid, self.node_of, self.checkpointer.clients_folder, done, timeout)
            log.info("resumed from the checkpoint of round %d", done)
            first = done + 1
        for rnd in range(first, num_rounds + 1):
            if not self.budget_allows(rnd):
                break
            started = time.perf_counter()
            messages = list(self.configure_train(rnd, empty, ConfigRecord(), grid))
            replies = send_and_receive(grid, messages, timeout, self.poll_interval)
            # the grid has set each message's id while pushing it
            self._sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
            _, metrics = self.aggregate_train(rnd, replies)
            if metrics is not None:
                result.train_metrics_clientapp[rnd] = metrics
                if self.recorder is not None:
                    self.recorder.server(
                        rnd, {**dict(metrics), "round_time_s": time.perf_counter() - started}
                    )
            nodeloss.after_round(self, rnd)
            if self.recorder is not None:
                self.recorder.end_round(rnd, complete_upto=rnd - eval_lag)
            if self.stop_reason is not None:
                break  # lost node or starved: no checkpoint of this round, the last one stays
            if self.checkpointer is not None and self.checkpointer.due(rnd):
                self.checkpoint(grid, rnd, timeout)
        if self.stop_reason is not None:
            return result
        evaluate = self.configure_evaluate(num_rounds, empty, ConfigRecord(), grid)
        if evaluate:
            metrics = self.aggregate_evaluate(
                num_rounds, send_and_receive(grid, evaluate, timeout, self.poll_interval)
            )
            if metrics is not None:
                result.evaluate_metrics_clientapp[num_rounds] = metrics
        return result
