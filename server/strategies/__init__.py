"""Server strategies, one module each; importing this package registers them all."""

from server.strategies import (  # noqa: F401  (registration)
    dsfl,
    fd,
    fedavg,
    feddf,
    fedka,
    fedmd,
    fedproto,
    knfu,
    local,
    vote,
)
from server.strategies.base import FedkdStrategy, RunInfo
from server.strategies.registry import STRATEGIES

__all__ = ["STRATEGIES", "FedkdStrategy", "RunInfo"]
