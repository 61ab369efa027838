"""The metrics a client may put in its reply: names, types and ranges.

A reply's ``metrics`` record arrives from another process, so every entry is
checked before anything records it (``server.recorder``) or weights fusion by it
(``num_train``). :func:`check_metrics` returns the metrics unchanged or raises a
one-line :class:`~fedkd.errors.PayloadError` with reason ``bad_metrics`` naming
the entry and what it may hold.

- Names the server writes into a row itself (:data:`RESERVED`: ``round``,
  ``client``, byte counts, ``epsilon``, ...) may never come from a client: a
  reply carrying one is rejected, so row identity cannot be overwritten.
- Every other name must match an entry of :data:`EXACT` or a suffix rule of
  :data:`SUFFIXES` (accuracies in [0, 1], losses finite and >= 0 up to -1e-4 of
  rounding, times finite and >= 0); anything else is rejected (``unknown metric``).
  A new client metric is one line here.
- Counts (``num_train``, ``num_local_test``) are integers in ``[0, max_count]``
  (``bounds.max_count``). A client can still claim any count up to that bound: the
  server also caps the sample-count weight it gives each client
  (``bounds.weight_cap``, :func:`fedkd.bounds.cap_weights`).

Choices that are ours: strict names (unknown ones reject the reply rather than being
dropped, so a misspelt metric is noticed), booleans and lists refused, integers
beyond 2^53 refused wherever a float is expected (they cannot be recorded exactly and
10^400 cannot be converted at all), ``mmd_loss`` allowed to be negative (an unbiased
MMD² estimate can be).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedkd.errors import PayloadError

# written by the server into the client's row, never accepted from a reply
RESERVED = frozenset(
    {"round", "client", "bytes_up", "bytes_down", "epsilon", "fusion_weights", "num_clients"}
)
MAX_INT_AS_FLOAT = 2**53  # beyond it a float cannot hold an integer exactly
MAX_ID = 2**31 - 1


@dataclass(frozen=True)
class Rule:
    """What one metric may hold: ``kind`` ``count`` (int) or ``number`` (int or float) in
    ``[low, high]`` (None: unbounded), finite."""

    kind: str
    low: float | None = None
    high: float | None = None

    def describe(self, max_count: int) -> str:
        high = max_count if self.high == COUNT_HIGH else self.high
        what = "an integer" if self.kind == "count" else "a finite number"
        if self.low is not None and high is not None:
            return f"{what} in [{_num(self.low)}, {_num(high)}]"
        if self.low is not None:
            return f"{what} >= {_num(self.low)}"
        return what


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


COUNT_HIGH = math.inf  # placeholder: replaced by the run's bounds.max_count
ACCURACY = Rule("number", 0.0, 1.0)
LOSS = Rule("number", -1e-4)  # >= 0, less float32 rounding of a KL divergence near 0
EXACT: dict[str, Rule] = {
    "num_train": Rule("count", 0, COUNT_HIGH),
    "num_local_test": Rule("count", 0, COUNT_HIGH),
    "partition_id": Rule("count", 0, MAX_ID),
    "eval_round": Rule("count", 0, MAX_ID),  # the server overwrites it with its own
    "mmd_loss": Rule("number"),
    "client_time": Rule("number", 0.0),
}
SUFFIXES: dict[str, Rule] = {"_acc": ACCURACY, "_loss": LOSS, "_time_s": Rule("number", 0.0)}


def rule_for(name: str) -> Rule | None:
    if name in EXACT:
        return EXACT[name]
    for suffix, rule in SUFFIXES.items():
        if name.endswith(suffix):
            return rule
    return None


class NonFiniteMetric(PayloadError):
    """A metric that is NaN or Inf (reason ``bad_metrics``): what a client whose model has
    turned NaN reports, which the server tells apart from other bad metrics."""


def _fail(message: str) -> PayloadError:
    return PayloadError(message, "bad_metrics")


def check_metrics(metrics: Mapping[str, Any], max_count: int) -> dict[str, int | float]:
    """``metrics`` as a plain dict if every entry follows the schema; PayloadError otherwise."""
    out: dict[str, int | float] = {}
    for name, value in metrics.items():
        shown = f"{str(name)[:60]!r}"
        if not isinstance(name, str):
            raise _fail(f"metric name {shown} is not a string")
        if name in RESERVED:
            raise _fail(f"metric {shown} is reserved for the server's own records")
        rule = rule_for(name)
        if rule is None:
            raise _fail(f"unknown metric {shown}; a client may send {allowed_names()}")
        high = max_count if rule.high == COUNT_HIGH else rule.high
        expected = rule.describe(max_count)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(f"metric {shown} must be {expected}, got {type(value).__name__}")
        if rule.kind == "count" and not isinstance(value, int):
            raise _fail(f"metric {shown} must be {expected}, got a float")
        if isinstance(value, int) and rule.kind != "count" and abs(value) > MAX_INT_AS_FLOAT:
            raise _fail(f"metric {shown} must be {expected}, got an integer beyond 2^53")
        if isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteMetric(f"metric {shown} must be {expected}, got {value}", "bad_metrics")
        too_low = rule.low is not None and value < rule.low
        too_high = high is not None and value > high
        if too_low or too_high:
            got = f"{value:.6g}" if isinstance(value, float) else str(value)[:30]
            raise _fail(f"metric {shown} must be {expected}, got {got}")
        out[name] = value
    return out


def allowed_names() -> str:
    """The names the schema accepts, for error messages."""
    return ", ".join([*EXACT, *(f"*{s}" for s in SUFFIXES)])
