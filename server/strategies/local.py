"""``local``: no collaboration, the lower bound every method must beat.

Clients train on their own data only; nothing but metrics goes up or down.
"""

from __future__ import annotations

from server.strategies.base import FedkdStrategy
from server.strategies.registry import STRATEGIES


@STRATEGIES.register("local")
class Local(FedkdStrategy):
    name = "local"
