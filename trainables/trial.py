"""The Ray Tune trainable: Tune's trial config -> TrialPoint -> Schedule -> per stage prune,
fine-tune, evaluate, then `tune.report` with a checkpoint, and MLflow logging. The only module
that calls ray.tune.report (its API has changed three times; keep it fenced here).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import uuid
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from pruning import schedule as schedule_io
from pruning.compute import COSTS, DEFAULT_COST, dense_epochs
from pruning.data import Dataset, DataSpec, load_dataset
from pruning.latency import LatencySettings
from pruning.latency_target import LatencyTarget, land_model, landed_schedule
from pruning.models import load_pruned, save_pruned
from pruning.onnx_export import CheckInputs
from pruning.run_info import ModelInfo, RunInfo, model_from_state
from pruning.runner import RunState, StageResult, run_schedule
from pruning.schedule import Schedule, Training
from trainables import mlflow_models, tracking
from trainables.lineage import (
    ATTEMPT,
    COST_RESTORED,
    Lineage,
    continue_schedule,
    load_lineage,
    save_lineage,
)
from trainables.point import TrialPoint, flat_params


@dataclass(frozen=True)
class TrialContext:
    """What every trial shares; travels with tune.with_parameters."""

    target_speedup: float
    training: Training
    sparse_reg: float
    data: DataSpec
    model: ModelInfo  # the registry's architecture, width, classes (None: the data's), kwargs
    seed: int
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    baseline_path: str | None  # recorded in the exported schedule's run section
    baseline_sha256: str | None = None  # of the baseline file's bytes, recorded beside it
    cost: str = DEFAULT_COST  # the cost objective (pruning.compute.COSTS) reported as "cost"
    # MLflow model flavours the finished trial logs its pruned model in (config mlflow.log_models)
    model_flavours: tuple[str, ...] = ()
    # The trial times the unpruned model and each stage's in its own threads (enabled=False: no
    # latency metrics are reported)
    latency: LatencySettings = field(default_factory=LatencySettings)
    # target.latency_speedup: the last stage lands on a measured latency speed-up (None: the
    # MACs target_speedup)
    latency_target: LatencyTarget | None = None
    # strategy pbt: the trial keeps its lineage in each checkpoint, continues a donor's with
    # continue_schedule, and reports PBT_TIME (trainables/lineage.py)
    pbt: bool = False


def _device_and_threads() -> tuple[torch.device, int]:
    """CUDA only when Ray gave this trial a GPU; torch threads = the CPUs Ray gave it."""
    resources = tune.get_context().get_trial_resources().required_resources
    threads = max(1, int(resources.get("CPU", 1)))
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda"), threads
    return torch.device("cpu"), threads


def _save_checkpoint(
    folder: Path, model: torch.nn.Module, state: RunState, lineage: Lineage | None = None
) -> None:
    # structure + weights (pruning.models.save_pruned): any architecture reloads without pickles
    save_pruned(folder / "pruned.pt", model, model.prunetune_spec)
    (folder / "state.json").write_text(json.dumps(asdict(state)))
    if lineage is not None:
        save_lineage(folder, lineage)


def _restore() -> tuple[torch.nn.Module, RunState, Lineage | None] | None:
    """The checkpoint Tune gives this run: the trial's own (a retry, a paused trial resumed),
    or under PBT a donor's stage checkpoint after an exploit."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        model = load_pruned(Path(folder) / "pruned.pt")
        state = RunState(**json.loads((Path(folder) / "state.json").read_text()))
        lineage = load_lineage(Path(folder))
    return model, state, lineage


def _lineage(
    context: TrialContext, point: TrialPoint, planned: Schedule, restored: Any
) -> Lineage | None:
    """A PBT trial's lineage (None for other strategies): a new one from its own plan, its own
    checkpoint's as it was, or a donor's continued with this trial's (perturbed) point."""
    if not context.pbt:
        return None
    me = tune.get_context().get_trial_id()
    if restored is None or restored[2] is None:
        return Lineage(me, planned)
    _, state, lineage = restored
    if lineage.owner == me:
        return lineage
    continued = continue_schedule(point, lineage.schedule, state.done)
    return Lineage(lineage.owner, continued, lineage.exploits).exploited(me, state.done)


