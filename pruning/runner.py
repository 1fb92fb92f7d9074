"""Run a schedule: (optional sparse training) then, per stage, prune -> evaluate -> recalibrate
BatchNorm -> evaluate -> fine-tune -> evaluate. Plain PyTorch: the Ray trainable and
`prunetune replay` both call this. Compute is counted as pruning.compute says.

A schedule that distills (schedule.distills: the schedule's distill, or a stage's own
distill_alpha) fine-tunes those stages against a frozen copy of the unpruned model taken before
anything trains or prunes it; a run continued from a stage checkpoint is handed that baseline
again as `teacher`. Each stage prunes with its own importance where it sets one
(Schedule.prune_options(stage))."""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from pruning.bn_recal import recal_loader, recalibrate_bn
from pruning.compute import finetune_tmacs
from pruning.data import Dataset
from pruning.latency import Latency, LatencySettings, Timer
from pruning.latency_target import Landing, LatencyTarget, check_measured, land_model
from pruning.prune import PruneReport, count_macs_params, prune_to_speedup, sparsity_regularizer
from pruning.schedule import Schedule
from pruning.train import FitResult, fit, train_loader, validate


@dataclass(frozen=True)
class StageResult:
    stage: int  # 1-based
    speedup: float  # achieved, vs. the unpruned model
    target_speedup: float
    macs: int
    params: int
    val_acc_after_prune: float  # raw: BN statistics as the unpruned layers left them
    val_acc_after_recal: float  # after BN recalibration (= val_acc_after_prune when it is off)
    bn_recal_images: int  # training images the recalibration ran on; 0: it was off
    val_acc: float  # after this stage's fine-tune
    val_loss: float
    epochs: int  # this stage's fine-tune epochs
    epochs_used: int  # cumulative, sparse training included
    train_seconds: float  # cumulative fine-tune (and sparse) seconds
    stage_tmacs: float  # this stage's fine-tune + recalibration compute, 10^12 MACs
    train_tmacs: float  # cumulative compute (pruning.compute), sparse training included
    prune_seconds: float
    completed: bool  # True after the schedule's last stage
    widths: dict[str, int]
    narrowest: str
    # Measured latency at the primary batch size (ms per batch, median) and the dense model's
    # over it; None when latency is off (and the speed-up when the dense model was not measured).
    latency_ms: float | None = None
    latency_speedup: float | None = None
    # Per batch size b: latency_ms_b<b>, latency_iqr_ms_b<b>, dense_latency_ms_b<b>,
    # latency_speedup_b<b>; empty when latency is off.
    latency: dict[str, float] = field(default_factory=dict)
    # The last stage's landing on a latency target (pruning.latency_target); None: MACs target.
    landing: Landing | None = None

    def metrics(self) -> dict[str, float]:
        """The numeric fields (per-batch latency and the landing included), for trackers."""
        plain = {k: float(v) for k, v in asdict(self).items() if isinstance(v, (int, float))}
        return plain | self.latency | (self.landing.metrics() if self.landing else {})

    def as_dict(self) -> dict[str, Any]:
        """Every field for metrics.json, the per-batch latency keys at the top level."""
        return {k: v for k, v in asdict(self).items() if k != "latency"} | self.latency


@dataclass
class RunState:
    """What a schedule run carries between stages; enough to continue after stage `done`."""

    base_macs: int | None = None
    original_widths: dict[str, int] | None = None
    done: int = 0
    epochs_used: int = 0
    train_seconds: float = 0.0
    train_tmacs: float = 0.0  # cumulative compute, 10^12 MACs (pruning.compute)
    teacher_macs: int = 0  # MACs per image of the distillation teacher (0: no distillation)
    # The unpruned model's latency per batch size, measured before the first prune (None: latency
    # off, or a run continued from a checkpoint that did not measure it).
    dense_latency: dict[int, Latency] | None = None
    # A latency target's first MACs guess, which the schedule's stages were split from (kept so
    # a resumed run splits them the same; None: a MACs target)
    macs_guess: float | None = None

    def __post_init__(self) -> None:
        if self.dense_latency is not None:  # from state.json: {"1": {...}} -> {1: Latency}
            self.dense_latency = {
                int(b): lat if isinstance(lat, Latency) else Latency(**lat)
                for b, lat in self.dense_latency.items()
            }


