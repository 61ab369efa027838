"""Small CNN: ``[conv3x3-ReLU-maxpool2]*``, adaptive average pool to 2x2, feature layer, head.

Not a paper's architecture (FedMD uses 2-3 layer CNNs of varying widths; ours is a
comparable family selected by ``channels``). Pooling is skipped once the map is
1 pixel wide so the same model works on 8x8 digits, 1x28x28 and 3x32x32 inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fedkd.errors import ConfigError
from fedkd.models import MODELS
from fedkd.models.mlp import positive_ints


@MODELS.register("cnn")
class CNN(nn.Module):
    """Conv feature extractor -> ``Linear(feature_dim)-ReLU`` -> ``Linear(num_classes)``."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        feature_dim: int,
        *,
        channels: Sequence[int] = (16, 32),
    ) -> None:
        super().__init__()
        widths = positive_ints("cnn", "channels", channels, allow_empty=False)
        if len(input_shape) != 3:
            raise ConfigError(f"model 'cnn' needs a (C, H, W) input_shape, got {input_shape}")
        in_ch, height, width = input_shape
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        for ch in widths:
            layers += [nn.Conv2d(in_ch, ch, kernel_size=3, padding=1), nn.ReLU()]
            if height >= 2 and width >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_ch = ch
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten()]
        layers += [nn.Linear(in_ch * 4, feature_dim), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.head(features)
