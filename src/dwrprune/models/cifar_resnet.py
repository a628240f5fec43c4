"""CIFAR-style ResNets (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels.

Stage transitions use a 1x1 convolution + BatchNorm projection shortcut ("option B"): it adds
about 1% to the MACs of the zero-padding shortcut but makes every residual add a plain
tensor addition that Torch-Pruning's dependency graph can follow, and it gives a transition
block a cheap replacement (its projection) when depth pruning removes it.
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _depth_to_blocks(depth: int) -> int:
    assert (depth - 2) % 6 == 0
    return (depth - 2) // 6


for _depth in (20, 32, 44, 56, 110):

    def _make(num_classes: int = 10, in_channels: int = 3, _n=_depth_to_blocks(_depth)):
        return CifarResNet(_n, num_classes, in_channels)

    _make.__doc__ = f"CIFAR ResNet-{_depth}: {_depth_to_blocks(_depth)} basic blocks per stage."
    register_model(f"resnet{_depth}", min_resolution=8, description=_make.__doc__)(_make)


@register_model("resnet_tiny", min_resolution=8, tiny=True,
                description="Test model: CIFAR ResNet with 1 block per stage, 4/8/16 channels.")
def resnet_tiny(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(1, num_classes, in_channels, widths=(4, 8, 16))


@register_model("resnet_tiny2", min_resolution=8, tiny=True,
                description="Test model: CIFAR ResNet with 2 blocks per stage, 4/8/16 channels.")
def resnet_tiny2(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(2, num_classes, in_channels, widths=(4, 8, 16))
