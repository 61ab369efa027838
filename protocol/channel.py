"""What the server may read vs the researcher's measurement, when privacy is on (ours).

A client's reply has two channels:

- **``metrics``**: what the strategy (what a real server learns) reads. With privacy on it
  carries nothing derived from private data: only ``partition_id`` and ``eval_round``
  (from the plan). Its knowledge payload is the one thing the ledger charges.
- **``measurement``** (MetricRecord) and ``eval`` (the confusion counts): the researcher's
  view: ``num_train``, losses, accuracies, timing, the start-up handshake's data sizes.
  In a **simulation** the simulator records them (``server.channel``) and never hands them
  to the strategy; in a **deployment** a client under privacy leaves them out unless its
  node config says ``privacy-share-measurement=true`` (the node opts in; nothing noises
  them).

Without privacy everything stays in ``metrics`` as before. A round is private when the
plan carries a privacy entry (``privacy``, ``teachers``), the run config names a privacy
mechanism (``central`` too: the server is trusted with the knowledge, not with the
clients' losses), or the client's own floor does not accept un-noised releases.
Consequence: under privacy the strategy does not learn ``num_train``, so fusion weights
that use it (FedAvg's weighted mean) become uniform.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flwr.app import ArrayRecord, MetricRecord, RecordDict

from fedkd.plan import Plan
from protocol import wire

MEASUREMENT = "measurement"
PUBLIC_METRICS = ("partition_id", "num_partitions", "eval_round")  # not derived from private data
SHARE_KEY = "privacy-share-measurement"  # node config: a deployed node opts in


def private_round(plan: Plan, cfg: Mapping[str, Any], accepts_none: bool) -> bool:
    """Whether this reply is under privacy (see the module docstring)."""
    named = ((cfg.get("privacy") or {}).get("name") or "none") != "none"
    return bool(plan.privacy or plan.teachers or named or not accepts_none)


def shares_measurement(node_config: Mapping[str, Any], simulation: bool) -> bool:
    """Simulation: the simulator's own view. Deployment: only if the node opts in."""
    return simulation or str(node_config.get(SHARE_KEY, "false")).lower() in ("true", "1")


def split(content: RecordDict, share: bool) -> None:
    """Move everything private out of ``metrics``: into ``measurement`` if ``share``, else away
    (the ``eval`` arrays too)."""
    found = wire.get_record(content, wire.METRICS, MetricRecord)
    if found is None:
        return
    metrics = dict(found)
    public = {k: v for k, v in metrics.items() if k in PUBLIC_METRICS}
    private = {k: v for k, v in metrics.items() if k not in PUBLIC_METRICS}
    content[wire.METRICS] = MetricRecord(public)
    if share and private:
        content[MEASUREMENT] = MetricRecord(private)
    if not share and wire.get_record(content, wire.EVAL, ArrayRecord) is not None:
        del content[wire.EVAL]


def measurement_of(content: RecordDict) -> dict[str, Any]:
    """The researcher's channel of a reply (server side), as sent: the server checks it
    against the metrics schema (``fedkd.metrics_schema``) like the ``metrics`` record."""
    record = wire.get_record(content, MEASUREMENT, MetricRecord)
    return {} if record is None else dict(record)
