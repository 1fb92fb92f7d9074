"""The GPU check (issue 14): full-width VGG19 pruned to 8.84x on the CIFAR-10 JPEGs and fine-tuned.

It prints the training images/s of the dense and the pruned model, the time of one fine-tune
epoch and the projected time of 100, the measured inference latency speed-up (pruning.latency),
and one JSON line of all of them. Every step is the project's own code: load_dataset,
run_schedule (prune, BN recalibration, fine-tune), fit, measure_batches.

Accuracy is not the point: without --baseline the dense model is random-initialised and only the
timings mean something. With --baseline (a dense VGG19 state dict) the val accuracies are
printed too. Nothing here needs the network.

    experiments/gpu/check.sh [DATA]                        # the gpu tests, then this script
    PYTHONPATH=. python experiments/gpu/check.py --smoke   # CPU, seconds: the script works

DATA (--data): the JPEG tarball (default ../shared/data/cifar10-train-jpeg.tar.gz beside the
repository, unpacked once into --cache/cifar10-jpeg, as `make demo` does) or a folder holding
train/<class>/<image>.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning.data import BatchLoader, Dataset, DataSpec, Split, load_dataset
from pruning.devices import resolve_device
from pruning.latency import BATCHES, RUNS, WARMUP, Latency, latency_speedup, measure_batches
from pruning.models import load_vgg19, vgg19
from pruning.runner import StageResult, run_schedule
from pruning.schedule import Training, one_shot
from pruning.train import fit, validate

ROOT = Path(__file__).resolve().parents[2]
TARBALL = ROOT.parent / "shared" / "data" / "cifar10-train-jpeg.tar.gz"
CACHE = Path("~/.cache/prunetune-data")
SPEEDUP = 8.84  # the DepGraph paper's VGG19 CIFAR-100 result, the study's target
EPOCHS_PROJECTED = 100
TARGET_100_EPOCHS_S = 60.0  # issue 14's target on one H100-class GPU


@dataclass(frozen=True)
class Sizes:
    """How big the check is: the real one, or the CPU smoke run that proves the script works."""

    width: float  # VGG19 width multiplier (--baseline's own width wins)
    rate_images: int  # training images timed per throughput measurement (after a warm-up)
    latency_warmup: int  # untimed runs before each latency measurement
    latency_runs: int  # timed runs per latency measurement


FULL = Sizes(width=1.0, rate_images=10_240, latency_warmup=WARMUP, latency_runs=RUNS)
SMOKE = Sizes(width=0.125, rate_images=128, latency_warmup=2, latency_runs=5)
SMOKE_SAMPLES = 400  # generated images in smoke mode, a fifth of them val


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def jpeg_root(path: Path, cache: Path) -> Path:
    """The ImageFolder root of the CIFAR-10 JPEGs: `path` when it is a folder holding train/,
    else the tarball `path` unpacked once into cache/cifar10-jpeg (through a temporary folder,
    so an interrupted unpack is never taken for data)."""
    path, cache = path.expanduser(), cache.expanduser()
    if path.is_dir():
        if not (path / "train").is_dir():
            raise FileNotFoundError(f"--data {path}: no train/ in it (train/<class>/<image>)")
        return path
    if not path.is_file():
        raise FileNotFoundError(
            f"--data {path}: no such file or folder; pass the CIFAR-10 JPEG tarball "
            f"(cifar10-train-jpeg.tar.gz) or a folder holding train/<class>/<image>"
        )
    root = cache / "cifar10-jpeg"
    if not (root / "train").is_dir():
        log(f"unpacking {path} into {root} (once)")
        partial = cache / "cifar10-jpeg.partial"
        partial.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path) as tar:
            tar.extractall(partial, filter="data")
        if not (partial / "train").is_dir():
            raise FileNotFoundError(f"--data {path}: the tarball holds no train/ folder")
        root.mkdir(parents=True, exist_ok=True)
        (partial / "train").rename(root / "train")
        shutil.rmtree(partial)
    return root


def load_data(args: argparse.Namespace, device: torch.device) -> Dataset:
    if args.smoke:
        spec = DataSpec(name="synthetic", samples=SMOKE_SAMPLES, num_classes=10, val_size=0.2)
    else:
        spec = DataSpec(name="imagefolder", root=str(jpeg_root(args.data, args.cache)))
    return load_dataset(spec, device)


def dense_model(args: argparse.Namespace, sizes: Sizes, num_classes: int) -> nn.Module:
    """The baseline's VGG19 (its own widths), else a random-initialised one (seed 0)."""
    if args.baseline is None:
        torch.manual_seed(0)
        return vgg19(num_classes, sizes.width)
    model = load_vgg19(args.baseline)
    classes = model.classifier.out_features
    if classes != num_classes:
        raise ValueError(
            f"--baseline {args.baseline} has {classes} classes; the data have {num_classes}"
        )
    return model


