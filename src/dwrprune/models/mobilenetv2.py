"""MobileNetV2, CIFAR variant: stride 1 in the stem and in the second stage, so a 32x32 input
ends at 4x4 instead of 1x1 (the usual adaptation, ~94 M MACs, 2.2 M parameters).

Built from torchvision's own ``InvertedResidual`` block so that depth pruning sees the same
block type for our variant and for ``tv/mobilenet_v2``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops import Conv2dNormActivation

from .registry import register_model

# (expansion t, output channels c, repeats n, first stride s), as in the paper, CIFAR strides.
_CIFAR_SETTING = [
    [1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2],
    [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1],
]


class MobileNetV2(nn.Module):
    def __init__(self, setting: list, num_classes: int = 10, in_channels: int = 3,
                 stem: int = 32, last: int = 1280, dropout: float = 0.2):
        super().__init__()
        layers: list[nn.Module] = [
            Conv2dNormActivation(in_channels, stem, stride=1, activation_layer=nn.ReLU6)
        ]
        c = stem
        for t, out, n, s in setting:
            for i in range(n):
                layers.append(InvertedResidual(c, out, s if i == 0 else 1, expand_ratio=t))
                c = out
        layers.append(Conv2dNormActivation(c, last, kernel_size=1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("mobilenetv2", min_resolution=8,
                description="CIFAR MobileNetV2 (stride-1 stem and second stage).")
def mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> MobileNetV2:
    return MobileNetV2(_CIFAR_SETTING, num_classes, in_channels)


@register_model("mobilenetv2_tiny", min_resolution=8, tiny=True,
                description="Test model: MobileNetV2 with 3 stages of narrow inverted residuals.")
def mobilenetv2_tiny(num_classes: int = 10, in_channels: int = 3) -> MobileNetV2:
    setting = [[1, 8, 1, 1], [2, 8, 2, 1], [2, 16, 2, 2]]
    return MobileNetV2(setting, num_classes, in_channels, stem=8, last=32, dropout=0.0)
