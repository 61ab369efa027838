"""What a strategy does with the run's privacy: its ledger, and the central-or-plain mean.

:meth:`StrategyPrivacy.for_strategy` builds the run's ledger (``server/privacy.py``:
``build_ledger``, None without privacy) once the strategy is set up, and joins the
GNMax releases of its label voting to it (both are recorded on the strategy's one
``fedkd.privacy.Ledger``; ``vote_recorder``), so those releases count toward
``privacy.budget_epsilon`` too. A strategy that fuses with a plain mean asks
:meth:`StrategyPrivacy.central_or` for the clients' mean: the configured reducer, or
under ``privacy=central`` the noised mean (``server.privacy.central_or``;
docs/privacy.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedkd.privacy.accounting import GNMAX, Ledger
from server.privacy import PrivacyLedger, build_ledger, central_or, vote_recorder


class StrategyPrivacy:
    """The strategy's ledger (``ledger``, None without privacy) and its central noise."""

    def __init__(self, ledger: PrivacyLedger | None, releases: Ledger, seed: int) -> None:
        self.ledger = ledger
        self.releases = releases  # every release of the run (``strategy.ledger``)
        self.seed = seed  # central noise draws from (seed, round) under seeded_noise

    @classmethod
    def for_strategy(cls, strategy: Any) -> StrategyPrivacy:
        """The ledger of ``strategy``'s run (called once its ``setup`` has run)."""
        info = strategy.info
        rows = strategy.privacy_rows()
        kind, classes = strategy.upload_kind, info.num_classes
        ledger = build_ledger(info.cfg, kind, rows, classes, strategy.ledger)
        if ledger is not None and vote_recorder(strategy) is not None:
            ledger.shared = (GNMAX,)  # label voting's GNMax counts toward budget_epsilon
        return cls(ledger, strategy.ledger, strategy.seed)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``privacy`` entry: the releases, then the policy's own state."""
        policy = {} if self.ledger is None else self.ledger.state_dict()
        return {"ledger": self.releases.state_dict(), **policy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.releases.load_state_dict(state["ledger"])
        if self.ledger is not None:
            self.ledger.load_state_dict(state)

    @property
    def central(self) -> bool:
        """Whether fusion is noised on the server (``privacy=central``)."""
        return self.ledger is not None and self.ledger.central is not None

    def central_or(
        self,
        server_round: int,
        values: np.ndarray,
        plain: Callable[[], Any] | None,
        counts: np.ndarray | None = None,
    ) -> Any:
        """``plain()`` (the configured reducer) or, under ``privacy=central``, the noised
        mean (with ``counts``: per-class ``(mean, present)``; ``server.privacy.central_or``)."""
        return central_or(self.ledger, self.seed, server_round, values, plain, counts)
