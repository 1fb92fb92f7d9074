"""CIFAR ResNet-56 and MobileNetV2 (32x32 inputs), each with a width multiplier.

ResNet-56 follows Torch-Pruning's `reproduce` ResNet (engine/models/cifar/resnet_tiny.py): a 3x3
stem, three stages of nine BasicBlocks (16, 32, 64 channels), a 1x1-conv+BN downsample where the
shape changes, average pooling and one linear layer. Its state-dict keys (conv1, bn1,
layer{1,2,3}.{i}.conv1/bn1/conv2/bn2/downsample.{0,1}, fc) are the release's, so a released
checkpoint loads as it is. Its residual adds couple every block's output channels of a stage.

MobileNetV2 is the CIFAR variant: stride-1 stem and a stride-1 second stage (so 32x32 inputs keep
a 4x4 map at the end), inverted residual blocks whose depthwise 3x3 convs tie their in and out
channels (groups == channels) to the 1x1 expansion before them.
"""

from __future__ import annotations

import torch
from torch import nn

from pruning.models.layers import init_weights, scaled


def _kaiming(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)  # the add ties out and shortcut channels together


class CifarResNet(nn.Module):
    def __init__(self, depth: int, filters: tuple[int, int, int, int], num_classes: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth={depth} is invalid: a BasicBlock ResNet needs 6n+2")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = filters[0]
        for i, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2), strict=True)):
            layers = []
            for j in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)  # the release's AvgPool2d(8) at 32x32
        self.fc = nn.Linear(in_planes, num_classes)
        init_weights(self, _kaiming)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, 32, 32)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64w, 8, 8)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet56(num_classes: int = 10, width: float = 1.0) -> CifarResNet:
    """CIFAR ResNet-56; `width` scales every stage's channels."""
    filters = (16, 16, 32, 64)
    return CifarResNet(56, tuple(scaled(c, width) for c in filters), num_classes)  # type: ignore[arg-type]


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        # Depthwise: one 3x3 filter per channel (groups == channels).
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, cout, 1)  # linear bottleneck: no activation
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


# (expansion t, output channels c, blocks n, first stride s); CIFAR: stage 2 keeps stride 1.
MOBILENET_V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int, width: float) -> None:
        super().__init__()
        cin = scaled(32, width)
        layers: list[nn.Module] = [nn.Sequential(*_conv_bn(3, cin, 3), nn.ReLU6(inplace=True))]
        for t, c, n, s in MOBILENET_V2_STAGES:
            cout = scaled(c, width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = scaled(1280, width)
        layers.append(nn.Sequential(*_conv_bn(cin, last, 1), nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        init_weights(self, _kaiming)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, 32, 32)
        x = self.pool(self.features(x))  # (N, 1280w, 1, 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(num_classes: int = 10, width: float = 1.0) -> CifarMobileNetV2:
    """CIFAR MobileNetV2; `width` scales every layer's channels."""
    return CifarMobileNetV2(num_classes, width)
