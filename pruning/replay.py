"""Replay a schedule in-process and keep everything it produced: `prunetune replay`.

The output folder gets, after every finished stage (so a crash loses at most one stage):
  pruned.pt      plain state dict of the pruned model (load with models.load_vgg19)
  schedule.yaml  the schedule with the `run` section that reproduces it (what actually ran:
                 the checkpoint's widths, its sha256, seed, data, threads; portable paths)
  metrics.json   per-stage metrics, the final ones and where the run came from
"""

from __future__ import annotations

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
from pruning.data import Dataset
from pruning.models import (
    CheckpointMismatchError,
    read_state_dict,
    vgg19,
    vgg19_from_state_dict,
)
from pruning.run_info import ModelInfo, RunInfo, file_sha256, model_info
from pruning.runner import RunState, StageResult, run_schedule
from pruning.schedule import Schedule
from pruning.train import evaluate


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


def replay_model(
    checkpoint: str | None,
    recorded: RunInfo | None,
    *,
    num_classes: int,
    width: float | None,
    seed: int,
) -> ReplayModel:
    """The checkpoint's model (its file is the source of truth for widths and classes), or a
    random-init VGG19 built from `seed` (so two replays on one seed prune alike).

    Warns when the checkpoint's bytes or widths differ from what `recorded` (the schedule file's
    run section) says the schedule ran with."""
    if not checkpoint:
        width = width or (recorded.model.width if recorded and recorded.model else None) or 1.0
        torch.manual_seed(seed)
        model = vgg19(num_classes=num_classes, width=width)
        return ReplayModel(model, ModelInfo("vgg19", width, num_classes), None, None, ())
    path = Path(checkpoint).expanduser()
    state = read_state_dict(path)
    try:
        model = vgg19_from_state_dict(state)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"checkpoint {checkpoint}: {err}") from None
    expected = recorded.model if recorded and recorded.model else None
    found = model_info(state, width or (expected.width if expected else None))
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


def _disagree(expected: ModelInfo, found: ModelInfo) -> bool:
    classes = expected.num_classes is not None and expected.num_classes != found.num_classes
    return expected.arch != found.arch or expected.width != found.width or classes


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
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    schedule_io.save(out / "schedule.yaml", schedule, run)
    start = time.perf_counter()
    base_acc, _ = evaluate(model, data.val, data.mean, data.std, device)
    stages: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {
        "data": data.description,
        "schedule": schedule.summary(),
        "seed": seed,
        "device": str(device),
        "base_val_acc": base_acc,
        "stages": stages,
    }

    def keep(result: StageResult, pruned: nn.Module, state: RunState) -> None:
        stages.append(asdict(result))
        metrics.update(
            result.metrics(),
            base_macs=state.base_macs,
            original_widths=state.original_widths,
            wall_seconds=time.perf_counter() - start,
        )
        cpu_state = {k: v.detach().cpu() for k, v in pruned.state_dict().items()}
        _atomic_write(out / "pruned.pt", lambda p: torch.save(cpu_state, p))
        _atomic_write(
            out / "metrics.json", lambda p: p.write_text(json.dumps(metrics, indent=2) + "\n")
        )
        if on_stage is not None:
            on_stage(result)

    run_schedule(
        model,
        data,
        schedule,
        device=device,
        seed=seed,
        state=RunState(),
        on_stage=keep,
        on_epoch=on_epoch,
    )
    return metrics
