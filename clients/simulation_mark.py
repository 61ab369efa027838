"""The mark of a simulated client: an environment variable the simulation launcher sets.

``simulations/run.py`` sets it for its Ray workers only (a private Ray instance inherits it,
a cluster gets it through the job's ``runtime_env``); a real SuperNode's ClientApp never
has it, so it takes its privacy floor from its own node config, not from the server's run
config. This module imports nothing else, so the launcher can name the variable before
it starts Ray without paying for Flower's import first.
"""

from __future__ import annotations

import os

SIMULATION_ENV = "FEDKD_SIMULATION"


def in_simulation() -> bool:
    """Whether this process runs a simulated client (the launcher's mark is set)."""
    return os.environ.get(SIMULATION_ENV) == "1"