def run_trial(
    config: dict[str, Any], context: TrialContext, baseline: dict[str, torch.Tensor]
) -> None:
    """One trial: Tune's config -> its TrialPoint -> the schedule, run stage by stage from the
    last checkpoint (or from the baseline), each stage logged to MLflow and reported to Tune."""
    point = TrialPoint.from_config(config)  # Tune's flat dict stops at this boundary
    schedule = point.schedule(context.target_speedup, context.training, context.sparse_reg)
    device, threads = _device_and_threads()
    torch.set_num_threads(threads)
    restored = _restore()
    state = restored[1] if restored else RunState()
    # compute the restored prefix already counted where it ran (search.accounting)
    cost_restored = float(getattr(state, COSTS[context.cost].metric))
    lineage = _lineage(context, point, schedule, restored)
    schedule = lineage.schedule if lineage else schedule
    donor = restored[2].owner if restored and restored[2] and lineage else None
    history_of = donor if lineage and donor != lineage.owner else None  # just exploited
    with _trial_run(context, schedule, device, threads, state, history_of) as run:
        if lineage is not None:
            run.set_tags(lineage.tags())
        data = load_dataset(context.data, device)
        # The registry's model holding the baseline (its classes: the data's, unless the config
        # names them); `ran` is what it is, for the bundle's run section.
        baseline_model, ran = _baseline_model(context, baseline, data)
        if context.latency_target is not None:
            schedule = _guessed_schedule(point, context, baseline_model, data, device, state)
            run.set_tags({"schedule": schedule.summary()})  # split from the first guess
        run.log_params(flat_params(schedule, point) | model_params(context.model))
        model = restored[0] if restored else baseline_model
        # The teacher is the baseline itself, also when the trial continues from a checkpoint.
        # Any stage may distill (a PBT lineage's stage after an exploit: Schedule.distills).
        teacher = _baseline_model(context, baseline, data)[0] if schedule.distills else None
        # the logged model's input example and normalisation
        inputs = mlflow_models.model_inputs(data) if context.model_flavours else None
        on_stage = _StageReporter(
            context,
            schedule,
            run,
            threads,
            ran,
            len(data.train.labels),
            inputs,
            lineage,
            {COST_RESTORED: cost_restored, ATTEMPT: uuid.uuid4().hex},
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
                teacher=teacher,
                latency=context.latency,
                latency_target=context.latency_target,
            )
        finally:
            if not run.closed:
                _tag_cuda(run)


def _guessed_schedule(
    point: TrialPoint,
    context: TrialContext,
    dense: torch.nn.Module,
    data: Dataset,
    device: torch.device,
    state: RunState,
) -> Schedule:
    """A latency target's schedule: stages split from the first MACs guess, the MACs speed-up
    at which a copy of the unpruned model lands on the target (its last stage lands again
    after the earlier ones, in run_schedule). The guess is kept in `state`."""
    assert context.latency_target is not None
    if state.macs_guess is None:
        # the point's importance, ranking and floor (its stages are not used)
        settings = point.schedule(
            context.latency_target.latency_speedup, context.training, context.sparse_reg
        )
        example = torch.zeros(1, *data.train.images.shape[1:])  # (1, 3, H, W)
        landing = land_model(
            dense,
            context.latency_target,
            settings,
            latency=context.latency,
            example=example,
            device=device,
        )
        state.macs_guess = landing.macs_speedup
    return point.schedule(state.macs_guess, context.training, context.sparse_reg)


def _baseline_model(
    context: TrialContext, baseline: dict[str, torch.Tensor], data: Dataset
) -> tuple[torch.nn.Module, ModelInfo]:
    size = int(data.train.images.shape[2])  # (N, 3, H, W)
    return model_from_state(context.model, baseline, data.num_classes, size)


def model_params(model: ModelInfo) -> dict[str, Any]:
    """The model as MLflow params: model.arch, model.width, model.num_classes, model.kwargs.*."""
    flat = {f"model.{k}": v for k, v in model.to_dict().items() if k != "kwargs"}
    return flat | {f"model.kwargs.{k}": v for k, v in model.kwargs}


