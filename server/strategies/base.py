"""The base class of every fedkd strategy: a Flower ``Strategy`` over knowledge.

A subclass says what the clients do (``plan``), what the server sends each of them
(``payload_for``, ``request_for``), what else an upload must satisfy
(``check_upload``), how uploads are fused (``fuse``) and what it has learnt
(``state_dict``/``load_state_dict``). The base class runs the rounds (``start``: one
exchange a round, the train reply carrying the client's evaluation; an evaluate
exchange only for strategies with a server model to evaluate at the end, FedAvg) and
hands each job to one collaborator: a round's messages and replies and the round in
progress (``server/rounds.py``), reply checking, strikes and exclusion
(``server/replies.py``), guarded fusion and rollback (``server/fusion.py``), the
privacy ledger and central noise (``server/strategy_privacy.py``), seeded streams
and sampling (``server/streams.py``), the stop status and the checkpointed counts
(``server/status.py``), confusion matrices (``server/confusion.py``) and checkpoints
(``server/checkpoint.py``). docs/architecture.md describes the whole server.

A subclass declares its own bookkeeping state keys (``bookkeeping``: kept as they are
when knowledge is rolled back, never checked for NaN) and its seeded random streams
(``streams``); ``server/traits.py`` merges them over the class hierarchy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedkd.bounds import Bounds
from fedkd.plan import Plan
from fedkd.privacy.accounting import Ledger, Release
from fedkd.privacy.noise import seeded_noise
from fedkd.strategy_options import check_strategy
from server import nodeloss, rounds
from server.checkpoint import Checkpointer
from server.confusion import ConfusionCollector
from server.fusion import FusionError, FusionGuard, require_finite
from server.health import CollapseWatch
from server.recorder import RunRecorder
from server.replies import ReplyChecker, error_summary, validate_upload
from server.roster import Roster, discover
from server.rounds import RoundState
from server.settings import RunInfo, ServerSettings
from server.status import RunStatus
from server.strategy_privacy import StrategyPrivacy
from server.streams import Streams
from server.traits import StrategyTraits

__all__ = ["FedkdStrategy", "FusionError", "RunInfo", "error_summary", "require_finite"]
log = logging.getLogger("fedkd")


def _replies(name: str) -> property:
    """What the reply checker keeps, read (and set by tests and the fuzzer) on the strategy."""
    return property(lambda s: getattr(s.replies, name), lambda s, v: setattr(s.replies, name, v))


class FedkdStrategy(StrategyTraits, Strategy):
    def __init__(
        self, info: RunInfo, recorder: RunRecorder | None = None, roster: Roster | None = None
    ) -> None:
        self.info, self.cfg, self.params = info, info.cfg, info.cfg["strategy"]
        server = info.cfg["server"]
        # the server section's values as attributes (tests and the fuzzer set some)
        vars(self).update(vars(ServerSettings.from_config(server)))
        self.cluster: Any = None  # the simulation's lost actors (simulations.nodeloss)
        self.bounds = Bounds.from_config(info.cfg["bounds"])
        self.replies = ReplyChecker.for_run(
            info.cfg, self.bounds, info.num_classes, self.max_payload_bytes
        )
        self.guard = FusionGuard(self, self.bounds)
        self.recorder = recorder
        self.seed, self.seeded_noise = int(info.cfg["seed"]), seeded_noise(info.cfg)
        self.random = Streams(self.seed, self.STREAMS, self.seeded_noise)
        num_rounds = int(self.cfg["num_rounds"])
        self.confusions = ConfusionCollector(
            info.cfg["logging"]["confusion_every"],
            lambda: num_rounds if self.final_evaluation else self.eval_round(num_rounds),
        )
        self.current = RoundState()  # the round in progress (server.rounds)
        self.node_of: dict[int, int] = {}  # client (partition) id -> node id
        # client id -> training samples it last reported: the order messages are pushed in
        self.workload: dict[int, int] = {}
        if roster is not None:
            self.use_roster(roster)
        self.checkpointer: Checkpointer | None = None  # set by run_server
        self.resume_from: dict[str, Any] | None = None  # a loaded checkpoint to continue from
        self.ledger = Ledger()  # every release of the run (privacy group, label voting's GNMax)
        self.setup()
        self.dp = StrategyPrivacy.for_strategy(self)  # the ledger, central noise
        self.privacy = self.dp.ledger  # what rounds charge (None without privacy)
        self.health = CollapseWatch.from_config(info.cfg, info.num_classes)
        self.status = RunStatus(self.replies, self.guard, self.health)  # stop reason, counts
        # who is who without the start-up handshake (set by the simulation launcher)
        self.find_roster: Callable[[Grid, float], Roster | None] | None = None

    dropped, strikes, excluded = _replies("dropped"), _replies("strikes"), _replies("excluded")
    dropped_clients, client_of = _replies("dropped_clients"), _replies("client_of")
    decode_limits = _replies("decode_limits")  # what a reply's knowledge may decode to
    fusion_failures = property(lambda self: self.guard.failures)
    require_finite = staticmethod(require_finite)

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
        p = self.params
        return {
            "reducer": p.get("reducer", "mean"),
            "reducer_params": p.get("reducer_params") or {},
        }

    def plan(self, server_round: int) -> Plan:
        return Plan()

    def vote_round_bound(self) -> list[Release]:
        """The releases the most one more round of noisy label voting costs (GNMax)."""
        return []

    def privacy_rows(self) -> int:
        """Rows of one upload (for the privacy cost of votes): classes by default."""
        return self.info.num_classes

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
        """Fuse this round's uploads (client id -> payload); return diagnostics. Fusion
        replaces the objects holding knowledge, never writes into their arrays
        (``server.fusion`` rolls back to the state dict taken before it)."""
        return {}

    def summary(self) -> None:
        log.info("strategy %s: %s", self.name, self.params)

    # --------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything the strategy has learnt or counted so far, for checkpoints.

        A strategy with state of its own extends it, ``{**super().state_dict(), "x": ...}``,
        restores its keys in ``load_state_dict`` and names the keys that are bookkeeping,
        not knowledge, in ``bookkeeping``. Values are numpy arrays, knowledge payloads,
        dicts, lists and scalars (``server.checkpoint`` stores them without pickle).
        """
        return {"base": self.status.state_dict(), "privacy": self.dp.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.status.load_state_dict(state["base"])  # counts and reasons (server.status)
        self.dp.load_state_dict(state["privacy"])  # the releases and the budget's state

    # ------------------------------------------------------------- clients
    def use_roster(self, roster: Roster) -> None:
        roster.check(self.info.num_clients)
        self.node_of, self.client_of = dict(roster.node_of), roster.client_of

    def eval_round(self, server_round: int) -> int:
        """The round whose models a train reply of ``server_round`` evaluates."""
        return server_round - 1 if self.plan(server_round).eval_received else server_round

    # ------------------------------------------------------ Flower Strategy
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = RoundState(server_round)
        return rounds.train_messages(self, self.current)

    def validate_upload(self, server_round: int, client_id: int, payload: Any) -> None:
        """``server.replies.validate_upload``, then the strategy's own ``check_upload``."""
        if self.upload_kind is not None:
            validate_upload(payload, self.upload_kind, self.info, self.bounds)
            self.check_upload(server_round, client_id, payload)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return None, rounds.close_train(self, server_round, replies, self.current)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return rounds.evaluate_messages(self, server_round)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return rounds.close_evaluate(self, server_round, replies)

    def budget_allows(self, server_round: int) -> bool:
        """Whether the privacy budget allows ``server_round`` (``RunStatus.budget_allows``)."""
        bound = self.vote_round_bound()
        return self.status.budget_allows(self.privacy, server_round, sorted(self.node_of), bound)

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
        result, first, record = Result(), 1, self.recorder
        if not self.node_of:
            found = self.find_roster(grid, timeout) if self.find_roster is not None else None
            self.use_roster(found or discover(grid, timeout, expected=self.info.num_clients))
        if self.resume_from is not None and self.checkpointer is not None:
            first = int(self.resume_from["round"]) + 1
            self.checkpointer.restore(grid, self.node_of, first - 1, timeout)
        for rnd in range(first, num_rounds + 1):
            if not self.budget_allows(rnd):
                break
            rounds.train_exchange(self, grid, rnd, timeout, result)
            nodeloss.after_round(self, rnd)
            if record is not None:
                record.end_round(rnd, complete_upto=rnd - (1 if self.final_evaluation else 0))
            if self.status.stop_reason is not None:
                break  # lost node or starved: no checkpoint of this round, the last one stays
            if self.checkpointer is not None and self.checkpointer.due(rnd):
                self.checkpointer.save(grid, self, rnd, timeout)  # clients, then the server
        if self.status.stop_reason is None:
            rounds.evaluate_exchange(self, grid, num_rounds, timeout, result)
        return result