def _teacher(
    model: nn.Module,
    schedule: Schedule,
    state: RunState,
    teacher: nn.Module | None,
    example: torch.Tensor,
) -> nn.Module | None:
    """The frozen unpruned model a distilling schedule learns from (None when none of the
    stages left to run distills): `teacher` when given, else a copy of `model` before it
    trains or prunes. A run continued after stage `state.done` > 0 has no unpruned model left
    to copy."""
    left = [schedule.distill_at(i) for i in range(state.done, len(schedule.stages))]
    if not any(left):
        return None
    if teacher is None:
        if state.done > 0:
            raise ValueError(
                f"distill={next(d for d in left if d)} needs the unpruned baseline as teacher: "
                f"a run continued after stage {state.done} must be given it "
                "(run_schedule(teacher=...))"
            )
        teacher = copy.deepcopy(model)
    teacher.eval().requires_grad_(False)
    device = next(teacher.parameters()).device
    state.teacher_macs = count_macs_params(teacher, example.to(device))[0]
    return teacher


def _sparse_phase(
    model: nn.Module,
    data: Dataset,
    schedule: Schedule,
    state: RunState,
    device: torch.device,
    seed: int,
    example: torch.Tensor,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> None:
    """Group-sparsity training before the first prune, counted into `state`."""
    assert schedule.sparse is not None
    torch.manual_seed(seed)
    macs, _ = count_macs_params(model, example.to(next(model.parameters()).device))
    result = fit(
        model,
        train_loader(data, schedule.training.batch_size, seed),
        epochs=schedule.sparse.epochs,
        lr=schedule.sparse.lr,
        lr_schedule="cosine",
        training=schedule.training,
        device=device,
        regularize=sparsity_regularizer(model, example, schedule.sparse.reg),
        on_epoch=on_epoch,
    )
    state.train_seconds += result.seconds
    state.epochs_used += schedule.sparse.epochs
    state.train_tmacs += finetune_tmacs(macs, result.images)


def _prune(
    model: nn.Module,
    schedule: Schedule,
    index: int,
    speedup: float,
    state: RunState,
    example: torch.Tensor,
) -> PruneReport:
    """Prune in place (on the CPU) to `speedup` vs. the unpruned model the state remembers,
    as stage `index` (0-based) prunes."""
    report = prune_to_speedup(
        model.cpu(),
        example.cpu(),
        speedup,
        base_macs=state.base_macs,
        original_widths=state.original_widths,
        **schedule.prune_options(index),
    )
    state.base_macs, state.original_widths = report.base_macs, report.original_widths
    return report


def _fine_tune(
    model: nn.Module,
    data: Dataset,
    schedule: Schedule,
    index: int,
    seed: int,
    device: torch.device,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    teacher: nn.Module | None = None,
) -> FitResult:
    """Stage `index`'s fine-tune (0 epochs: nothing), distilled from `teacher` when given (the
    caller gives it only to a stage that distills)."""
    stage = schedule.stages[index]
    return fit(
        model,
        train_loader(data, schedule.training.batch_size, seed),
        epochs=stage.epochs,
        lr=stage.lr,
        lr_schedule=stage.lr_schedule,
        training=schedule.training,
        device=device,
        on_epoch=on_epoch,
        distill=schedule.distill_at(index) if teacher is not None else None,
        teacher=teacher,
    )


def _recalibrate(
    model: nn.Module, data: Dataset, schedule: Schedule, seed: int, device: torch.device
) -> int:
    """BN statistics re-estimated on un-augmented training batches (their own generator, so the
    fine-tune's batches and the global RNG are untouched); returns the images it ran on."""
    loader = recal_loader(data.train, schedule.training.batch_size, data.mean, data.std, seed)
    return recalibrate_bn(model, loader, schedule.bn_recalibration_batches, device)


class _Accuracies(NamedTuple):
    """A stage's val accuracies (in [0, 1]) at each step, and the recalibration's images."""

    after_prune: float
    after_recal: float
    recal_images: int
    after_fine_tune: float
    loss: float  # val cross-entropy after the fine-tune


def _stage_result(
    index: int,
    schedule: Schedule,
    state: RunState,
    pruned: PruneReport,
    accs: _Accuracies,
    stage_tmacs: float,
    latency: dict[int, Latency] | None = None,
    landing: Landing | None = None,
) -> StageResult:
    """Stage `index`'s (0-based) report, with `state`'s cumulative counts, the pruned model's
    `latency` (None: not measured) and the latency target's `landing` (None: none)."""
    stage = schedule.stages[index]
    primary, per_batch = _latency_metrics(state.dense_latency, latency)
    return StageResult(
        stage=index + 1,
        speedup=pruned.speedup,
        target_speedup=landing.macs_speedup if landing else stage.speedup,
        macs=pruned.macs,
        params=pruned.params,
        val_acc_after_prune=accs.after_prune,
        val_acc_after_recal=accs.after_recal,
        bn_recal_images=accs.recal_images,
        val_acc=accs.after_fine_tune,
        val_loss=accs.loss,
        epochs=stage.epochs,
        epochs_used=state.epochs_used,
        train_seconds=state.train_seconds,
        stage_tmacs=stage_tmacs,
        train_tmacs=state.train_tmacs,
        prune_seconds=pruned.seconds,
        completed=index + 1 == len(schedule.stages),
        widths=pruned.widths_after,
        narrowest=pruned.narrowest,
        latency_ms=primary[0],
        latency_speedup=primary[1],
        latency=per_batch,
        landing=landing,
    )


def _latency_metrics(
    dense: dict[int, Latency] | None, pruned: dict[int, Latency] | None
) -> tuple[tuple[float | None, float | None], dict[str, float]]:
    """((latency_ms, latency_speedup) at the first batch size measured, the per-batch values).
    No measurement: (None, None) and nothing; no dense measurement: no speed-ups."""
    if not pruned:
        return (None, None), {}
    per_batch: dict[str, float] = {}
    for b, lat in pruned.items():
        per_batch[f"latency_ms_b{b}"] = lat.median_ms
        per_batch[f"latency_iqr_ms_b{b}"] = lat.iqr_ms
        if dense and b in dense:
            per_batch[f"dense_latency_ms_b{b}"] = dense[b].median_ms
            per_batch[f"latency_speedup_b{b}"] = dense[b].median_ms / lat.median_ms
    first = next(iter(pruned))
    return (pruned[first].median_ms, per_batch.get(f"latency_speedup_b{first}")), per_batch


Measure = Callable[[nn.Module], dict[int, Latency]]  # a model's latency per batch size


def _run_stage(
    model: nn.Module,
    data: Dataset,
    schedule: Schedule,
    index: int,
    state: RunState,
    *,
    device: torch.device,
    seed: int,
    example: torch.Tensor,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    teacher: nn.Module | None = None,
    measure: Measure | None = None,
    land: Callable[[nn.Module], Landing] | None = None,
) -> StageResult:
    """Stage `index` (0-based): prune (the last stage to where `land` lands, when given),
    measure latency (when `measure`), evaluate, recalibrate BN, evaluate, fine-tune (distilled
    from `teacher` when given), evaluate, count, report."""
    stage = schedule.stages[index]
    stage_seed = seed + index + 1  # its own RNG, so a resumed run takes the same path
    torch.manual_seed(stage_seed)
    last = index + 1 == len(schedule.stages)
    landing = land(model) if land is not None and last else None  # probes keep the RNG as is
    speedup = landing.macs_speedup if landing else stage.speedup
    pruned = _prune(model, schedule, index, speedup, state, example)
    latency = measure(model) if measure is not None else None  # no RNG: the path is unchanged
    acc_after_prune, _ = validate(model, data, device)
    recal_images = _recalibrate(model, data, schedule, stage_seed, device)
    acc_after_recal = validate(model, data, device)[0] if recal_images else acc_after_prune
    teacher = teacher if schedule.distill_at(index) is not None else None  # this stage's
    fitted = _fine_tune(model, data, schedule, index, stage_seed, device, on_epoch, teacher)
    acc, loss = validate(model, data, device)
    teacher_macs = state.teacher_macs if teacher is not None else 0
    tmacs = finetune_tmacs(pruned.macs, fitted.images, teacher_macs, recal_images)
    state.done, state.epochs_used = index + 1, state.epochs_used + stage.epochs
    state.train_seconds += fitted.seconds
    state.train_tmacs += tmacs
    accs = _Accuracies(acc_after_prune, acc_after_recal, recal_images, acc, loss)
    return _stage_result(index, schedule, state, pruned, accs, tmacs, latency, landing)


def run_schedule(
    model: nn.Module,
    data: Dataset,
    schedule: Schedule,
    *,
    device: torch.device,
    seed: int = 0,
    state: RunState | None = None,
    on_stage: Callable[[StageResult, nn.Module, RunState], None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    teacher: nn.Module | None = None,
    latency: LatencySettings | None = None,
    timer: Timer = time.perf_counter,
    latency_target: LatencyTarget | None = None,
) -> list[StageResult]:
    """Apply `schedule` to `model` in place, from stage `state.done` on (0: from the start).

    `on_stage` sees each finished stage with the pruned model and the state to checkpoint.
    Every stage seeds its own RNG (seed + stage), so a run continued from a checkpoint takes
    the same path as one that never stopped. `teacher`: the unpruned baseline a distilling
    schedule learns from (default: a copy of `model` when starting from stage 0). `latency`
    (enabled): the unpruned model is timed once before the first prune, in this process and
    its torch threads (kept in `state`), and each stage's pruned model after its prune, with
    `timer` (a test's fake clock, else time.perf_counter). `latency_target`: the last stage
    lands on a measured latency speed-up instead of its MACs one (pruning.latency_target; its
    StageResult.landing says where), which needs `latency`.
    """
    check_measured(latency_target, latency)
    state = state or RunState()
    h, w = data.train.images.shape[2:]
    example = torch.zeros(1, 3, h, w)  # (1, 3, H, W): only shapes matter for tracing and MACs
    measure = _measurer(latency, example, device, timer)
    if measure is not None and state.done == 0 and state.dense_latency is None:
        state.dense_latency = measure(model)
    teacher = _teacher(model, schedule, state, teacher, example)
    if state.done == 0 and schedule.sparse is not None:
        _sparse_phase(model, data, schedule, state, device, seed, example, on_epoch)
    results = []
    for index in range(state.done, len(schedule.stages)):
        result = _run_stage(
            model,
            data,
            schedule,
            index,
            state,
            device=device,
            seed=seed,
            example=example,
            on_epoch=on_epoch,
            teacher=teacher,
            measure=measure,
            land=_lander(latency_target, schedule, state, latency, example, device, timer),
        )
        results.append(result)
        if on_stage is not None:
            on_stage(result, model, state)
    return results


def _measurer(
    latency: LatencySettings | None, example: torch.Tensor, device: torch.device, timer: Timer
) -> Measure | None:
    """A model -> its latency per batch size on `device` (None when latency is off)."""
    if latency is None or not latency.enabled:
        return None
    return functools.partial(latency.measure, example=example, device=device, timer=timer)


def _lander(
    target: LatencyTarget | None,
    schedule: Schedule,
    state: RunState,
    latency: LatencySettings | None,
    example: torch.Tensor,
    device: torch.device,
    timer: Timer,
) -> Callable[[nn.Module], Landing] | None:
    """The last stage's landing on a latency target (None: none), its probes pruned as the
    stage prunes and timed against the dense model's timing in `state`."""
    if target is None or latency is None:
        return None
    settings = latency

    def land(model: nn.Module) -> Landing:
        return land_model(
            model,
            target,
            schedule,
            prune=lambda m, s: _prune(m, schedule, len(schedule.stages) - 1, s, state, example),
            latency=settings,
            example=example,
            device=device,
            dense=(state.dense_latency or {}).get(settings.primary),
            base_macs=state.base_macs,
            guess=schedule.stages[-1].speedup,
            timer=timer,
        )

    return land
