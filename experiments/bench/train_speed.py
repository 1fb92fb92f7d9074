"""Training throughput: prunetune's loop vs. a `reproduce/main.py`-style loop on the same model.

The reference feeds a torchvision DataLoader (2 workers) over uint8 HWC images turned into PIL
images per sample (as torchvision's CIFAR datasets do) with RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor and Normalize, and moves each batch with .to(device). prunetune
keeps the split as one uint8 tensor on the device and augments whole batches there.

    PYTHONPATH=. python experiments/bench/train_speed.py \
        --data imagefolder:~/.cache/prunetune-data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from pruning.data import BatchLoader, DataSpec, Split, load_dataset
from pruning.devices import resolve_device
from pruning.models import vgg19
from pruning.prune import prune_to_speedup
from pruning.schedule import Training
from pruning.train import fit, make_optimizer


class PILDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10.__getitem__ does: HWC uint8 -> PIL -> transforms."""

    def __init__(self, split: Split, transform: transforms.Compose) -> None:
        self.images = split.images.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3) uint8
        self.labels = split.labels.cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def reference_epoch(model, split, mean, std, training, lr, device) -> float:
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    loader = DataLoader(
        PILDataset(split, tf),
        batch_size=training.batch_size,
        shuffle=True,
        num_workers=2,
        drop_last=False,
    )
    optimizer = make_optimizer(model, lr, training)
    model.to(device).train()
    start, seen = time.perf_counter(), 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def prunetune_epoch(model, split, mean, std, training, lr, device) -> float:
    loader = BatchLoader(split, training.batch_size, mean, std, augment=True, shuffle=True)
    result = fit(
        model, loader, epochs=1, lr=lr, lr_schedule="constant", training=training, device=device
    )
    return result.images_per_second


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic", help="NAME[:ROOT] as in prunetune --data")
    p.add_argument("--images", type=int, default=5000, help="training images per epoch")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--speedup", type=float, default=8.84)
    p.add_argument("--repeats", type=int, default=3, help="epochs per loop, alternating")
    p.add_argument("--device", default="auto")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()

    device = resolve_device(args.device)
    name, _, root = args.data.partition(":")
    spec = DataSpec(
        name=name,
        root=str(Path(root).expanduser()) if root else None,
        train_subset=args.images,
        samples=max(2000, int(args.images * 1.2)),
    )
    data = load_dataset(spec, device)
    torch.manual_seed(0)
    model = vgg19(data.num_classes, args.width).eval()
    report = prune_to_speedup(model, torch.zeros(1, 3, 32, 32), args.speedup)
    training = Training()
    rates: dict[str, list[float]] = {"reference": [], "prunetune": []}
    for _ in range(args.repeats):  # alternate so both see the same machine state
        rates["reference"].append(
            reference_epoch(model, data.train, data.mean, data.std, training, 0.01, device)
        )
        rates["prunetune"].append(
            prunetune_epoch(model, data.train, data.mean, data.std, training, 0.01, device)
        )
    ref, ours = (statistics.median(rates[k]) for k in ("reference", "prunetune"))
    machine = (
        f"{platform.platform()} | cpus {os.cpu_count()} | torch threads "
        f"{torch.get_num_threads()} | device {device} | torch {md.version('torch')}"
    )
    print(machine)
    print(f"data: {data.description}")
    print(
        f"model: VGG19 x{args.width} pruned to {report.speedup:.2f}x "
        f"({report.macs / 1e6:.2f}M MACs, {report.params / 1e6:.3f}M params), "
        f"{len(data.train.labels)} images/epoch, batch {training.batch_size}"
    )
    print(f"{'loop':<12} {'img/s (median)':>15}  per-epoch img/s")
    for k, v in rates.items():
        print(f"{k:<12} {statistics.median(v):>15.0f}  {', '.join(f'{r:.0f}' for r in v)}")
    print(f"ratio prunetune/reference: {ours / ref:.2f}x")
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {"machine": machine, "data": data.description, "rates": rates, "ratio": ours / ref},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
