"""Fusion that never leaves the server with unusable knowledge.

:func:`require_finite` is the one finiteness check of fused knowledge (an array, a
knowledge payload, or dicts and lists of them). :class:`FusionGuard` runs a strategy's
``fuse`` on the capped uploads (``bounds.clip`` / ``bounds.weight_cap``,
``fedkd.bounds``) and keeps the last good knowledge in two cases:

- fusion raises or leaves NaN/Inf in the knowledge: the round keeps the knowledge it
  had (``fusion_failures`` counts it);
- most replies of the next round are rejected for NaN/Inf: the broadcast knowledge
  broke the honest models, so it is rolled back to before that fusion and the clients
  rejected for it get no strike (:meth:`FusionGuard.poisoned`).

The knowledge is the strategy's ``state_dict()`` minus its bookkeeping keys
(``FedkdStrategy.not_knowledge``). No deep copy is taken: ``fuse`` replaces the
objects it fuses into (a new payload, a new dict of arrays) and never writes into an
array of its previous knowledge, so the state dict taken before fusion still holds
the previous knowledge after it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from fedkd.bounds import Bounds, cap_uploads, cap_weights, clip_uploads
from fedkd.knowledge import Payload

log = logging.getLogger("fedkd")


class FusionError(RuntimeError):
    """Fusion produced unusable knowledge; the round keeps the previous knowledge."""


def require_finite(name: str, value: Any) -> Any:
    """``value`` unchanged; FusionError if any number in it (an array, a knowledge
    payload, dicts and lists of them) is NaN or Inf."""
    tree = value.to_arrays() if isinstance(value, Payload) else value
    if isinstance(tree, np.ndarray):
        if np.issubdtype(tree.dtype, np.number) and not np.isfinite(tree).all():
            raise FusionError(f"fused {name} contains NaN or Inf")
    elif isinstance(tree, dict):
        for key, item in tree.items():
            require_finite(f"{name}.{key}", item)
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            require_finite(name, item)
    return value


class FusionGuard:
    """Runs ``strategy.fuse`` and rolls the knowledge back when it is unusable."""

    def __init__(self, strategy: Any, bounds: Bounds) -> None:
        self.strategy = strategy
        self.bounds = bounds
        self.failures = 0
        self.before: dict[str, Any] | None = None  # knowledge before the last fusion
        self.poisoned_since: int | None = None  # round of the last rollback, while it lasts

    def knowledge(self) -> dict[str, Any]:
        """The strategy's state minus its bookkeeping (references, not copies)."""
        skip = self.strategy.not_knowledge
        return {k: v for k, v in self.strategy.state_dict().items() if k not in skip}

    def restore(self, knowledge: dict[str, Any]) -> None:
        self.strategy.load_state_dict({**self.strategy.state_dict(), **knowledge})

    def fuse(
        self, server_round: int, uploads: dict[int, Any], num_train: dict[int, int]
    ) -> dict[str, float]:
        """``fuse`` on the capped uploads; {} and the previous knowledge if it fails."""
        before = self.knowledge()
        try:
            uploads = cap_uploads(clip_uploads(uploads, self.bounds.clip), self.bounds.weight_cap)
            num_train = cap_weights(num_train, self.bounds.weight_cap)
            diagnostics = self.strategy.fuse(server_round, uploads, num_train)
            for key, value in self.knowledge().items():
                require_finite(key, value)
            self.before = before
            return diagnostics
        except Exception as err:  # any failure of fusion keeps the last good knowledge
            self.failures += 1
            self.restore(before)
            detail = err if isinstance(err, FusionError) else f"{type(err).__name__}: {err}"
            detail = " ".join(str(detail).split())[:300]
            log.warning(
                "round %d: fusion skipped, previous knowledge kept: %s", server_round, detail
            )
            return {}

    def poisoned(self, server_round: int, victims: set[int], answered: int) -> set[int]:
        """Clients not to strike because the knowledge they received is to blame.

        When most of the ``answered`` replies of a round are rejected for NaN/Inf
        (``victims``: ``non_finite`` knowledge, or NaN/Inf metrics of a model that turned
        NaN) after a fusion, the knowledge is rolled back to what it was before that
        fusion, and the victims get no strike, in this round and in the following ones
        while most replies stay non-finite (their models stay broken).
        """
        if 2 * len(victims) <= answered:
            self.poisoned_since = None
            return set()
        if self.before is not None:
            self.restore(self.before)
            self.before = None
            self.poisoned_since = server_round
            log.warning(
                "round %d: %d of %d replies non-finite after the last fusion: knowledge rolled "
                "back to before it, no strikes",
                server_round,
                len(victims),
                answered,
            )
        elif self.poisoned_since is None:
            return set()  # no fusion to blame: the clients are
        # the models the poisoned knowledge broke stay broken: not their clients' fault
        return set(victims)
