"""The Optuna searcher Tune runs for the sampler strategies (tpe, nsga2, random): Ray's
OptunaSearch, told only what finished its schedule.

Ray's OptunaSearch tells Optuna a trial's last report as its values whenever the report has
the objectives. A trial stopped before its last stage (by early stopping, asha.rungs, or by a
stop of the whole search) last reported an earlier stage: the accuracy and compute of a
smaller speed-up, which look better than any trial that reached the target and would pull the
sampler towards schedules that get stopped. Such a trial is told PRUNED (no values), a failed
one FAIL, and only a trial whose last report is its completed last stage COMPLETE.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch


class FinishedOnlyOptunaSearch(OptunaSearch):
    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if error or not (result or {}).get("completed"):
            result = None  # OptunaSearch: no values -> FAIL on error, else PRUNED
        super().on_trial_complete(trial_id, result, error)