def sample(split: Split, n: int) -> Split:
    """`n` images of `split` drawn at random (seed 0): the JPEGs are stored class by class."""
    idx = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(0))[:n]
    idx = idx.to(split.images.device)
    return Split(split.images[idx], split.labels[idx])


def training_rate(
    model: nn.Module, data: Dataset, training: Training, device: torch.device, images: int
) -> float:
    """Training images/s (fit: augmented batches, forward, backward, SGD step) of a copy of
    `model`, timed over `images` images after an untimed pass over a few batches, which
    allocates memory and loads the kernels these shapes use."""
    trial = copy.deepcopy(model)

    def one_pass(n: int) -> float:
        split = sample(data.train, n)
        loader = BatchLoader(
            split, training.batch_size, data.mean, data.std, augment=True, shuffle=True
        )
        fitted = fit(
            trial,
            loader,
            epochs=1,
            lr=0.01,
            lr_schedule="constant",
            training=training,
            device=device,
        )
        return fitted.images_per_second

    one_pass(4 * training.batch_size)  # warm-up
    return one_pass(images)


def latencies(
    dense: nn.Module, pruned: nn.Module, device: torch.device, sizes: Sizes
) -> tuple[dict[int, Latency], dict[int, Latency]]:
    """Inference latency of both models on `device`, measured back to back (same load)."""
    example = torch.zeros(1, 3, 32, 32)  # (1, C, H, W): only the shape matters
    kwargs = {"device": device, "warmup": sizes.latency_warmup, "runs": sizes.latency_runs}
    dense_lat = measure_batches(dense, example, BATCHES, **kwargs)
    return dense_lat, measure_batches(pruned, example, BATCHES, **kwargs)


def fine_tune(model: nn.Module, data: Dataset, speedup: float, device: torch.device) -> StageResult:
    """One-shot prune to `speedup`, BN recalibration, one fine-tune epoch: a trial's path. The
    epoch is the pruned model's first, so its time holds any one-off start-up cost of the new
    layer shapes (training_rate measures the warm rate after it)."""
    schedule = one_shot(speedup, epochs=1, lr=0.01, lr_schedule="cosine")

    def on_epoch(epoch: int, stats: dict[str, float]) -> None:
        log(f"  fine-tune epoch {epoch}: {stats['seconds']:.2f} s, loss {stats['train_loss']:.3f}")

    return run_schedule(model, data, schedule, device=device, seed=0, on_epoch=on_epoch)[0]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def measure_all(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    sizes = SMOKE if args.smoke else FULL
    start = time.perf_counter()
    data = load_data(args, device)
    log(f"data: {data.description}")
    model = dense_model(args, sizes, data.num_classes)
    dense = copy.deepcopy(model).eval()  # untouched, for the latency and the baseline accuracy
    training = Training()
    dense_rate = training_rate(model, data, training, device, sizes.rate_images)
    log(f"dense training: {dense_rate:,.0f} images/s")
    stage = fine_tune(model, data, args.speedup, device)
    pruned_rate = training_rate(model, data, training, device, sizes.rate_images)
    log(f"pruned training: {pruned_rate:,.0f} images/s")
    dense_lat, pruned_lat = latencies(dense, model, device, sizes)
    out: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "smoke": args.smoke,
        "width": sizes.width if args.baseline is None else None,
        "baseline": None if args.baseline is None else str(args.baseline),
        "train_images": len(data.train.labels),
        "batch_size": training.batch_size,
        "dense_images_per_s": dense_rate,
        "pruned_images_per_s": pruned_rate,
        "macs_speedup": stage.speedup,
        "prune_s": stage.prune_seconds,
        "finetune_epoch_s": stage.train_seconds,
        "projected_100_epochs_s": EPOCHS_PROJECTED * stage.train_seconds,
    }
    for b, s in latency_speedup(dense_lat, pruned_lat).items():
        out[f"dense_latency_ms_b{b}"] = dense_lat[b].median_ms
        out[f"pruned_latency_ms_b{b}"] = pruned_lat[b].median_ms
        out[f"latency_speedup_b{b}"] = s
    if args.baseline is not None:
        out["dense_val_acc"] = validate(dense, data, device)[0]
        out["val_acc_after_prune"] = stage.val_acc_after_prune
        out["val_acc_after_recal"] = stage.val_acc_after_recal
        out["val_acc"] = stage.val_acc
    out["total_s"] = time.perf_counter() - start
    return out


