"""Server strategies, one module each, registered by name; a strategy's module (and
what it imports: torch for those that train or evaluate a model on the server) is
imported at the first lookup of its name (``fedkd.registry.Registry.lazy``)."""

from server.strategies.base import FedkdStrategy, RunInfo
from server.strategies.registry import STRATEGIES

for _name in (
    "dsfl",
    "fd",
    "fedavg",
    "feddf",
    "fedka",
    "fedmd",
    "fedproto",
    "knfu",
    "local",
    "vote",
):
    STRATEGIES.lazy(_name, f"server.strategies.{_name}")

__all__ = ["STRATEGIES", "FedkdStrategy", "RunInfo"]
