"""Replay a schedule in-process and keep everything it produced: `prunetune replay`.

The output folder gets, after every finished stage (so a crash loses at most one stage):
  pruned.pt      the pruned model as structure + weights (load with models.load_pruned)
  schedule.yaml  the schedule with the `run` section that reproduces it (what actually ran:
                 the checkpoint's widths, its sha256, seed, data, threads; portable paths)
  metrics.json   per-stage metrics, the final ones and where the run came from
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning import schedule as schedule_io
from pruning.data import Dataset, DataSpec
from pruning.latency import LatencySettings
from pruning.models import build_model, save_pruned
from pruning.run_info import ModelInfo, RunInfo, file_sha256, model_from_checkpoint
from pruning.runner import RunState, StageResult, run_schedule
from pruning.schedule import Schedule
from pruning.train import validate
from pruning.validate import require


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ReplayModel:
    """The model a replay starts from, and what to record about it."""

    model: nn.Module
    info: ModelInfo  # what actually runs (a checkpoint's own widths and classes)
    checkpoint: str | None  # as given (usable from the working directory); None: random init
    sha256: str | None  # of the checkpoint's bytes
    warnings: tuple[str, ...]  # one line each, for the user

    def run_info(self, data: DataSpec, seed: int, threads: int) -> RunInfo:
        """The run section that records a replay from this model."""
        return RunInfo(
            model=self.info,
            data=data,
            seed=seed,
            checkpoint=self.checkpoint,
            checkpoint_sha256=self.sha256,
            threads=threads,
        )


def replay_model(
    checkpoint: str | None,
    recorded: RunInfo | None,
    *,
    num_classes: int,
    width: float | None,
    seed: int,
    arch: str | None = None,
    input_size: int | None = None,
) -> ReplayModel:
    """The checkpoint's model (its file is the source of truth for widths and classes), or a
    random-init model of the registry built from `seed` (so two replays on one seed prune
    alike). The architecture is `arch`, else the schedule file's run.model.arch, else vgg19;
    `input_size` is the data's (pixels per side).

    Warns when the checkpoint's bytes or widths differ from what `recorded` (the schedule file's
    run section) says the schedule ran with."""
    expected = recorded.model if recorded and recorded.model else None
    wanted = expected or ModelInfo()
    if arch is not None and arch != wanted.arch:  # the file's kwargs are another model's
        wanted = ModelInfo(arch, wanted.width, wanted.num_classes)
    if width is not None or wanted.width is None:
        wanted = dataclasses.replace(wanted, width=width or 1.0)
    if not checkpoint:
        torch.manual_seed(seed)
        wanted = dataclasses.replace(wanted, num_classes=None)  # a random model fits the data
        spec = wanted.spec(num_classes, input_size)
        model = build_model(spec)
        info = dataclasses.replace(wanted, num_classes=spec.num_classes)
        return ReplayModel(model, info, None, None, ())
    path = Path(checkpoint).expanduser()
    model, found = model_from_checkpoint(path, wanted, num_classes, input_size)
    sha = file_sha256(path)
    warnings = []
    if recorded and recorded.checkpoint_sha256 and recorded.checkpoint_sha256 != sha:
        warnings.append(
            f"warning: checkpoint {checkpoint} is not the one this schedule ran with (sha256 "
            f"{sha[:12]}... here, {recorded.checkpoint_sha256[:12]}... in the schedule file); "
            "its results will differ"
        )
    if expected and _disagree(expected, found):
        warnings.append(
            f"warning: checkpoint {checkpoint} holds a {found.describe()}, but the schedule's "
            f"run.model says {expected.describe()}; running the checkpoint's model (the file is "
            "the source of truth for widths) and recording it"
        )
    return ReplayModel(model, found, checkpoint, sha, tuple(warnings))


def check_teacher(schedule: Schedule, checkpoint: str | None) -> None:
    """A distilling schedule learns from the unpruned baseline; a random-init model (no
    checkpoint) is no teacher. Checked before anything is loaded or run."""
    if schedule.distills and not checkpoint:
        require(
            False,
            "distill",
            asdict(schedule.distill),
            "distillation needs the unpruned baseline as teacher, but no checkpoint was given "
            "(the model would be random-init); pass --checkpoint, or set distill: null",
        )


def _disagree(expected: ModelInfo, found: ModelInfo) -> bool:
    classes = expected.num_classes is not None and expected.num_classes != found.num_classes
    return expected.arch != found.arch or expected.width != found.width or classes


class _KeepStages:
    """run_schedule's on_stage hook for a replay: after every stage, the stage's metrics joined
    to `metrics`, and pruned.pt and metrics.json rewritten atomically in `out`."""

    def __init__(
        self,
        out: Path,
        metrics: dict[str, Any],
        on_stage: Callable[[StageResult], None] | None,
    ) -> None:
        self.out, self.metrics, self.on_stage = out, metrics, on_stage
        self.start = time.perf_counter()

    def __call__(self, result: StageResult, pruned: nn.Module, state: RunState) -> None:
        self.metrics["stages"].append(result.as_dict())
        self.metrics.update(
            result.metrics(),
            base_macs=state.base_macs,
            original_widths=state.original_widths,
            wall_seconds=time.perf_counter() - self.start,
        )
        spec = pruned.prunetune_spec  # set by the registry (build_model, model_from_checkpoint)
        _atomic_write(self.out / "pruned.pt", lambda p: save_pruned(p, pruned, spec))
        _atomic_write(
            self.out / "metrics.json",
            lambda p: p.write_text(json.dumps(self.metrics, indent=2) + "\n"),
        )
        if self.on_stage is not None:
            self.on_stage(result)


def replay(
    schedule: Schedule,
    model: nn.Module,
    data: Dataset,
    *,
    out: Path,
    run: RunInfo,
    device: torch.device,
    seed: int,
    on_stage: Callable[[StageResult], None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    latency: LatencySettings | None = None,
) -> dict[str, Any]:
    """`latency`: time the unpruned model and each stage's in this process (None: not)."""
    check_teacher(schedule, run.checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    schedule_io.save(out / "schedule.yaml", schedule, run)
    metrics: dict[str, Any] = {
        "data": data.description,
        "schedule": schedule.summary(),
        "seed": seed,
        "device": str(device),
    }
    keep = _KeepStages(out, metrics, on_stage)  # the wall clock starts before the baseline's eval
    metrics |= {"base_val_acc": validate(model, data, device)[0], "stages": []}
    run_schedule(
        model,
        data,
        schedule,
        device=device,
        seed=seed,
        state=RunState(),
        on_stage=keep,
        on_epoch=on_epoch,
        latency=latency,
    )
    return metrics
