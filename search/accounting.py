"""What a search spent, and its anytime curve on the parent MLflow run.

Compute is the experiment's cost unit (pruning.compute.COSTS: TMACs of fine-tuning for
`cost: compute`, epochs for `cost: epochs`), read from each trial's latest cumulative report:
a trial ASHA stopped or one that failed counts with what it had computed by its last report.
Every run of a trial (an attempt: the first, a retry, a paused PBT trial resumed, or a PBT
trial restarted from a donor's stage checkpoint) reports the cost of the checkpoint it started
from (`cost_restored`, trainables.lineage.COST_RESTORED) and an id (`attempt`). A run counts
what it computed itself: its latest cumulative cost minus `cost_restored`. So a restored prefix
is counted once, where it was computed: a retry's by the attempt before it, an exploit's copied
stages by the donor; a PBT trial's own stages before it was exploited stay counted (it did
compute them, and the exploit threw them away). The part of a stage a failure threw away is not
counted (no report carries it).

On the parent run, after every trial report:
- `search_cost`: the compute spent so far (all trials), in the cost unit;
- `best_val_acc`: the best validation accuracy of a trial that finished its schedule (on the
  target) so far; logged once one has;
- `search_wall_s`: wall seconds of the search so far (a resumed search adds to the time its
  earlier sessions logged; the time between sessions does not count).
Each is logged at step = compute spent in 1/1000 of the cost unit (GMACs for compute,
milli-epochs for epochs), so MLflow's chart of `best_val_acc` against Step is the anytime curve
(`search_cost` is logged too, for an x-axis in the cost unit itself). The curve is derived from
every trial Tune knows, restored ones included, so a resumed search continues it where it
stopped. The callback that logs it is search.callbacks.AnytimeCurve; this module imports no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trainables import tracking
from trainables.lineage import ATTEMPT, COST_RESTORED

SEARCH_COST = "search_cost"
BEST_SO_FAR = "best_val_acc"
WALL = "search_wall_s"
STEPS_PER_UNIT = 1000  # anytime-curve step = compute spent in 1/1000 of the cost unit


@dataclass(frozen=True)
class Spent:
    cost: float  # compute of every trial so far, in the cost unit
    best_val_acc: float | None  # best trial that finished its schedule; None before one has
    trials: int  # trials that reported at least once

    @property
    def step(self) -> int:
        return round(self.cost * STEPS_PER_UNIT)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def spent(latest: Iterable[Mapping[str, Any] | None], metric: str) -> Spent:
    """From each attempt's latest report (None before its first): the compute each attempt
    did itself, summed; the best finished accuracy; the trials that reported."""
    reports = [r for r in latest if r]
    finished = [float(r["val_acc"]) for r in reports if r.get("completed") and "val_acc" in r]
    return Spent(
        cost=sum(_number(r.get(metric)) - _number(r.get(COST_RESTORED)) for r in reports),
        best_val_acc=max(finished) if finished else None,
        trials=len({r.get("trial_id", i) for i, r in enumerate(reports)}),
    )


def attempt_key(trial_key: Any, report: Mapping[str, Any]) -> tuple[Any, str]:
    """Which run of which trial a report is from (reports before `attempt` existed: one)."""
    return trial_key, str(report.get(ATTEMPT, ""))


def previous_wall(uri: str, parent_id: str) -> float:
    """Wall seconds earlier sessions of this search logged (0 for a new search)."""
    return float(tracking.run_metrics(uri, parent_id).get(WALL, 0.0))


def log_spent(uri: str, parent_id: str, now: Spent, wall_s: float) -> None:
    metrics = {SEARCH_COST: now.cost, WALL: wall_s}
    if now.best_val_acc is not None:
        metrics[BEST_SO_FAR] = now.best_val_acc
    tracking.log_metrics(uri, parent_id, metrics, step=now.step)


def per_trial_cost(rows: Iterable[Any]) -> float:
    """Compute of a search read back (search.trials.TrialRow: trial_id, cost): per trial its
    largest cumulative cost over its attempts (a retry's run repeats the restored stages' cost),
    summed. NaN costs (a trial that never reported) count 0."""
    most: dict[str, float] = {}
    for row in rows:
        most[row.trial_id] = max(most.get(row.trial_id, 0.0), _number(row.cost))
    return sum(most.values())


def format_wall(seconds: float) -> str:
    """'2h03m', '4m12s', '38s'."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def describe_spent(now: Spent, wall_s: float, unit: str, stopped: int, failed: int) -> str:
    """The line `prunetune search` ends with: what the whole search cost."""
    partial = [f"{n} {what}" for n, what in ((stopped, "stopped early"), (failed, "failed")) if n]
    counted = f" ({' and '.join(partial)}: counted with what they computed)" if partial else ""
    return (
        f"search compute: {now.cost:.4g} {unit} of fine-tuning over {now.trials} trials"
        f"{counted}; wall time {format_wall(wall_s)}"
    )
