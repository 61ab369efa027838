"""Server strategies, one module each; importing this package registers them all."""

from server.strategies import dsfl, fd, fedavg, feddf, fedmd, fedproto, knfu, local  # noqa: F401  (registration)
from server.strategies.base import FedkdStrategy, RunInfo
from server.strategies.registry import STRATEGIES

__all__ = ["STRATEGIES", "FedkdStrategy", "RunInfo"]
