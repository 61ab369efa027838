"""How a run stands besides its knowledge: why it stopped, and what a checkpoint keeps of it.

A run stops early for one of three reasons, each a ``stop_status`` and a one-line
``stop_reason`` (summary.json; the launcher prints the reason): a lost simulation node
under ``simulation.on_node_loss: fail`` (``node_lost``) and too many starved rounds in
a row (``starved``), both read after each round by ``server/nodeloss.py``, and the
privacy budget (``stopped``, :meth:`RunStatus.budget_allows`). The status also holds
the ``node_loss`` rows of summary.json and the count of starved rounds in a row.

Its ``state_dict`` is the checkpoint's ``base`` entry: the reply checker's counts
(``server/replies.py``), the fusion failures (``server/fusion.py``), the collapse
watch (``server/health.py``) and the status itself, so a resumed run keeps who was
struck, excluded or dropped, what was lost and why the run stopped.
"""

from __future__ import annotations

import logging
from typing import Any

from server.fusion import FusionGuard
from server.health import CollapseWatch
from server.replies import ReplyChecker

log = logging.getLogger("fedkd")


class RunStatus:
    """The run's stop status and reason, node-loss rows and starved rounds in a row."""

    def __init__(self, replies: ReplyChecker, guard: FusionGuard, health: CollapseWatch) -> None:
        self.replies, self.guard, self.health = replies, guard, health
        self.stop_status = "stopped"  # summary.json's status once stop_reason is set
        self.stop_reason: str | None = None
        self.node_loss: list[dict[str, Any]] = []  # summary.json rows (server.nodeloss)
        self.starved_run = 0  # rounds in a row with too few valid replies

    def budget_allows(
        self, ledger: Any, server_round: int, clients: list[int], vote_bound: list[list[float]]
    ) -> bool:
        """False (and ``stop_reason``) when another round would push a client past
        ``privacy.budget_epsilon`` and the run is set to stop (``PrivacyLedger.allows``;
        ``vote_bound``: what one more round of noisy label voting costs at most)."""
        if ledger is None:
            return True
        reason = ledger.allows(server_round, clients, vote_bound)
        if reason is not None:
            self.stop_reason = reason
            log.warning("stopping: %s", reason)
        return reason is None

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``base`` entry: counts and reasons, never knowledge."""
        return {
            **self.replies.state_dict(),
            "fusion_failures": self.guard.failures,
            "stop_reason": self.stop_reason,
            "health": self.health.state_dict(),
            "node_loss": list(self.node_loss),
            "starved_run": self.starved_run,
        }

    def load_state_dict(self, base: dict[str, Any]) -> None:
        self.replies.load_state_dict(base)
        self.guard.failures = int(base["fusion_failures"])
        self.stop_reason = base.get("stop_reason")
        self.node_loss = list(base.get("node_loss", []))
        self.starved_run = int(base.get("starved_run", 0))
        if "health" in base:
            self.health.load_state_dict(base["health"])
