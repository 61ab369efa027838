"""Rounds the run could not keep: lost simulation nodes and starved rounds.

After each round the strategy calls ``after_round``:

- **Lost nodes** (simulation only): the launcher hands the strategy a watch
  (``simulations.nodeloss.WATCH``) whose ``drain()`` lists the clients whose Ray
  actor died under them since the last round. Each lost node is one console line
  and one ``node_loss`` row of summary.json (round, node id and IP, clients, the
  action, and under ``replace`` which clients answered on a live node and which
  counted as no reply). Under ``simulation.on_node_loss: fail`` the run stops
  after the round with status ``node_lost``; the launcher prints the one line and
  exits 1, and ``resume=DIR`` continues from the last checkpoint.
- **Starved rounds**: a round with fewer than ``server.min_train_clients`` valid
  replies does not update the knowledge; ``server.max_starved_rounds`` such rounds
  in a row stop the run with status ``starved`` (exit 1). null: never.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("fedkd")

STOPPED = ("node_lost", "starved")  # statuses of a run that did not finish as asked
LOST_REASON = "Ray node lost"  # how a lost actor's NODE_UNAVAILABLE reply starts


def _clients(ids: list[int]) -> str:
    return ", ".join(str(c) for c in ids) or "none"


def _node(row: dict[str, Any]) -> str:
    if row["node_id"] is None:
        return "Ray node (unknown: lost before it said where it ran)"
    return f"Ray node {row['node_id'][:12]} ({row['node_ip']})"


def node_rows(server_round: int, events: list[dict[str, Any]], policy: str) -> list[dict]:
    """One row per lost node of ``events`` (a watch's ``drain()``)."""
    rows: dict[tuple, dict[str, Any]] = {}
    for event in events:
        key = (event["node_id"], event["node_ip"])
        row = rows.setdefault(
            key,
            {
                "round": server_round,
                "node_id": event["node_id"],
                "node_ip": event["node_ip"],
                "clients": [],
                "action": policy,
            },
        )
        row["clients"].append(int(event["client"]))
        if policy == "replace":
            outcome = "no_reply" if event["outcome"] == "no_reply" else "recovered"
            row.setdefault("recovered", [])
            row.setdefault("no_reply", [])
            row[outcome].append(int(event["client"]))
    for row in rows.values():
        for key in ("clients", "recovered", "no_reply"):
            if key in row:
                row[key] = sorted(set(row[key]))
    return list(rows.values())


def after_round(strategy: Any, server_round: int) -> None:
    """Record this round's lost nodes and starvation (``strategy.current.starved``) in the
    strategy's ``status`` (``server/status.py``): rows, ``stop_reason`` / ``stop_status``."""
    watch, status = strategy.cluster, strategy.status
    if watch is not None:
        for row in node_rows(server_round, watch.drain(), watch.policy):
            status.node_loss.append(row)
            if row["action"] == "fail":
                last = strategy.checkpointer.last_round if strategy.checkpointer else None
                status.stop_status = "node_lost"
                status.stop_reason = (
                    f"round {server_round}: {_node(row)} lost with clients "
                    f"{_clients(row['clients'])} (simulation.on_node_loss=fail); the last "
                    f"checkpoint is {f'round {last}' if last else 'none'}"
                )
                continue
            log.warning(
                "round %d: %s lost; clients %s re-run on a live node (no reply: %s)",
                server_round,
                _node(row),
                _clients(row["recovered"]),
                _clients(row["no_reply"]),
            )
    status.starved_run = status.starved_run + 1 if strategy.current.starved else 0
    limit = strategy.max_starved_rounds
    if status.stop_reason is None and limit is not None and status.starved_run >= limit:
        status.stop_status = "starved"
        status.stop_reason = (
            f"rounds {server_round - limit + 1}-{server_round}: fewer than "
            f"server.min_train_clients={strategy.min_train_clients} valid replies "
            f"{limit} rounds in a row (server.max_starved_rounds)"
        )


def summary(strategy: Any) -> dict[str, Any]:
    """summary.json's ``node_loss`` rows and, in a simulation, ``placement``."""
    out: dict[str, Any] = {"node_loss": list(strategy.status.node_loss)}
    if strategy.cluster is not None:
        out["placement"] = strategy.cluster.placement()
    return out
