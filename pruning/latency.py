"""Measured inference latency: what a model's MACs speed-up is worth on a real device.

Fewer MACs do not always make a model faster (odd widths, memory-bound early layers), so this
times the model itself. CPU: in the torch threads given (set for the measurement, restored after),
warm-up runs, then the median of `runs` timed runs with the spread. CUDA: the same, each run
bracketed by torch.cuda.synchronize so the kernels are timed, not their launch.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from pruning.validate import positive_int, require

BATCHES: tuple[int, ...] = (1, 64)  # one image (interactive) and a throughput batch
WARMUP = 10
RUNS = 60
# What a search's trial and a replay measure with: a few runs per model, so a trial pays little
# (the dense model and each stage's, at every batch size); the bench measures with more.
STAGE_WARMUP = 5
STAGE_RUNS = 20

Timer = Callable[[], float]  # seconds, monotonic (time.perf_counter or a test's fake)


@dataclass(frozen=True)
class Latency:
    """One model's measured latency at one batch size (milliseconds per batch)."""

    batch: int
    threads: int
    device: str
    median_ms: float
    min_ms: float
    max_ms: float
    iqr_ms: float  # interquartile range of the timed runs: the spread on a shared machine
    runs: int


def summarize(times_ms: Sequence[float], batch: int, threads: int, device: str) -> Latency:
    """The median and spread of timed runs (milliseconds)."""
    q1, _, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
    return Latency(
        batch=batch,
        threads=threads,
        device=device,
        median_ms=statistics.median(times_ms),
        min_ms=min(times_ms),
        max_ms=max(times_ms),
        iqr_ms=q3 - q1,
        runs=len(times_ms),
    )


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` inside, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(
    model: nn.Module,
    example: torch.Tensor,
    batch: int,
    *,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    warmup: int = WARMUP,
    runs: int = RUNS,
    timer: Timer = time.perf_counter,
) -> Latency:
    """Latency of `model` on a batch of `batch` inputs shaped like `example` (1, C, H, W).

    The model is put in eval mode on `device` (its previous training flag is restored), on CUDA
    in channels_last as training leaves it; the input is zeros (latency of dense convs does not
    depend on the values).
    """
    threads = torch.get_num_threads() if threads is None else threads
    for name, value, least in (("batch", batch, 1), ("runs", runs, 2), ("threads", threads, 1)):
        positive_int(name, value, least)  # runs >= 2: the spread needs two timings
    positive_int("warmup", warmup)
    device = torch.device(device)
    x = torch.zeros((batch, *example.shape[1:]), dtype=example.dtype, device=device)
    was_training = model.training
    model.to(device).eval()
    if device.type == "cuda" and x.dim() == 4:
        # Training's layout (pruning.train), whatever the model last ran in: a model fine-tuned
        # on CUDA is channels_last, an unpruned one just loaded is not, and timing the two in
        # different layouts would put the layout change into their speed-up.
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    try:
        with torch_threads(threads), torch.inference_mode():
            times = _timed_runs(model, x, device, warmup, runs, timer)
    finally:
        model.train(was_training)
    return summarize(times, batch, threads, str(device))


def _timed_runs(
    model: nn.Module, x: torch.Tensor, device: torch.device, warmup: int, runs: int, timer: Timer
) -> list[float]:
    """Milliseconds of each of `runs` forward passes after `warmup` untimed ones."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(runs):
        start = timer()
        model(x)
        sync()  # CUDA runs asynchronously: wait for the kernels before stopping the clock
        times.append((timer() - start) * 1e3)
    return times


def measure_batches(
    model: nn.Module, example: torch.Tensor, batches: Sequence[int] = BATCHES, **kwargs
) -> dict[int, Latency]:
    """measure() at each batch size; the keyword arguments are measure()'s."""
    return {b: measure(model, example, b, **kwargs) for b in batches}


def latency_speedup(dense: dict[int, Latency], pruned: dict[int, Latency]) -> dict[int, float]:
    """Dense median over pruned median for each batch size both were measured at."""
    return {b: dense[b].median_ms / pruned[b].median_ms for b in dense if b in pruned}


@dataclass(frozen=True)
class LatencySettings:
    """How a schedule run measures latency (an experiment's `latency` section): the batch sizes
    (the first one is the primary, reported as latency_ms / latency_speedup), warm-up and timed
    runs per model and batch. enabled=False measures nothing (no latency metric is reported)."""

    enabled: bool = True
    batches: tuple[int, ...] = BATCHES
    warmup: int = STAGE_WARMUP
    runs: int = STAGE_RUNS

    def __post_init__(self) -> None:
        require(isinstance(self.enabled, bool), "latency.enabled", self.enabled, "true or false")
        require(
            isinstance(self.batches, tuple) and len(self.batches) > 0,
            "latency.batches",
            self.batches,
            "a non-empty list of batch sizes, e.g. [1, 64]",
        )
        for b in self.batches:
            positive_int("latency.batches[]", b, minimum=1)
        require(
            len(set(self.batches)) == len(self.batches),
            "latency.batches",
            self.batches,
            "each batch size once",
        )
        positive_int("latency.warmup", self.warmup)
        positive_int("latency.runs", self.runs, minimum=2)  # the spread needs two timings

    @property
    def primary(self) -> int:
        """The batch size latency_ms and latency_speedup are reported at."""
        return self.batches[0]

    def measure(
        self,
        model: nn.Module,
        example: torch.Tensor,
        device: torch.device | str = "cpu",
        timer: Timer = time.perf_counter,
    ) -> dict[int, Latency]:
        """measure_batches with these settings, in the current torch threads."""
        return measure_batches(
            model,
            example,
            self.batches,
            device=device,
            warmup=self.warmup,
            runs=self.runs,
            timer=timer,
        )
