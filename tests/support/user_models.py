"""User model factories for the model-registry tests (`support.user_models:NAME` as model.arch).

`tiny_net` couples channels both ways the engine must keep consistent: a concatenation of two
branches and a residual add.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, channels: int) -> None:
        super().__init__()
        self.stem = _conv(3, channels)
        self.left = _conv(channels, channels)
        self.right = _conv(channels, channels)
        self.mix = _conv(2 * channels, 2 * channels, stride=2)  # reads the concatenation
        self.block = nn.Sequential(
            _conv(2 * channels, 2 * channels), nn.Conv2d(2 * channels, 2 * channels, 3, 1, 1)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, H, W)
        x = self.stem(x)
        x = self.mix(torch.cat([self.left(x), self.right(x)], dim=1))
        x = torch.relu(x + self.block(x))  # residual add: block's output tied to mix's
        return self.head(torch.flatten(self.pool(x), 1))


def tiny_net(num_classes: int = 10, channels: int = 16) -> TinyNet:
    return TinyNet(num_classes, channels)


def not_a_module(num_classes: int = 10) -> dict[str, int]:
    return {"num_classes": num_classes}


class _Broken(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(7, num_classes)  # expects 7 features; gets 3*H*W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(x, 1))


def broken_forward(num_classes: int = 10) -> nn.Module:
    return _Broken(num_classes)


def raises(**kwargs: object) -> nn.Module:
    raise RuntimeError("factory refuses")
