"""The privacy ledger's append-only log: every release charged when it happens, on disk.

``<run>/privacy_ledger.jsonl`` holds one JSON line per release the run's ledger
(``fedkd.privacy.accounting.Ledger``) records, written and fsynced at the moment it is
charged (before the release leaves: local and sub-teacher rounds are charged when the
plan is sent, central and GNMax releases when they are fused):
``{"round": r, "mechanism": m, "units": [ids] or "every", "event": e, "count": n}``,
``e`` the ``dp_accounting`` event as JSON (``Release.to_dict``): the privacy group's
round releases of each client in ``units``, or label voting's GNMax releases (every
client pays them).

A resumed run rebuilds the ledger from this file, not from the checkpoint: rounds that
ran after the last checkpoint are re-run and released again, so they are charged again
(ours: conservative, never less than the uninterrupted run). A line torn by a kill is
skipped; nothing after it was charged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from server.privacy import vote_recorder

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
    """Charge ``strategy``'s ledger to ``run_dir``'s log from now on; on resume, first
    rebuild it from the log (overriding what the checkpoint restored)."""
    if strategy.privacy is None and vote_recorder(strategy) is None:
        return None
    ledger = strategy.ledger
    log = ReleaseLog(Path(run_dir) / FILE)
    if resumed and log.path.exists():
        releases = [{k: v for k, v in e.items() if k != "round"} for e in log.entries()]
        ledger.load_state_dict({"orders": ledger.orders, "releases": releases})
    elif not resumed:
        log.path.parent.mkdir(parents=True, exist_ok=True)
        log.path.write_text("", encoding="utf-8")

    def sink(entry: dict[str, Any]) -> None:
        log.append({"round": int(strategy.current.number), **entry})

    ledger.sink = sink
    return log
