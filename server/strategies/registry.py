"""The strategy registry: name in ``configs/strategy/<name>.yaml`` -> class."""

from __future__ import annotations

from fedkd.registry import Registry

STRATEGIES: Registry = Registry("strategy")
