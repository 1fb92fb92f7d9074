"""Landing on a measured latency speed-up: an experiment's `target: {latency_speedup: S}`.

Fewer MACs do not make a model proportionally faster, so a latency target cannot be turned into
a MACs target by a formula. As NetAdapt does, but without its per-layer lookup table: the MACs
predictor (pruning.prune) brackets and measurements settle. Each probe prunes a deep copy of the
model to a MACs speed-up with the run's own prune and times it (pruning.latency); the next MACs
speed-up comes from a secant in (log MACs speed-up, log latency speed-up), inside the bracket of
the probes below and above S, between the MACs speed-up the model already has and the channel
floor's cap. The landing is the requested MACs speed-up of the probe that measured within the
tolerance (or the closest one after `max_probes`); a schedule records it, so a replay prunes to
exactly that MACs speed-up again.

Probes leave torch's RNG as they found it, so pruning the real model to the landed MACs
speed-up afterwards gives the probe's model, even with the random importance.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pruning.latency import Latency, LatencySettings, Timer, measure
from pruning.models import build_model
from pruning.prune import TOLERANCE as MACS_TOLERANCE
from pruning.prune import PruneReport, count_macs_params, floor_speedup, prune_to_speedup
from pruning.schedule import MAX_SPEEDUP, Schedule
from pruning.validate import number_in, positive_int, require

TOLERANCE = 0.05  # a landing measures within +-5% (relative) of the requested latency speed-up
MAX_PROBES = 8  # pruned copies timed at most per landing
# Probes whose MACs speed-ups are this close (relative) prune to the same widths on small models
# (one channel moves MACs by more): the search stops instead of timing the same model again.
_SAME_PROBE = 0.005
# A secant step inside the bracket lands at least this fraction of its width from either end,
# so the bracket shrinks on every step even where the curve bends (regula falsi's stall).
_MIN_STEP = 0.15

Prune = Callable[[nn.Module, float], PruneReport]  # prunes in place to a MACs speed-up
TimeModel = Callable[[nn.Module], Latency]  # one model's latency at the target's batch


@dataclass(frozen=True)
class LatencyTarget:
    """An experiment's `target` section: a measured latency speed-up instead of a MACs one."""

    latency_speedup: float  # S: the dense model's median latency over the pruned model's
    tolerance: float = TOLERANCE  # relative: a landing measures within S * (1 +- tolerance)
    max_probes: int = MAX_PROBES

    def __post_init__(self) -> None:
        number_in("target.latency_speedup", self.latency_speedup, 1.0, MAX_SPEEDUP)
        number_in("target.tolerance", self.tolerance, 0.0, 0.5)
        positive_int("target.max_probes", self.max_probes, minimum=1)

    def miss(self, latency_speedup: float) -> float:
        """How far a measured speed-up is from S, relative (0: on it)."""
        return abs(latency_speedup / self.latency_speedup - 1.0)

    def met(self, latency_speedup: float) -> bool:
        return self.miss(latency_speedup) <= self.tolerance


@dataclass(frozen=True)
class Probe:
    """One pruned copy, timed."""

    macs_speedup: float  # requested of the prune (what a schedule records)
    achieved_macs_speedup: float  # base MACs / the copy's MACs (within prune's 1% of it)
    latency_ms: float  # median of the timed runs
    iqr_ms: float
    latency_speedup: float  # dense median / this median


