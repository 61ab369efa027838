"""The privacy ledger's append-only log: every release charged when it happens, on disk.

``<run>/privacy_ledger.jsonl`` holds one JSON line per charge, written and fsynced at the
moment the ledger charges it (before the release leaves: local and sub-teacher rounds
are charged when the plan is sent, central and GNMax releases when they are fused):

- ``{"round": r, "clients": [ids]}``: each of these clients released once
  (``server.privacy.PrivacyLedger``);
- ``{"round": r, "noise_multiplier": z, "count": n}``: ``n`` Gaussian releases of the
  vote ledger (GNMax / Confident-GNMax, ``fedkd.privacy.accounting.RdpLedger``).

A resumed run rebuilds both ledgers from this file, not from the checkpoint: rounds that
ran after the last checkpoint are re-run and released again, so they are charged again
(ours: conservative, never less than the uninterrupted run). A line torn by a kill is
skipped; nothing after it was charged.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from server.privacy import vote_ledger

FILE = "privacy_ledger.jsonl"


class ReleaseLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                break  # torn by a kill: it was never charged completely
            if isinstance(entry, dict):
                out.append(entry)
        return out


def attach(strategy: Any, run_dir: str | Path, resumed: bool) -> ReleaseLog | None:
    """Charge ``strategy``'s ledgers to ``run_dir``'s log from now on; on resume, first
    rebuild them from it (overriding what the checkpoint restored)."""
    privacy, votes = strategy.privacy, vote_ledger(strategy)
    if privacy is None and votes is None:
        return None
    log = ReleaseLog(Path(run_dir) / FILE)
    entries = log.entries() if resumed else []
    if not resumed:
        log.path.parent.mkdir(parents=True, exist_ok=True)
        log.path.write_text("", encoding="utf-8")
    if resumed and log.path.exists():
        if privacy is not None:
            privacy.rounds = Counter(
                int(c) for e in entries if "clients" in e for c in e["clients"]
            )
        if votes is not None:
            state = votes.state_dict()
            state["events"] = [
                [float(e["noise_multiplier"]), int(e["count"])]
                for e in entries
                if "noise_multiplier" in e
            ]
            votes.load_state_dict(state)

    def sink(entry: dict[str, Any]) -> None:
        log.append({"round": int(strategy.current.number), **entry})

    if privacy is not None:
        privacy.sink = sink
    if votes is not None:
        votes.sink = sink
    return log
