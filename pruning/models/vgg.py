"""CIFAR VGG19-BN, layer-for-layer compatible with Torch-Pruning's `reproduce` VGG19.

Five convolution blocks (2, 2, 4, 4, 4 convs; 64, 128, 256, 512, 512 channels), each conv followed
by BatchNorm and ReLU, max-pooling between the first four blocks, global average pooling and one
linear classifier. At 32x32 input the fourth pooling is skipped (the reference model only pools
there at 64x64), which is why the model counts 512.73M MACs rather than ~400M.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pruning.models.checkpoints import CheckpointMismatchError, load_fitting, read_state_dict
from pruning.models.layers import init_weights, scaled
from pruning.validate import number_in

# Channel multipliers a model may be built with: (0, MAX_WIDTH]. 4x VGG19 is already ~8 G MACs.
MAX_WIDTH = 4.0

VGG19_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256, 256),
    (512, 512, 512, 512),
    (512, 512, 512, 512),
)


def check_width(width: object, field: str = "width") -> None:
    """The one check of a width multiplier, for configs and the model builder alike."""
    number_in(field, width, 0.0, MAX_WIDTH)


def _conv_block(widths: tuple[int, ...], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_channels in widths:
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        in_channels = out_channels
    # The block's last ReLU is applied in forward(), so module indices (and state_dict keys)
    # match the reference: conv at 3k, bn at 3k+1.
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, blocks: tuple[tuple[int, ...], ...], num_classes: int) -> None:
        super().__init__()
        in_channels = 3
        for i, widths in enumerate(blocks):
            setattr(self, f"block{i}", _conv_block(widths, in_channels))
            in_channels = widths[-1]
        for i in range(4):
            setattr(self, f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(in_channels, num_classes)
        init_weights(self, _normal_fan_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 3, H, W)
        height = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        if height == 64:
            x = self.pool3(x)
        x = self.pool4(F.relu(self.block4(x)))  # (N, C, 1, 1)
        return self.classifier(torch.flatten(x, 1))


def _normal_fan_out(conv: nn.Conv2d) -> None:
    """N(0, sqrt(2 / fan_out)), fan_out = kernel area x out channels (the reference's init)."""
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))


def vgg19(num_classes: int = 100, width: float = 1.0) -> VGG:
    """CIFAR VGG19-BN; `width` scales every conv's channels (at least 1 each)."""
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} is invalid: it must be >= 1")
    check_width(width)
    blocks = tuple(tuple(scaled(c, width) for c in block) for block in VGG19_BLOCKS)
    return VGG(blocks, num_classes)


def vgg19_widths(state: dict[str, torch.Tensor]) -> tuple[tuple[int, ...], ...]:
    """Every conv's output channels, per block, read from a VGG19 state dict's weight shapes."""
    blocks = []
    for i, reference in enumerate(VGG19_BLOCKS):
        keys = [f"block{i}.{3 * j}.weight" for j in range(len(reference))]
        if not all(k in state and state[k].dim() == 4 for k in keys):
            missing = [k for k in keys if k not in state]
            raise CheckpointMismatchError(
                f"not a CIFAR VGG19 state dict: block{i} needs conv weights {keys} "
                f"(missing: {missing or 'none, but some are not 4-D conv weights'})"
            )
        blocks.append(tuple(int(state[k].shape[0]) for k in keys))
    return tuple(blocks)


def vgg19_classes(state: dict[str, torch.Tensor]) -> int:
    if "classifier.weight" not in state:
        raise CheckpointMismatchError("not a CIFAR VGG19 state dict: no classifier.weight")
    return int(state["classifier.weight"].shape[0])


def uniform_width(blocks: tuple[tuple[int, ...], ...], hint: float | None = None) -> float | None:
    """The multiplier `w` for which vgg19(width=w) has exactly these conv widths, else None
    (a pruned model). `hint` (e.g. the width a schedule file names) is tried first."""
    candidates = [hint] if hint is not None else []
    candidates.append(blocks[0][0] / VGG19_BLOCKS[0][0])
    for width in candidates:
        expected = tuple(tuple(scaled(c, width) for c in block) for block in VGG19_BLOCKS)
        if expected == blocks:
            return width
    return None


def vgg19_from_state_dict(state: dict[str, torch.Tensor]) -> VGG:
    """A VGG19 whose per-layer widths are read from `state`: pruned checkpoints load as they are.

    A pruned VGG is still a plain VGG with narrower convs, so its weights need no pickled model
    object: the conv weight shapes say every width and the classifier says the class count.
    """
    model = VGG(vgg19_widths(state), num_classes=vgg19_classes(state))
    return load_fitting(model, state, "state dict does not fit a VGG19 of its own widths")


def load_vgg19(path: str | Path) -> VGG:
    """A VGG19 (unpruned or pruned) built to fit the checkpoint at `path`."""
    try:
        return vgg19_from_state_dict(read_state_dict(path))
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"checkpoint {path}: {err}") from None
