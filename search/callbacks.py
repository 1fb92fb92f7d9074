"""Tune callbacks run in the driver: one progress line per trial event; the anytime curve on the
parent run (search/accounting.py)."""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback

from pruning.compute import COSTS, DEFAULT_COST, CostObjective
from search.accounting import Spent, attempt_key, log_spent, previous_wall, spent


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


class AnytimeCurve(Callback):
    """Logs the anytime curve on the parent run after each trial report (in the driver).
    An MLflow failure is said once and stops the live curve; the search goes on, and its
    totals are logged again when it ends."""

    def __init__(self, uri: str, parent_id: str, metric: str) -> None:
        self.uri, self.parent_id, self.metric = uri, parent_id, metric
        self.offset = 0.0  # wall seconds of earlier sessions
        self.start = time.monotonic()
        self.last: Spent | None = None
        self.lost = False
        # each attempt's latest report (search.accounting): kept when the callback is pickled
        # with the search's state, so a resumed search goes on counting
        self.reports: dict[tuple[Any, str], dict] = {}

    def setup(self, **info: Any) -> None:
        # Runs in each session (a restored Tuner unpickles this object and sets it up again).
        self.start, self.last, self.lost = time.monotonic(), None, False
        try:
            self.offset = previous_wall(self.uri, self.parent_id)
        except RuntimeError as err:
            self._lose(err)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        # Tune calls this before it stores `result` as the trial's last_result; a trial this
        # callback has not seen (restored by Tune) counts with its last result.
        for t in trials:
            if t.last_result and t is not trial:
                self.reports.setdefault(attempt_key(_key(t), t.last_result), t.last_result)
        self.reports[attempt_key(_key(trial), result)] = result
        now = spent(self.reports.values(), self.metric)
        if now == self.last:
            return
        self.last = now
        if self.lost:
            return
        try:
            log_spent(self.uri, self.parent_id, now, self.offset + time.monotonic() - self.start)
        except RuntimeError as err:
            self._lose(err)

    def _lose(self, err: Exception) -> None:
        self.lost = True
        print(
            f"[search] warning: the anytime curve stops logging to MLflow ({err}); the "
            "search goes on and logs its totals at the end",
            file=sys.stderr,
            flush=True,
        )


def _key(trial: Any) -> Any:
    return getattr(trial, "trial_id", None) or id(trial)
