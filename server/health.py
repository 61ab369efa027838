"""Distillation health: a collapse warning, raised from what the clients report.

Knowledge exchange can fail silently: students that distil on noise drift to a
constant prediction (global-test accuracy at chance) or stop changing at all
(every client reports the same accuracies round after round). The server watches
the mean client's global-test accuracy of each round and warns, once per kind:

- **at chance**: the mean global-test accuracy is at most ``1 / C + margin`` after an
  earlier round was above that (the run lost what it had learnt; under strong label
  skew round 1 itself is near chance, which is no collapse);
- **frozen**: every client's global-test accuracy is unchanged (to 1e-9) for
  ``rounds`` consecutive rounds.

``logging.collapse_rounds`` (0: off) and ``logging.collapse_margin`` set both; the
warning is logged, its round row carries ``collapse_warning`` and the summary
lists every warning (``collapse_warnings``). The per-round numbers that explain a
collapse (``target_acc``, ``target_entropy``, ``after_distill_global_acc``,
``after_train_global_acc``) are recorded by the strategies and clients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fedkd.errors import ConfigError


class CollapseWatch:
    """Feed it each round's client accuracies; it answers with a warning or None."""

    def __init__(self, num_classes: int, rounds: int, margin: float) -> None:
        self.chance = 1.0 / max(int(num_classes), 1)
        self.rounds = int(rounds)
        self.margin = float(margin)
        self._previous: dict[int, float] | None = None
        self._peak = 0.0  # the best mean accuracy of the earlier rounds
        self._unchanged = 0
        self.warned: set[str] = set()
        self.warnings: list[str] = []

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], num_classes: int) -> CollapseWatch:
        logs = cfg["logging"]
        rounds, margin = logs["collapse_rounds"], logs["collapse_margin"]
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
            raise ConfigError(f"logging.collapse_rounds must be an int >= 0 (got {rounds!r})")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < 1:
            raise ConfigError(f"logging.collapse_margin must be in [0, 1) (got {margin!r})")
        return cls(num_classes, rounds, margin)

    def update(self, server_round: int, accuracies: Mapping[int, float]) -> str | None:
        """``accuracies``: client id -> global-test accuracy of this round's replies."""
        accs = {c: float(a) for c, a in accuracies.items() if a is not None and math.isfinite(a)}
        if self.rounds == 0 or not accs:
            return None
        found = None
        mean = sum(accs.values()) / len(accs)
        floor = self.chance + self.margin
        peak, self._peak = self._peak, max(self._peak, mean)
        if mean <= floor < peak and "chance" not in self.warned:
            self.warned.add("chance")
            found = (
                f"round {server_round}: collapse: mean global-test accuracy {mean:.3f} is at "
                f"chance ({self.chance:.3f}), down from {peak:.3f}"
            )
        previous, self._previous = self._previous, accs
        same = previous is not None and previous.keys() == accs.keys()
        if same and all(abs(accs[c] - previous[c]) <= 1e-9 for c in accs):
            self._unchanged += 1
        else:
            self._unchanged = 0
        if found is None and self._unchanged + 1 >= self.rounds > 1 and "frozen" not in self.warned:
            self.warned.add("frozen")
            found = (
                f"round {server_round}: collapse: every client's global-test accuracy unchanged "
                f"for {self._unchanged + 1} rounds"
            )
        if found is not None:
            self.warnings.append(found)
        return found

    def state_dict(self) -> dict[str, Any]:
        return {
            "previous": None
            if self._previous is None
            else {str(c): a for c, a in self._previous.items()},
            "unchanged": self._unchanged,
            "peak": self._peak,
            "warned": sorted(self.warned),
            "warnings": list(self.warnings),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        previous = state.get("previous")
        self._previous = (
            None if previous is None else {int(c): float(a) for c, a in previous.items()}
        )
        self._unchanged = int(state.get("unchanged", 0))
        self._peak = float(state.get("peak", 0.0))
        self.warned = set(state.get("warned", []))
        self.warnings = list(state.get("warnings", []))
