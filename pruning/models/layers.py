"""What the built-in models (VGG19, ResNet-56, MobileNetV2) share: the width rule and the weight
initialisation around each one's own conv initialiser."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def scaled(channels: int, width: float) -> int:
    """A layer's channels under a width multiplier (at least one)."""
    return max(1, round(channels * width))


def init_weights(model: nn.Module, conv_init: Callable[[nn.Conv2d], None]) -> None:
    """Convs by `conv_init` (biases zero), BatchNorm as identity, linear layers N(0, 0.01) with
    zero bias. Modules are visited in model.modules() order: the RNG draws follow it."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            conv_init(m)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
