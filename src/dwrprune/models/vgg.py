"""VGG with BatchNorm, CIFAR variant (Simonyan & Zisserman 2015; the CIFAR form used by the
pruning literature: one linear classifier on 512 features).

The last max-pool is an adaptive average pool, so the network also runs on 28x28 inputs
(Fashion-MNIST) and on the reduced resolutions that resolution pruning produces; at 32x32 the
two are the same operation (2x2 -> 1x1), so MACs match the usual ~313 M.
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model

_CFG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model("vgg16_bn", min_resolution=16,
                description="CIFAR VGG-16 with BatchNorm, 512-d linear classifier.")
def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(_CFG16, num_classes, in_channels)


@register_model("vgg_tiny", min_resolution=8, tiny=True,
                description="Test model: 6-conv VGG with 8/16/16 channels.")
def vgg_tiny(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG([8, 8, "M", 16, 16, "M", 16, 16], num_classes, in_channels)
