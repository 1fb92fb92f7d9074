"""Tune callbacks run in the driver: one progress line per trial event."""

from __future__ import annotations

import sys
from typing import Any

from ray.tune import Callback

from pruning.compute import COSTS, DEFAULT_COST, CostObjective


class TrialProgress(Callback):
    def __init__(self, total: int, cost: CostObjective = COSTS[DEFAULT_COST]) -> None:
        self.total = total
        self.cost = cost  # the objective a trial reports as "cost", for its unit
        self.finished = self.failed = 0
        self.best: tuple[float, float] | None = None  # (val_acc, cost) of completed trials
        self.unlogged: set[str] = set()  # trials whose MLflow logging failed

    def _say(self, text: str, trials: list[Any], ended: Any = None) -> None:
        running = sum(t.status == "RUNNING" and t is not ended for t in trials)
        best = (
            f"best so far {self.best[0]:.2%} at {self.cost.format(self.best[1])}"
            if self.best
            else "no completed trial yet"
        )
        print(
            f"[search] {text} | done {self.finished}/{self.total}, running {running}, "
            f"failed {self.failed} | {best}",
            file=sys.stderr,
            flush=True,
        )

    def on_trial_save(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Said once the driver has registered the stage's checkpoint: from here on a retry of
        # this trial continues after this stage.
        result = trial.last_result or {}
        if result.get("mlflow_logged") == 0.0 and trial.trial_id not in self.unlogged:
            self.unlogged.add(trial.trial_id)
            print(
                f"[search] warning: {trial.trial_id} could not log to MLflow; it trains on and "
                "its results stay in Ray's storage (`prunetune pareto` copies them to MLflow "
                "once the server is back)",
                file=sys.stderr,
                flush=True,
            )
        self._say(
            f"{trial.trial_id} stage {int(result.get('stage', 0))} saved: val acc "
            f"{result.get('val_acc', float('nan')):.2%} at "
            f"{result.get('speedup', float('nan')):.2f}x",
            trials,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        last = trial.last_result or {}
        if last.get("completed"):
            point = (float(last["val_acc"]), float(last["cost"]))
            if self.best is None or point[0] > self.best[0]:
                self.best = point
        self._say(f"{trial.trial_id} finished", trials, ended=trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.failed += 1
        self._say(f"{trial.trial_id} FAILED (see its MLflow run and Ray log)", trials, ended=trial)
