"""Replay a schedule in-process and keep everything it produced: `prunetune replay`.

The output folder gets, after every finished stage (so a crash loses at most one stage):
  pruned.pt      plain state dict of the pruned model (load with models.load_vgg19)
  schedule.yaml  the schedule with the `run` section that reproduces it
  metrics.json   per-stage metrics, the final ones and where the run came from
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pruning import schedule as schedule_io
from pruning.data import Dataset, DataSpec
from pruning.runner import RunState, StageResult, run_schedule
from pruning.schedule import Schedule
from pruning.train import evaluate


def _atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def run_section(
    spec: DataSpec, width: float, num_classes: int, seed: int, checkpoint: str | None
) -> dict[str, Any]:
    return {
        "model": {"arch": "vgg19", "width": width, "num_classes": num_classes},
        "data": asdict(spec),
        "seed": seed,
        "checkpoint": checkpoint,
    }


def replay(
    schedule: Schedule,
    model: nn.Module,
    data: Dataset,
    *,
    out: Path,
    run: dict[str, Any],
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
