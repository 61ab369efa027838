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
from collections.abc import Mapping
from typing import Any

from torch import nn

from fedkd.errors import ConfigError
from fedkd.model_family import is_homogeneous, spec_for_client
from fedkd.registry import Registry

MODELS: Registry[Any] = Registry("model")

# Register the built-in models (each file decorates its class with MODELS.register).
from fedkd.models import cnn, mlp, resnet  # noqa: E402, F401

__all__ = [
    "MODELS",
    "build_model",
    "check_client_models",
    "is_homogeneous",
    "model_params",
    "spec_for_client",
]


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


def check_client_models(
    model_cfg: Mapping[str, Any], num_clients: int, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Build each architecture of the family once, as the clients will (a one-line
    ConfigError for one that cannot be built), on a forked RNG: checking draws nothing from
    the process's global torch generator."""
    import torch

    feature_dim = int(model_cfg["feature_dim"])
    with torch.random.fork_rng(devices=[]):
        for pid in range(min(int(num_clients), len(model_cfg["family"]))):
            build_model(spec_for_client(model_cfg, pid), input_shape, num_classes, feature_dim)
