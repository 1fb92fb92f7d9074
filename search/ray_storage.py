"""Ray's storage format: the reader behind search/trials.py's fallback, and the copy into MLflow.

Every stage a trial reports is appended to <storage>/<name>/<trial folder>/result.json, with its
checkpoint next to it; the last checkpoint holds final/ (schedule file, weights, widths). When
the tracking server was unreachable for part of a search, `prunetune pareto` reads the trials
from here; once the server answers again it copies them into MLflow (as a new attempt of each
trial, tagged source=ray-storage), so the UI, the front and `export` see every trial.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pruning import schedule as schedule_io
from pruning.runner import StageResult
from pruning.schedule import Schedule
from search.config import ExperimentConfig
from search.space import is_reference as is_reference_config
from search.space import trial_schedule
from trainables import tracking
from trainables.point import TrialPoint, flat_params

METRICS = {f.name for f in fields(StageResult)} | {"cost"}  # what a trial logs per stage


@dataclass(frozen=True)
class RayTrial:
    trial_id: str
    name: str  # Ray's trial folder
    config: dict[str, Any]
    stages: list[dict[str, Any]]  # the last report of each stage, in stage order
    checkpoint: Path | None  # the latest checkpoint folder

    @property
    def completed(self) -> bool:
        if not self.stages or self.checkpoint is None:
            return False
        return self.stages[-1].get("completed") == 1.0 and (self.checkpoint / "final").is_dir()


def read_trials(experiment_dir: Path, parent_run_id: str | None = None) -> list[RayTrial]:
    """The trials of one search (its parent run) found under Ray's experiment folder."""
    trials = []
    for folder in sorted(experiment_dir.glob("*/result.json")):
        reports = [json.loads(line) for line in folder.read_text().splitlines() if line.strip()]
        if parent_run_id:
            reports = [r for r in reports if r.get("parent") == parent_run_id]
        if not reports:
            continue
        by_stage = {int(r["stage"]): r for r in reports}  # a retried stage: its last report
        last = reports[-1]
        checkpoint = folder.parent / str(last.get("checkpoint_dir_name") or "")
        trials.append(
            RayTrial(
                trial_id=str(last["trial_id"]),
                name=folder.parent.name,
                config=json.loads((folder.parent / "params.json").read_text()),
                stages=[by_stage[s] for s in sorted(by_stage)],
                checkpoint=checkpoint if last.get("checkpoint_dir_name") else None,
            )
        )
    return trials


def ran_schedule(config: ExperimentConfig, trial: RayTrial) -> Schedule:
    """The schedule the trial ran: its final bundle's file once it finished (exact also where
    the trial settled it at run time: a latency target's landed MACs speed-up), else the one
    its config plans."""
    final = trial.checkpoint / "final" / "schedule.yaml" if trial.checkpoint else None
    if final is not None and final.exists():
        return schedule_io.load(final)[0]
    return trial_schedule(trial.config, config)


def schedule_summary(config: ExperimentConfig, trial: RayTrial) -> str:
    return ran_schedule(config, trial).summary()


def is_reference(config: ExperimentConfig, trial: RayTrial) -> bool:
    return is_reference_config(trial.config, config)


def copy_to_mlflow(
    config: ExperimentConfig, experiment_id: str, parent_id: str, trial: RayTrial
) -> str:
    """One trial from Ray's storage as a FINISHED run: params, per-stage metrics, final/."""
    schedule = ran_schedule(config, trial)
    tags = {"source": "ray-storage", "schedule": schedule.summary()}
    if config.reference_trial and is_reference(config, trial):
        tags["reference"] = "true"
    uri = config.tracking_uri
    with tracking.trial_run(uri, experiment_id, parent_id, trial.trial_id, trial.name, tags) as run:
        run.log_params(flat_params(schedule, TrialPoint.from_config(trial.config)))
        for stage in trial.stages:
            metrics = {k: float(v) for k, v in stage.items() if k in METRICS}
            run.log_metrics(metrics, step=int(stage["stage"]))
        assert trial.checkpoint is not None
        run.log_artifacts(trial.checkpoint / "final", "final")
        if run.lost:
            raise RuntimeError(run.lost)
        run.completed = True
    assert run.run_id is not None
    return run.run_id
