"""CIFAR-style ResNet-8 (He et al. 2016, arXiv 1512.03385; the depth-8 variant FedDF uses).

Follows the FedDF reference code (epfml/federated-learning-public-code,
``pcode/models/resnet.py``, ``ResNet_cifar`` with depth 8): a 3x3 stem conv with 16
channels, three stages of one BasicBlock each (16/32/64 channels, strides 1/2/2),
BatchNorm, Kaiming-normal (fan-out) conv init, and a ``scaling`` width multiplier
(our ``width``). Our changes: global *adaptive* average pooling instead of the fixed
``AvgPool2d(8)``, so 8x8 and 28x28 inputs work, and a ``Linear(feature_dim)-ReLU``
feature layer before the head, so every model exposes a comparable embedding.
"""

from __future__ import annotations

from torch import Tensor, nn

from fedkd.errors import ConfigError
from fedkd.models import MODELS


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@MODELS.register("resnet8")
class ResNet8(nn.Module):
    """ResNet-8 -> global avg pool -> ``Linear(feature_dim)-ReLU`` -> ``Linear(num_classes)``."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        feature_dim: int,
        *,
        width: float = 1,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"model 'resnet8' needs a (C, H, W) input_shape, got {input_shape}")
        if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
            raise ConfigError(f"model 'resnet8': width must be a positive number, got {width!r}")
        w16, w32, w64 = (max(1, int(c * width)) for c in (16, 32, 64))
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(input_shape[0], w16, 3, padding=1, bias=False),
            nn.BatchNorm2d(w16),
            nn.ReLU(),
            BasicBlock(w16, w16, stride=1),
            BasicBlock(w16, w32, stride=2),
            BasicBlock(w32, w64, stride=2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(w64, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x)
        return features, self.head(features)
