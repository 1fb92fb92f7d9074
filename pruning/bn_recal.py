"""BatchNorm recalibration: re-estimate every BN layer's running statistics after a prune.

Pruning removes channels, so the running means and variances the next layers' BN kept were
measured on inputs that no longer exist; evaluated with them, every pruned model reads as chance.
A few forward passes over training images (no gradients, augmentation off) give the accuracy
the pruned weights really have.

It does not change training: train mode normalises with batch statistics, the loader has its own
generator (the global torch RNG is not drawn from), and the weights are not touched. Only the
running statistics a later fine-tune starts its moving average from differ.
"""

from __future__ import annotations

import torch
from torch import nn

from pruning.data import BatchLoader, Split, Stats


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recal_loader(split: Split, batch_size: int, mean: Stats, std: Stats, seed: int) -> BatchLoader:
    """Shuffled, un-augmented batches; `seed` fixes which images (its own generator)."""
    return BatchLoader(split, batch_size, mean, std, augment=False, shuffle=True, seed=seed)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, loader: BatchLoader, batches: int, device: torch.device
) -> int:
    """Reset every BN layer's running statistics and re-estimate them as the cumulative average
    (momentum None) over the loader's first `batches` batches. Every other module stays in eval
    mode (dropout draws no random numbers). Each BN layer's momentum and the model's mode are
    restored. Returns the images seen (0: no BN layer, or `batches` 0)."""
    norms = batch_norms(model)
    if batches <= 0 or not norms:
        return 0
    model.to(device)
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # running stat = mean over the batches seen so far
        m.train()
    seen = 0
    try:
        for i, (x, _) in enumerate(loader):
            if i == batches:
                break
            x = x.to(device)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            # same precision rules as training: bf16 autocast on CUDA only
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                model(x)
            seen += len(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return seen
