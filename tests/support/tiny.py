"""The tiny model and data the runner-level tests train: VGG19 at 1/8 width, seeded, on
generated 4-class 32x32 images."""

from __future__ import annotations

import torch

from pruning.data import Dataset, DataSpec, load_dataset
from pruning.models import vgg19


def tiny_data(samples: int) -> Dataset:
    """`samples` generated images of 4 classes, a fifth of them for validation."""
    return load_dataset(DataSpec(name="synthetic", samples=samples, num_classes=4, val_size=0.2))


def tiny_vgg() -> torch.nn.Module:
    """VGG19 at 1/8 width for 4 classes, the same weights every call (seed 0)."""
    torch.manual_seed(0)
    return vgg19(4, 0.125)
