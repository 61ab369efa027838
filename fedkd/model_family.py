"""Which model spec each client gets (``model.family`` round-robin), without torch.

``fedkd.models`` builds the models; the config checks need only the specs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedkd.errors import ConfigError


def spec_for_client(model_cfg: Mapping[str, Any], partition_id: int) -> dict[str, Any]:
    """The spec of client ``partition_id``: ``family[partition_id % len(family)]``."""
    family = model_cfg.get("family") if isinstance(model_cfg, Mapping) else None
    if isinstance(family, (str, bytes)) or not isinstance(family, Sequence) or not family:
        raise ConfigError("model.family must be a non-empty list of model specs")
    if partition_id < 0:
        raise ConfigError(f"partition_id must be >= 0, got {partition_id}")
    spec = family[partition_id % len(family)]
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(f"model.family entry {partition_id % len(family)} has no 'name'")
    return _plain(spec)


def is_homogeneous(model_cfg: Mapping[str, Any], num_clients: int) -> bool:
    """True when every one of ``num_clients`` clients gets an identical spec."""
    if num_clients < 1:
        raise ConfigError(f"num_clients must be >= 1, got {num_clients}")
    first = spec_for_client(model_cfg, 0)
    return all(spec_for_client(model_cfg, i) == first for i in range(1, num_clients))


def _plain(value: Any) -> Any:
    """Recursively turn mappings into dicts and sequences into lists (OmegaConf-safe)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value
