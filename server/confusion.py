"""Which evaluations carry confusion counts, and the mean client's matrix of each.

``logging.confusion_every`` selects the evaluations (``fedkd.confusion.confusion_due``);
the strategy adds ``confusion: true`` to the plan of the exchanges that run them, so
every strategy gets the matrices without touching its own ``plan``. The validated
counts of the replies go to the recorder (``confusion.json``, TensorBoard).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from fedkd.confusion import confusion_due, mean_client_confusion


class ConfusionCollector:
    """Asks for confusion counts on the selected evaluations and records their mean."""

    def __init__(self, every: Any, last_eval_round: Callable[[], int]) -> None:
        self.every = every
        self.last = last_eval_round  # the round of the run's last evaluated models

    def due(self, eval_round: int) -> bool:
        """Whether the evaluation of ``eval_round``'s models should carry confusion counts."""
        return confusion_due(self.every, eval_round, self.last())

    @staticmethod
    def record(
        recorder: Any, eval_round: int, counts: Iterable[tuple[int, np.ndarray | None]]
    ) -> None:
        """The mean client's matrix of this evaluation, for TensorBoard and confusion.json."""
        found = {cid: conf for cid, conf in counts if conf is not None}
        if found and recorder is not None:
            mean = mean_client_confusion([found[c] for c in sorted(found)])
            recorder.confusion(eval_round, found, mean)