def _trial_run(
    context: TrialContext,
    schedule: Schedule,
    device: torch.device,
    threads: int,
    state: RunState,
    history_of: str | None = None,
) -> AbstractContextManager[tracking.TrialRun]:
    """This trial's MLflow run (a child of the search's), tagged with where it runs; its
    restored stages' metric history comes from trial `history_of`'s latest run (the donor of a
    PBT exploit), else from this trial's previous attempt."""
    trial = tune.get_context()
    tags = {
        "arch": context.model.arch,
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
    return tracking.trial_run(
        context.tracking_uri,
        context.experiment_id,
        context.parent_run_id,
        trial.get_trial_id(),
        trial.get_trial_name(),
        tags,
        resumed_from_stage=state.done,
        history_of=history_of,
    )


ASHA_TIME = "asha_time"  # ASHA's time attribute: the chosen cost, in epochs
# PBT's time attribute: the stage just finished, reported by every stage but the last, so PBT
# compares trials at each boundary and never restarts a trial that has finished its schedule.
PBT_TIME = "pbt_stage"


def asha_time(cost: str, metrics: dict[str, float], state: RunState, train_images: int) -> float:
    """The cost so far in epochs: epochs themselves, or the compute in epochs of the unpruned
    model (state.base_macs, known once the first stage pruned) on this trial's training data."""
    if cost == "epochs":
        return metrics["epochs_used"]
    assert state.base_macs, "a stage reports after its prune, which counts the unpruned MACs"
    return dense_epochs(metrics["train_tmacs"], state.base_macs, train_images)


@dataclass(frozen=True)
class _StageReporter:
    """run_schedule's on_stage: log the stage to MLflow, checkpoint it, report it to Tune."""

    context: TrialContext
    schedule: Schedule
    run: tracking.TrialRun
    threads: int
    model: ModelInfo  # what ran, for the final bundle's run section
    train_images: int  # the training split's size: one epoch of ASHA's time
    model_inputs: CheckInputs | None = None  # None: no MLflow model is logged
    lineage: Lineage | None = None  # a PBT trial's, saved with each checkpoint
    accounting: dict[str, Any] = field(default_factory=dict)  # COST_RESTORED, ATTEMPT

    def __call__(self, result: StageResult, pruned: torch.nn.Module, state: RunState) -> None:
        # "cost" is what Optuna minimises and ASHA's time: the chosen objective's metric
        metrics = result.metrics()
        metrics["cost"] = metrics[COSTS[self.context.cost].metric]
        metrics[ASHA_TIME] = asha_time(self.context.cost, metrics, state, self.train_images)
        self.run.log_metrics(metrics, step=result.stage)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            _save_checkpoint(folder, pruned, state, self.lineage)
            if result.completed:
                self._finish(result, folder)
            # 1.0 when MLflow has this stage; 0.0 tells the driver the result lives only in
            # Ray's storage until `prunetune pareto` copies it over.
            logged = {"mlflow_logged": float(self.run.lost is None)}
            if self.lineage is not None and not result.completed:
                logged[PBT_TIME] = float(result.stage)
            tune.report(
                metrics | logged | self.accounting | {"parent": self.context.parent_run_id},
                checkpoint=tune.Checkpoint.from_directory(folder),
            )

    def _finish(self, result: StageResult, folder: Path) -> None:
        """After the last stage: the exportable bundle, in the checkpoint too (Ray's storage
        alone is then enough to export the trial) and in MLflow; the run closed."""
        # A latency target's schedule records the MACs speed-up it landed on: replays exact.
        landed = result.landing
        schedule = landed_schedule(self.schedule, landed.macs_speedup) if landed else self.schedule
        if landed:
            self.run.set_tags({"schedule": schedule.summary()})
        final = _final_bundle(self.context, schedule, result, self.threads, folder, self.model)
        self.run.log_artifacts(final, "final")
        if self.model_inputs is not None:  # the model of pruned.pt, rebuilt on the CPU
            model = load_pruned(final / "pruned.pt")
            flavours = self.context.model_flavours
            self.run.log_model(model, self.model_inputs, result.stage, result.speedup, flavours)
        self.run.completed = True
        # Closed before the last report: once Tune has it, the driver may read the front, and
        # Tune may stop this worker before the function returns.
        _tag_cuda(self.run)
        self.run.finish("FINISHED")


def _tag_cuda(run: tracking.TrialRun) -> None:
    """Evidence that a trial given no GPU never touched CUDA."""
    run.set_tags({"cuda_initialized": str(torch.cuda.is_initialized()).lower()})


def _final_bundle(
    context: TrialContext,
    schedule: Schedule,
    result: StageResult,
    threads: int,
    folder: Path,
    model: ModelInfo,
) -> Path:
    """The exportable bundle in folder/final: schedule file (with how to reproduce it),
    weights, widths and metrics. Its paths stay absolute: `export` rewrites them for the
    folder it writes the schedule to."""
    out = folder / "final"
    out.mkdir()
    run = RunInfo(
        model=model,
        data=context.data,
        seed=context.seed,
        checkpoint=context.baseline_path,
        checkpoint_sha256=context.baseline_sha256,
        threads=threads,
    )
    schedule_io.save(out / "schedule.yaml", schedule, run, portable=False)
    (out / "pruned.pt").write_bytes((folder / "pruned.pt").read_bytes())
    (out / "widths.json").write_text(json.dumps(result.widths, indent=2))
    (out / "metrics.json").write_text(json.dumps(result.as_dict(), indent=2))
    return out
