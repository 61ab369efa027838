"""Model registry and builders.

Every model's ``forward(x)`` returns ``(features, logits)``: ``features`` is the
penultimate embedding ``φ(x)`` of size ``feature_dim`` (taken *after* its ReLU, so
FedProto prototypes are comparable across architectures) and ``logits`` is
``f(x)`` of size ``num_classes``. Each model exposes ``.feature_dim``.

A model is a class registered in :data:`MODELS` whose constructor is
``(input_shape, num_classes, feature_dim, *, <params>)``; its keyword-only
parameters are the params a config spec may set. Heterogeneous federations use a
``family`` of specs assigned round-robin to clients (our choice; FedMD assigns its
10 CNNs one per party in the same way).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from fedkd.errors import ConfigError
from fedkd.registry import Registry

MODELS: Registry[Any] = Registry("model")

# Register the built-in models (each file decorates its class with MODELS.register).
from fedkd.models import cnn, mlp, resnet  # noqa: E402, F401

__all__ = ["MODELS", "build_model", "is_homogeneous", "model_params", "spec_for_client"]


def model_params(name: str) -> list[str]:
    """Names of the params model ``name`` accepts in a spec (its keyword-only args)."""
    signature = inspect.signature(MODELS.get(name))
    return [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]


def build_model(
    spec: Mapping[str, Any], input_shape: tuple[int, ...], num_classes: int, feature_dim: int
) -> nn.Module:
    """Build the model ``spec["name"]`` with the other spec keys as its params."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"model spec must be a mapping with a 'name', got {spec!r}")
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"model spec has no 'name': {dict(spec)!r}")
    factory = MODELS.get(name)
    allowed = model_params(name)
    for key in params:
        if key not in allowed:
            known = ", ".join(allowed) or "(none)"
            raise ConfigError(f"model '{name}' has no param '{key}'; known: {known}")
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"model '{name}': input_shape must be positive sizes, got {shape}")
    for label, value in (("num_classes", num_classes), ("feature_dim", feature_dim)):
        if int(value) < 1:
            raise ConfigError(f"model '{name}': {label} must be >= 1, got {value}")
    return factory(shape, int(num_classes), int(feature_dim), **params)


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