@dataclass(frozen=True)
class Landing:
    """Where a latency target landed: the MACs speed-up to prune to and what it measured."""

    target: float  # S
    tolerance: float
    met: bool  # the landing measured within the tolerance
    macs_speedup: float  # the landed, requested MACs speed-up (the schedule's last stage)
    latency_speedup: float  # measured at the landing
    # The speed-up's spread: the first-order width of its interquartile band, from both
    # models' IQRs (a ratio's relative spread is about the sum of its terms').
    latency_spread: float
    dense_ms: float
    dense_iqr_ms: float
    latency_ms: float
    iqr_ms: float
    batch: int
    cap: float  # the floor's cap: the largest MACs speed-up probed for
    probes: tuple[Probe, ...]

    def metrics(self) -> dict[str, float]:
        """What a tracker gets (the probes stay in metrics.json)."""
        return {
            "landing_target": self.target,
            "landing_met": float(self.met),
            "landing_macs_speedup": self.macs_speedup,
            "landing_latency_speedup": self.latency_speedup,
            "landing_latency_spread": self.latency_spread,
            "landing_probes": float(len(self.probes)),
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def land(
    model: nn.Module,
    target: LatencyTarget,
    *,
    prune: Prune,
    time_model: TimeModel,
    dense: Latency,
    low: float,
    cap: float,
    guess: float | None = None,
) -> Landing:
    """Find the MACs speed-up at which `model`, pruned by `prune`, measures S (the model is not
    changed: every probe is a copy).

    `dense`: the unpruned model's latency (the reference, same batch and settings as
    `time_model`). `low`: the MACs speed-up `model` already has (1.0 when unpruned); `cap`:
    the floor's (floor_cap). `guess`: the first MACs speed-up to probe (default S itself).
    Raises ValueError naming target.latency_speedup when the model pruned to the cap measures
    short of S: the best speed-up measured is the most it can reach.
    """
    hi = cap * (1 - MACS_TOLERANCE)  # prune's prediction of the floor may differ by its 1%
    lo = min(low, hi)
    x = _clamp(guess or target.latency_speedup, lo, hi)
    probes: list[Probe] = []
    while True:
        probes.append(_probe(model, x, prune, time_model, dense))
        if target.met(probes[-1].latency_speedup):
            break
        if x >= hi and probes[-1].latency_speedup < target.latency_speedup:
            raise _unreachable(target, probes, dense, cap)  # short of S at the floor's cap
        if len(probes) >= target.max_probes:
            break
        following = _next_speedup(probes, target.latency_speedup, lo, hi)
        if any(abs(math.log(following / p.macs_speedup)) < _SAME_PROBE for p in probes):
            break  # the bracket is narrower than a channel: nothing new to time
        x = following
    return _landing(target, probes, dense, cap)


def _probe(
    model: nn.Module, x: float, prune: Prune, time_model: TimeModel, dense: Latency
) -> Probe:
    copied = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # the real prune afterwards sees the same RNG
        report = prune(copied, x)
    latency = time_model(copied)
    return Probe(
        macs_speedup=x,
        achieved_macs_speedup=report.speedup,
        latency_ms=latency.median_ms,
        iqr_ms=latency.iqr_ms,
        latency_speedup=dense.median_ms / latency.median_ms,
    )


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _next_speedup(probes: list[Probe], target: float, lo: float, hi: float) -> float:
    """The next MACs speed-up to probe: a secant in (log MACs, log latency) speed-ups.

    The dense model is the point (0, 0). With probes on both sides of S: interpolate between
    the highest one below S and the lowest one above it (kept _MIN_STEP inside the bracket).
    With none above: extrapolate through the two highest below; where noise makes that slope
    flat or negative, through the dense point and the highest; failing that, double it.
    """
    s = math.log(target)
    points = [(0.0, 0.0)] + [
        (math.log(p.achieved_macs_speedup), math.log(p.latency_speedup)) for p in probes
    ]
    over = [pt for pt in points if pt[1] > s]
    if over:
        b = min(over)
        a = max((pt for pt in points if pt[1] < s and pt[0] < b[0]), default=(0.0, 0.0))
        t = (s - a[1]) / (b[1] - a[1])
        x = a[0] + _clamp(t, _MIN_STEP, 1 - _MIN_STEP) * (b[0] - a[0])
    else:
        a, b = sorted(points)[-2:][::-1]
        slope = (a[1] - b[1]) / (a[0] - b[0]) if a[0] > b[0] else 0.0
        slope = slope if slope > 0 else (a[1] / a[0] if a[0] > 0 else 0.0)
        x = a[0] + (s - a[1]) / slope if slope > 0 else a[0] + math.log(2.0)
    return _clamp(math.exp(x), lo, hi)


def _landing(target: LatencyTarget, probes: list[Probe], dense: Latency, cap: float) -> Landing:
    best = min(probes, key=lambda p: target.miss(p.latency_speedup))
    relative = best.iqr_ms / best.latency_ms + dense.iqr_ms / dense.median_ms
    return Landing(
        target=target.latency_speedup,
        tolerance=target.tolerance,
        met=target.met(best.latency_speedup),
        macs_speedup=best.macs_speedup,
        latency_speedup=best.latency_speedup,
        latency_spread=best.latency_speedup * relative,
        dense_ms=dense.median_ms,
        dense_iqr_ms=dense.iqr_ms,
        latency_ms=best.latency_ms,
        iqr_ms=best.iqr_ms,
        batch=dense.batch,
        cap=cap,
        probes=tuple(probes),
    )


def _unreachable(
    target: LatencyTarget, probes: list[Probe], dense: Latency, cap: float
) -> ValueError:
    best = max(probes, key=lambda p: p.latency_speedup)
    return ValueError(
        f"target.latency_speedup={target.latency_speedup!r} is invalid: the model cannot reach "
        f"it within the channel floor. Pruned to the floor's cap ({cap:.3g}x MACs) it measures "
        f"{probes[-1].latency_speedup:.3g}x ({probes[-1].latency_ms:.3g} ms against the dense "
        f"{dense.median_ms:.3g} ms at batch {dense.batch}, {dense.device}); the best reachable "
        f"measured is {best.latency_speedup:.3g}x (at {best.achieved_macs_speedup:.3g}x MACs). "
        "Lower the target, or the floor (min_channel_ratio, min_channels)"
    )


def floor_cap(model: nn.Module, example: torch.Tensor, schedule: Schedule, pruned: bool) -> float:
    """The largest MACs speed-up the schedule's floor allows this model's architecture: the
    unpruned model's floor_speedup (rebuilt from its registry spec when `model` is pruned, as
    the floor is taken against the original widths)."""
    dense = model
    if pruned:
        spec = getattr(model, "prunetune_spec", None)
        if spec is None:
            raise ValueError(
                f"a latency target on an already-pruned {type(model).__name__} needs the "
                "unpruned model's floor: build the model with pruning.models.build_model"
            )
        dense = build_model(spec)
    cap = floor_speedup(
        dense, example.cpu(), schedule.min_channels, schedule.min_channel_ratio, schedule.round_to
    )
    return min(cap, MAX_SPEEDUP)


def _schedule_prune(schedule: Schedule, example: torch.Tensor) -> Prune:
    """An unpruned model's prune to a MACs speed-up with the settings of the schedule's last
    stage (the one that lands)."""

    def prune(model: nn.Module, speedup: float) -> PruneReport:
        return prune_to_speedup(model, example, speedup, **schedule.prune_options(-1))

    return prune


def landed_schedule(schedule: Schedule, macs_speedup: float) -> Schedule:
    """`schedule` with its last stage (and target) on the landed MACs speed-up: the file a
    replay prunes exactly as the trial did."""
    last = dataclasses.replace(schedule.stages[-1], speedup=macs_speedup)
    return dataclasses.replace(
        schedule, target_speedup=macs_speedup, stages=(*schedule.stages[:-1], last)
    )


def check_measured(target: LatencyTarget | None, latency: LatencySettings | None) -> None:
    """A latency target needs the latency measured (before any compute)."""
    require(
        target is None or (latency is not None and latency.enabled),
        "target.latency_speedup",
        None if target is None else target.latency_speedup,
        "a latency target needs measured latency: set latency.enabled: true",
    )


def land_model(
    model: nn.Module,
    target: LatencyTarget,
    schedule: Schedule,
    *,
    latency: LatencySettings,
    example: torch.Tensor,
    prune: Prune | None = None,
    device: torch.device | str = "cpu",
    dense: Latency | None = None,
    base_macs: int | None = None,
    guess: float | None = None,
    timer: Timer = time.perf_counter,
) -> Landing:
    """land() for a schedule run: probes timed at latency's primary batch with its warm-up and
    runs on `device`, in the current torch threads. `model` is unpruned (base_macs None, and it
    is timed as the reference unless `dense` is given) or pruned by earlier stages of
    `schedule` from a model of `base_macs` MACs (`dense` then required). `prune`: how a stage
    prunes (default: prune_to_speedup with the schedule's importance, ranking and floor, for an
    unpruned model)."""
    batch = latency.primary
    prune = prune or _schedule_prune(schedule, example.cpu())

    def time_model(m: nn.Module) -> Latency:
        return measure(
            m, example, batch, device=device, warmup=latency.warmup, runs=latency.runs, timer=timer
        )

    model = model.cpu()  # pruned on the CPU, as every stage prunes; timed on `device`
    macs = count_macs_params(model, example.cpu())[0]
    if dense is None:
        require(
            base_macs is None,
            "target.latency_speedup",
            target.latency_speedup,
            "landing an already-pruned model needs the unpruned model's timing (a run continued "
            "from a checkpoint that did not measure it cannot land on latency)",
        )
        dense = time_model(model)
    low = (base_macs or macs) / macs
    cap = floor_cap(model, example, schedule, pruned=base_macs is not None)
    return land(
        model,
        target,
        prune=prune,
        time_model=time_model,
        dense=dense,
        low=low,
        cap=cap,
        guess=guess,
    )
