"""Trials as Ray's storage keeps them: the fallback for results MLflow missed.

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

from pruning.runner import StageResult
from search.config import ExperimentConfig
from search.progress import say
from search.results import TrialRow, load_rows
from search.space import reference_point
from trainables import tracking
from trainables.schedule_config import flat_params, schedule_from_config

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


def _summary(config: ExperimentConfig, trial: RayTrial) -> str:
    schedule = schedule_from_config(
        trial.config, config.target_speedup, config.training, config.space.sparse_reg
    )
    return schedule.summary()


def _is_reference(config: ExperimentConfig, trial: RayTrial) -> bool:
    return all(trial.config.get(k) == v for k, v in reference_point(config).items())


def to_rows(config: ExperimentConfig, trials: list[RayTrial]) -> list[TrialRow]:
    rows = []
    for t in trials:
        m = t.stages[-1]
        rows.append(
            TrialRow(
                run_id="",
                trial_id=t.trial_id,
                status="FINISHED" if t.completed else "UNFINISHED",
                completed=t.completed,
                val_acc=m["val_acc"],
                cost=m["cost"],
                speedup=m["speedup"],
                macs=m["macs"],
                params=m["params"],
                train_seconds=m["train_seconds"],
                schedule=_summary(config, t),
                reference=config.reference_trial and _is_reference(config, t),
                checkpoint=str(t.checkpoint or ""),
            )
        )
    return sorted(rows, key=lambda r: r.trial_id)


def copy_to_mlflow(
    config: ExperimentConfig, experiment_id: str, parent_id: str, trial: RayTrial
) -> str:
    """One trial from Ray's storage as a FINISHED run: params, per-stage metrics, final/."""
    schedule = schedule_from_config(
        trial.config, config.target_speedup, config.training, config.space.sparse_reg
    )
    tags = {"source": "ray-storage", "schedule": schedule.summary()}
    if config.reference_trial and _is_reference(config, trial):
        tags["reference"] = "true"
    uri = config.tracking_uri
    with tracking.trial_run(uri, experiment_id, parent_id, trial.trial_id, trial.name, tags) as run:
        run.log_params(flat_params(schedule))
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


def rows_with_ray_fallback(config: ExperimentConfig) -> tuple[list[TrialRow], bool]:
    """(rows, from_mlflow). Trials only Ray's storage has are copied into MLflow first; when
    MLflow cannot be reached the rows come from Ray's storage alone."""
    state = config.out_dir / "search.json"
    search = json.loads(state.read_text()) if state.is_file() else {}
    parent = search.get("parent_run_id")
    experiment_dir = config.storage / config.name
    trials = read_trials(experiment_dir, parent) if experiment_dir.is_dir() else []
    uri = config.tracking_uri
    try:
        tracking.check_reachable(uri)
    except RuntimeError as err:
        if not trials:
            raise
        say(f"{err}. Reading the {len(trials)} trials from Ray's storage in {experiment_dir}")
        return to_rows(config, trials), False
    rows = load_rows(uri, config.experiment_name, parent)
    in_mlflow = {r.trial_id for r in rows if r.usable}
    missing = [t for t in trials if t.completed and t.trial_id not in in_mlflow]
    for t in missing:
        run_id = copy_to_mlflow(config, search["experiment_id"], parent, t)
        say(f"trial {t.trial_id}: copied from Ray's storage into MLflow (run {run_id})")
    return (load_rows(uri, config.experiment_name, parent) if missing else rows), True
