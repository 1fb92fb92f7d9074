"""Measured latency (pruning/latency.py): median and spread, threads, real timings, CUDA path."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pruning.latency import latency_speedup, measure, measure_batches


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


EXAMPLE = torch.zeros(1, 3, 8, 8)


class FakeTimer:
    """A clock that advances by the next of `durations` (seconds) on every stop of a timed run."""

    def __init__(self, durations: list[float]) -> None:
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def __call__(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:  # the stop of a run: its duration has passed
            self.now += self.durations.pop(0)
        return self.now


def test_median_and_spread_from_a_fake_timer() -> None:
    ms = [5, 1, 3, 2, 4, 100, 6, 7, 8]  # one outlier (100 ms): the median ignores it
    timer = FakeTimer([m / 1e3 for m in ms])
    lat = measure(tiny(), EXAMPLE, 2, warmup=3, runs=len(ms), timer=timer, threads=1)
    assert timer.calls == 2 * len(ms)  # the warm-up runs are not timed
    assert lat.median_ms == pytest.approx(5.0)
    assert (lat.min_ms, lat.max_ms) == pytest.approx((1.0, 100.0))
    assert lat.iqr_ms == pytest.approx(7.0 - 3.0)  # quartiles of the nine runs: 3 and 7
    assert (lat.batch, lat.threads, lat.device, lat.runs) == (2, 1, "cpu", 9)


def test_threads_are_set_inside_and_restored_after() -> None:
    seen: list[int] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.get_num_threads())
            return x

    before = torch.get_num_threads()
    want = 2 if before != 2 else 1
    lat = measure(Probe(), EXAMPLE, 1, threads=want, warmup=1, runs=3)
    assert seen == [want] * 4 and lat.threads == want
    assert torch.get_num_threads() == before
    assert measure(Probe(), EXAMPLE, 1, warmup=0, runs=2).threads == before  # default: current


def test_a_real_measurement_is_positive_and_finite_and_keeps_the_mode() -> None:
    model = tiny().train()
    lats = measure_batches(model, EXAMPLE, (1, 4), warmup=2, runs=5)
    assert set(lats) == {1, 4} and model.training
    for lat in lats.values():
        values = (lat.median_ms, lat.min_ms, lat.max_ms)
        assert all(v > 0 and math.isfinite(v) for v in values)
        assert lat.min_ms <= lat.median_ms <= lat.max_ms and lat.iqr_ms >= 0


def test_speedup_of_a_model_against_itself_is_one() -> None:
    durations = [0.002, 0.003, 0.004] * 2  # the same timings for both models, batch by batch
    for batch in (1, 64):
        dense = measure_batches(tiny(), EXAMPLE, (batch,), runs=3, timer=FakeTimer(durations))
        pruned = measure_batches(tiny(), EXAMPLE, (batch,), runs=3, timer=FakeTimer(durations))
        assert latency_speedup(dense, pruned) == {batch: 1.0}


@pytest.mark.parametrize("field,value", [("batch", 0), ("runs", 1), ("threads", 0)])
def test_bad_settings_are_refused_naming_the_field(field: str, value: int) -> None:
    kwargs = {"batch": 1, "runs": 3, "threads": 1} | {field: value}
    batch = kwargs.pop("batch")
    with pytest.raises(ValueError, match=field):
        measure(tiny(), EXAMPLE, batch, **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_measurement_is_synchronised() -> None:
    lat = measure(tiny(), EXAMPLE, 64, device="cuda", warmup=3, runs=5)
    assert lat.device.startswith("cuda") and 0 < lat.min_ms <= lat.median_ms
