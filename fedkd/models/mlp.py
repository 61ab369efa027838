"""Multi-layer perceptron: flatten, hidden ``Linear-ReLU`` layers, feature layer, head.

Not from a paper; a small generic baseline model (our choice).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from fedkd.errors import ConfigError
from fedkd.models import MODELS


def positive_ints(model: str, param: str, value: object, *, allow_empty: bool) -> list[int]:
    """Validate a list-of-widths param and return it as a plain list of ints."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"model '{model}': {param} must be a list of ints, got {value!r}")
    widths = list(value)
    if not allow_empty and not widths:
        raise ConfigError(f"model '{model}': {param} must not be empty")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ConfigError(f"model '{model}': {param} must be positive ints, got {widths!r}")
    return widths


@MODELS.register("mlp")
class MLP(nn.Module):
    """``x -> flatten -> [Linear-ReLU]* -> Linear(feature_dim)-ReLU -> Linear(num_classes)``."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        feature_dim: int,
        *,
        hidden: Sequence[int] = (128,),
    ) -> None:
        super().__init__()
        widths = positive_ints("mlp", "hidden", hidden, allow_empty=True)
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for w in widths:
            layers += [nn.Linear(width, w), nn.ReLU()]
            width = w
        layers += [nn.Linear(width, feature_dim), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.head(features)
