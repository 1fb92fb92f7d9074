"""The CUDA code path (issue 14): data resident on the device, bf16 autocast and channels_last in
training with an fp32 loss, BN recalibration, synchronised latency timing, and a pruned model
fine-tuned there. Marked gpu: skipped where torch sees no CUDA device (tests/conftest.py), run by
experiments/gpu/check.sh. The CPU comparisons hold because every loader draws its shuffle and
crops from a CPU generator, so both devices see the same images."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from support.tiny import tiny_vgg
from torch import nn

from pruning.bn_recal import batch_norms, recal_loader, recalibrate_bn
from pruning.data import BatchLoader, Dataset, DataSpec, load_dataset
from pruning.latency import measure
from pruning.runner import run_schedule
from pruning.schedule import Training, one_shot
from pruning.train import evaluate, fit, train_loader, validate

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
SPEC = DataSpec(name="synthetic", samples=800, num_classes=4, val_size=0.2)


def data_on(device: torch.device | str) -> Dataset:
    return load_dataset(SPEC, device)


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_the_splits_and_their_batches_live_on_the_device() -> None:
    data, on_cpu = data_on(CUDA), data_on("cpu")
    for split in (data.train, data.val, data.test):
        assert split is not None
        assert split.images.device.type == "cuda" and split.images.dtype == torch.uint8
        assert split.labels.device.type == "cuda"
    for augment in (True, False):
        batches = [
            next(iter(BatchLoader(d.train, 64, d.mean, d.std, augment=augment, shuffle=True)))
            for d in (data, on_cpu)
        ]
        (x, y), (x_cpu, y_cpu) = batches
        assert x.device.type == "cuda" and y.device.type == "cuda"
        assert x.dtype == torch.float32 and x.shape == (64, 3, 32, 32)
        # the same images, crops and flips as on the CPU: the generator lives on the CPU
        assert torch.equal(y.cpu(), y_cpu)
        torch.testing.assert_close(x.cpu(), x_cpu)


def test_training_autocasts_to_bf16_in_channels_last_and_the_loss_is_fp32(monkeypatch) -> None:
    data = data_on(CUDA)
    model = tiny_vgg()
    conv = first_conv(model)
    seen: dict[str, object] = {}

    def on_conv(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        seen.setdefault("input", inputs[0])
        seen["output_dtype"] = output.dtype

    conv.register_forward_hook(on_conv)
    real_cross_entropy = F.cross_entropy

    def spy(logits: torch.Tensor, y: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        loss = real_cross_entropy(logits, y, *args, **kwargs)
        seen["logits"], seen["loss"] = logits.dtype, loss.dtype
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    result = fit(
        model,
        train_loader(data, 64, 0),
        epochs=1,
        lr=0.01,
        lr_schedule="constant",
        training=Training(batch_size=64),
        device=CUDA,
    )
    x = seen["input"]
    assert isinstance(x, torch.Tensor) and x.device.type == "cuda"
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.dtype == torch.float32 and conv.weight.device.type == "cuda"  # fp32 master
    assert seen["output_dtype"] == torch.bfloat16  # autocast on: the convs ran in bf16
    assert seen["logits"] == torch.bfloat16  # the classifier too; its loss is taken in fp32
    assert seen["loss"] == torch.float32
    assert math.isfinite(result.history[0]["train_loss"])
    # evaluation: bf16 forward, logits taken back to fp32 for the cross-entropy
    seen.clear()
    acc, loss = evaluate(model, data.val, data.mean, data.std, CUDA)
    assert seen["output_dtype"] == torch.bfloat16 and seen["logits"] == torch.float32
    assert 0.0 <= acc <= 1.0 and math.isfinite(loss)


def test_a_short_fit_lowers_the_loss_on_cuda() -> None:
    data = data_on(CUDA)
    model = tiny_vgg()
    before, _ = validate(model, data, CUDA)
    result = fit(
        model,
        train_loader(data, 64, 0),
        epochs=3,
        lr=0.05,
        lr_schedule="cosine",
        training=Training(batch_size=64),
        device=CUDA,
    )
    after, _ = validate(model, data, CUDA)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert after > max(before, 1.5 / data.num_classes)
    assert all(p.device.type == "cuda" for p in model.parameters())


def test_bn_recalibration_on_cuda_matches_the_cpu() -> None:
    stats = {}
    for device in (CUDA, torch.device("cpu")):
        data = data_on(device)
        model = tiny_vgg()
        loader = recal_loader(data.train, 64, data.mean, data.std, seed=0)
        assert recalibrate_bn(model, loader, 3, device) == 3 * 64
        bn = batch_norms(model)[0]
        assert bn.running_mean.device.type == device.type and int(bn.num_batches_tracked) == 3
        stats[device.type] = (bn.running_mean.cpu(), bn.running_var.cpu())
    # the same images, the first layer's statistics from a bf16 conv: within bf16's precision
    for got, want in zip(stats["cuda"], stats["cpu"], strict=True):
        assert torch.isfinite(got).all() and got.abs().sum() > 0
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


class FakeClock:
    """perf_counter's stand-in: each run (a start, then a stop) lasts 1 ms more than the last;
    every reading is logged beside torch.cuda.synchronize's calls."""

    def __init__(self, events: list[str]) -> None:
        self.events, self.now, self.readings = events, 0.0, 0

    def __call__(self) -> float:
        self.events.append("clock")
        self.readings += 1
        if self.readings % 2 == 0:  # a stop
            self.now += self.readings / 2 * 1e-3
        return self.now


def test_cuda_latency_synchronises_before_each_stop_of_the_clock(monkeypatch) -> None:
    events: list[str] = []
    real_synchronize = torch.cuda.synchronize

    def synchronize(*args, **kwargs) -> None:
        events.append("sync")
        real_synchronize(*args, **kwargs)

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    model = tiny_vgg()
    conv = first_conv(model)
    layouts: list[bool] = []
    conv.register_forward_hook(
        lambda m, i, o: layouts.append(i[0].is_contiguous(memory_format=torch.channels_last))
    )
    lat = measure(
        model, torch.zeros(1, 3, 32, 32), 8, device=CUDA, warmup=2, runs=5, timer=FakeClock(events)
    )
    # warm-up kernels finished before the first start; every stop after its run's kernels
    assert events == ["sync"] + ["clock", "sync", "clock"] * 5
    assert lat.median_ms == pytest.approx(3.0) and (lat.min_ms, lat.max_ms) == pytest.approx((1, 5))
    assert lat.device == "cuda" and lat.runs == 5
    assert layouts == [True] * 7  # timed in training's layout, channels_last
    assert not model.training


def test_a_pruned_model_fine_tunes_on_cuda() -> None:
    data = data_on(CUDA)
    model = tiny_vgg()
    losses: list[float] = []
    schedule = one_shot(4.0, epochs=4, lr=0.1, lr_schedule="cosine")
    (stage,) = run_schedule(
        model,
        data,
        schedule,
        device=CUDA,
        seed=0,
        on_epoch=lambda epoch, stats: losses.append(stats["train_loss"]),
    )
    assert stage.speedup == pytest.approx(4.0, rel=0.01)
    assert stage.bn_recal_images > 0 and len(losses) == 4
    # on the CPU (same data and seed): loss 1.38 -> 1.01, val accuracy 0.23 -> 0.49
    assert losses[-1] < 0.9 * losses[0]
    assert stage.val_acc > max(stage.val_acc_after_recal, 1 / data.num_classes)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert first_conv(model).weight.is_contiguous(memory_format=torch.channels_last)
