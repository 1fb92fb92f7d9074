"""The Ray Tune trainable: a trial config -> Schedule -> per stage prune, fine-tune, evaluate,
then `tune.report` with a checkpoint, and MLflow logging. The only module that calls
ray.tune.report (its API has changed three times; keep it fenced here).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from pruning import schedule as schedule_io
from pruning.data import DataSpec, load_dataset
from pruning.models import read_state_dict, vgg19_from_state_dict
from pruning.replay import run_section
from pruning.runner import RunState, StageResult, run_schedule
from pruning.schedule import Schedule, Training
from trainables import tracking
from trainables.schedule_config import flat_params, schedule_from_config


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares; travels with tune.with_parameters."""

    target_speedup: float
    training: Training
    sparse_reg: float
    data: DataSpec
    width: float
    seed: int
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    baseline_path: str | None  # recorded in the exported schedule's run section


def _device_and_threads() -> tuple[torch.device, int]:
    """CUDA only when Ray gave this trial a GPU; torch threads = the CPUs Ray gave it."""
    resources = tune.get_context().get_trial_resources().required_resources
    threads = max(1, int(resources.get("CPU", 1)))
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda"), threads
    return torch.device("cpu"), threads


def _save_checkpoint(folder: Path, model: torch.nn.Module, state: RunState) -> None:
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, folder / "pruned.pt")
    (folder / "state.json").write_text(json.dumps(asdict(state)))


def _restore() -> tuple[torch.nn.Module, RunState] | None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        model = vgg19_from_state_dict(read_state_dict(Path(folder) / "pruned.pt"))
        state = RunState(**json.loads((Path(folder) / "state.json").read_text()))
    return model, state


def run_trial(
    config: dict[str, Any], context: TrialContext, baseline: dict[str, torch.Tensor]
) -> None:
    schedule = schedule_from_config(
        config, context.target_speedup, context.training, context.sparse_reg
    )
    device, threads = _device_and_threads()
    torch.set_num_threads(threads)
    restored = _restore()
    model, state = restored or (vgg19_from_state_dict(baseline), RunState())
    trial = tune.get_context()
    tags = {
        "node": platform.node(),
        "node_ip": ray.util.get_node_ip_address(),
        "ray_node_id": ray.get_runtime_context().get_node_id(),
        "device": str(device),
        "threads": str(threads),
        "schedule": schedule.summary(),
        "resumed_from_stage": str(state.done),
        "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
    }
    with tracking.trial_run(
        context.tracking_uri,
        context.experiment_id,
        context.parent_run_id,
        trial.get_trial_id(),
        trial.get_trial_name(),
        tags,
        resumed_from_stage=state.done,
    ) as run:
        run.log_params(flat_params(schedule))
        data = load_dataset(context.data, device)

        def on_stage(result: StageResult, pruned: torch.nn.Module, state: RunState) -> None:
            metrics = result.metrics() | {"cost": float(result.epochs_used)}
            run.log_metrics(metrics, step=result.stage)
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                _save_checkpoint(folder, pruned, state)
                if result.completed:
                    # In the checkpoint too: Ray's storage alone is enough to export the trial.
                    final = _final_bundle(context, schedule, result, threads, folder)
                    run.log_artifacts(final, "final")
                    run.completed = True
                    # Closed before the last report: once Tune has it, the driver may read the
                    # front, and Tune may stop this worker before the function returns.
                    _tag_cuda(run)
                    run.finish("FINISHED")
                # 1.0 when MLflow has this stage; 0.0 tells the driver the result lives only in
                # Ray's storage until `prunetune pareto` copies it over.
                tune.report(
                    metrics
                    | {"mlflow_logged": float(run.lost is None), "parent": context.parent_run_id},
                    checkpoint=tune.Checkpoint.from_directory(folder),
                )

        try:
            run_schedule(
                model,
                data,
                schedule,
                device=device,
                seed=context.seed,
                state=state,
                on_stage=on_stage,
            )
        finally:
            if not run.closed:
                _tag_cuda(run)


def _tag_cuda(run: tracking.TrialRun) -> None:
    """Evidence that a trial given no GPU never touched CUDA."""
    run.set_tags({"cuda_initialized": str(torch.cuda.is_initialized()).lower()})


def _final_bundle(
    context: TrialContext,
    schedule: Schedule,
    result: StageResult,
    threads: int,
    folder: Path,
) -> Path:
    """The exportable bundle in folder/final: schedule file (with how to reproduce it),
    weights, widths and metrics."""
    out = folder / "final"
    out.mkdir()
    run = run_section(
        context.data,
        context.width,
        int(vgg_classes(folder)),
        context.seed,
        context.baseline_path,
    ) | {"threads": threads}
    schedule_io.save(out / "schedule.yaml", schedule, run)
    (out / "pruned.pt").write_bytes((folder / "pruned.pt").read_bytes())
    (out / "widths.json").write_text(json.dumps(result.widths, indent=2))
    (out / "metrics.json").write_text(json.dumps(asdict(result), indent=2))
    return out


def vgg_classes(folder: Path) -> int:
    return int(read_state_dict(folder / "pruned.pt")["classifier.weight"].shape[0])
