"""A search's trials read back as typed rows: from MLflow first, from Ray's storage when MLflow
missed some (they are copied into MLflow then) or cannot be reached. search/ray_storage.py reads
Ray's folder format; search/pareto.py ranks the rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from pruning.compute import COSTS, CostObjective
from search.config import ExperimentConfig
from search.objectives import DEFAULT_OBJECTIVES, Objective, resolve
from search.progress import say
from search.ray_storage import (
    RayTrial,
    copy_to_mlflow,
    is_reference,
    read_trials,
    schedule_summary,
)
from trainables import tracking


@dataclass(frozen=True)
class TrialRow:
    run_id: str
    trial_id: str
    status: str  # MLflow run status
    completed: bool  # reached the last stage of its schedule
    val_acc: float
    cost: float  # the search's cost objective (epochs_used or train_tmacs, see CostObjective)
    speedup: float
    macs: float
    params: float
    train_seconds: float
    schedule: str
    reference: bool  # Torch-Pruning's one-shot recipe, run as the search's first trial
    checkpoint: str = ""  # rows read from Ray's storage (run_id ""): the trial's checkpoint
    error: str = ""  # a failed attempt's error (MLflow tag `error`)
    # A later run of the same trial went on from this one's checkpoint (MLflow tag
    # prunetune.retried_as): a retry after a lost worker, a resumed search, or a PBT trial that
    # paused at a stage boundary. Such a run is a part of its trial, not a trial of its own.
    continued: bool = False
    epochs_used: float = float("nan")  # fine-tune (+ sparse) epochs
    train_tmacs: float = float("nan")  # fine-tune (+ sparse, recalibration) compute, 10^12 MACs
    # measured at the first of latency.batches (NaN: the search measured no latency)
    latency_ms: float = float("nan")  # the pruned model's median, ms per batch
    latency_speedup: float = float("nan")  # the dense model's median over it, same process

    @property
    def usable(self) -> bool:
        """Only trials that ran their whole schedule: ASHA-stopped or failed ones never count."""
        return self.completed and self.status == "FINISHED"

    @property
    def state(self) -> str:
        """The status shown to users: a continued run's is "continued", not KILLED/FAILED."""
        return "continued" if self.continued and not self.usable else self.status


def trial_count(rows: Sequence[TrialRow]) -> int:
    """Trials, not runs: a trial's continued runs (see TrialRow.continued) count once."""
    return len({r.trial_id for r in rows})


def left_out(rows: Sequence[TrialRow]) -> int:
    """Trials that never completed their schedule (failed or stopped early): runs that are
    neither usable nor continued by a later run."""
    return sum(1 for r in rows if not r.usable and not r.continued)


# A search from before the cost objective existed ranked by epochs and logged no compute.
_OLD_SEARCHES_COST = "epochs"


def search_cost(uri: str, parent_id: str) -> CostObjective:
    """The cost objective a search ranked its trials by (its parent run's `cost` param)."""
    run = tracking.client(uri).get_run(parent_id)
    return COSTS[run.data.params.get("cost", _OLD_SEARCHES_COST)]


def search_objectives(uri: str, parent_id: str) -> tuple[Objective, ...]:
    """The objectives a search ranked its trials by (its parent run's `objectives` param, a
    list as text; searches from before it: val_acc and cost)."""
    text = tracking.client(uri).get_run(parent_id).data.params.get("objectives")
    return resolve(yaml.safe_load(text) if text else DEFAULT_OBJECTIVES)


def rows_from_runs(runs: list[Any], cost: CostObjective) -> list[TrialRow]:
    """Rows whose `cost` is `cost`'s metric (NaN, never on a front, where a run lacks it)."""
    rows = []
    for run in runs:
        m, tags = run.data.metrics, run.data.tags
        rows.append(
            TrialRow(
                run_id=run.info.run_id,
                trial_id=tags.get(tracking.TRIAL_TAG, "?"),
                status=run.info.status,
                completed=m.get("completed", 0.0) == 1.0,
                val_acc=m.get("val_acc", float("nan")),
                cost=m.get(cost.metric, float("nan")),
                speedup=m.get("speedup", float("nan")),
                macs=m.get("macs", float("nan")),
                params=m.get("params", float("nan")),
                train_seconds=m.get("train_seconds", float("nan")),
                schedule=tags.get("schedule", ""),
                reference=tags.get("reference") == "true",
                error=tags.get("error", ""),
                continued=tracking.RETRIED_AS_TAG in tags,
                epochs_used=m.get("epochs_used", float("nan")),
                train_tmacs=m.get("train_tmacs", float("nan")),
                latency_ms=m.get("latency_ms", float("nan")),
                latency_speedup=m.get("latency_speedup", float("nan")),
            )
        )
    return sorted(rows, key=lambda r: r.trial_id)


def load_rows(
    uri: str, experiment: str, parent_id: str | None = None, cost: CostObjective | None = None
) -> list[TrialRow]:
    """The trials of the latest search of `experiment` in MLflow (or of `parent_id`'s), costed
    by `cost` (default: the objective that search chose)."""
    parent_id = parent_id or tracking.latest_parent(uri, experiment)
    cost = cost or search_cost(uri, parent_id)
    return rows_from_runs(tracking.trial_runs(uri, experiment, parent_id), cost)


def tag_front(uri: str, rows: list[TrialRow], on_front: list[TrialRow]) -> None:
    ids = {r.run_id for r in on_front}
    tracking.concurrently(
        [
            lambda r=r: tracking.set_tags(uri, r.run_id, {"pareto": str(r.run_id in ids).lower()})
            for r in rows
        ]
    )


def rows_from_ray(config: ExperimentConfig, trials: list[RayTrial]) -> list[TrialRow]:
    metric = config.cost_objective.metric
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
                cost=m.get(metric, float("nan")),
                speedup=m["speedup"],
                macs=m["macs"],
                params=m["params"],
                train_seconds=m["train_seconds"],
                schedule=schedule_summary(config, t),
                reference=config.reference_trial and is_reference(config, t),
                checkpoint=str(t.checkpoint or ""),
                epochs_used=m.get("epochs_used", float("nan")),
                train_tmacs=m.get("train_tmacs", float("nan")),
                latency_ms=m.get("latency_ms", float("nan")),
                latency_speedup=m.get("latency_speedup", float("nan")),
            )
        )
    return sorted(rows, key=lambda r: r.trial_id)


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
        return rows_from_ray(config, trials), False
    cost = config.cost_objective
    rows = load_rows(uri, config.experiment_name, parent, cost)
    in_mlflow = {r.trial_id for r in rows if r.usable}
    missing = [t for t in trials if t.completed and t.trial_id not in in_mlflow]
    for t in missing:
        run_id = copy_to_mlflow(config, search["experiment_id"], parent, t)
        say(f"trial {t.trial_id}: copied from Ray's storage into MLflow (run {run_id})")
    return (load_rows(uri, config.experiment_name, parent, cost) if missing else rows), True