def summary(r: dict[str, Any]) -> list[str]:
    """The human-readable lines (the JSON line follows them)."""
    lines = [
        f"device: {r['device']} ({r['device_name']}), torch {r['torch']}",
        f"training images/s (batch {r['batch_size']}): dense {r['dense_images_per_s']:,.0f}, "
        f"pruned {r['pruned_images_per_s']:,.0f}",
        f"pruned to {r['macs_speedup']:.2f}x MACs in {r['prune_s']:.1f} s",
        f"one fine-tune epoch ({r['train_images']:,} images): {r['finetune_epoch_s']:.2f} s; "
        f"{EPOCHS_PROJECTED} epochs projected: {r['projected_100_epochs_s']:.0f} s"
        + ("" if r["smoke"] else f" (target <= {TARGET_100_EPOCHS_S:.0f} s, one H100-class GPU)"),
    ]
    for b in BATCHES:
        lines.append(
            f"latency, batch {b}: dense {r[f'dense_latency_ms_b{b}']:.3f} ms, pruned "
            f"{r[f'pruned_latency_ms_b{b}']:.3f} ms: {r[f'latency_speedup_b{b}']:.2f}x speed-up"
        )
    if r["baseline"] is None:
        lines.append(
            "accuracy: not measured, and not the point: the dense model is random-initialised "
            "(timing only); pass --baseline for accuracy"
        )
    else:
        lines.append(
            f"val accuracy: dense {r['dense_val_acc']:.4f}, after prune "
            f"{r['val_acc_after_prune']:.4f}, after BN recalibration "
            f"{r['val_acc_after_recal']:.4f}, after one epoch {r['val_acc']:.4f}"
        )
    lines.append(f"total: {r['total_s']:.1f} s")
    return lines


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=TARBALL, help=f"tarball or folder ({TARBALL})")
    p.add_argument("--cache", type=Path, default=CACHE, help=f"where a tarball unpacks ({CACHE})")
    p.add_argument("--baseline", type=Path, help="a dense VGG19 state dict (else random init)")
    p.add_argument("--speedup", type=float, default=SPEEDUP, help=f"MACs speed-up ({SPEEDUP})")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu (default auto)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="VGG19 x0.125 on a few hundred generated images: proves the script works, on a CPU",
    )
    p.add_argument("--json-out", type=Path, help="also write the JSON here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    device = resolve_device(args.device)
    if device.type != "cuda" and not args.smoke and args.device == "auto":
        raise SystemExit(
            "no CUDA device is visible: this check is for a GPU. Use --smoke to check the script "
            "on the CPU, or --device cpu to time full-width VGG19 on the CPU anyway (slow)."
        )
    result = measure_all(args, device)
    print("\n".join(summary(result)))
    line = json.dumps(result)
    print(line, flush=True)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
