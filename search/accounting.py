"""What a search spent, and its anytime curve on the parent MLflow run.

Compute is the experiment's cost unit (pruning.compute.COSTS: TMACs of fine-tuning for
`cost: compute`, epochs for `cost: epochs`), read from each trial's latest cumulative report:
a trial ASHA stopped or one that failed counts with what it had computed by its last report.
A retried trial continues from its last stage checkpoint and reports the restored stages' cost
again (cumulative), so a restored prefix is counted once; the part of a stage a failure threw
away is not counted (no report carries it).

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
stopped.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback

from trainables import tracking

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
    """From each trial's latest report (None before its first): compute summed, best
    finished accuracy."""
    reports = [r for r in latest if r]
    finished = [float(r["val_acc"]) for r in reports if r.get("completed") and "val_acc" in r]
    return Spent(
        cost=sum(_number(r.get(metric)) for r in reports),
        best_val_acc=max(finished) if finished else None,
        trials=len(reports),
    )


def previous_wall(uri: str, parent_id: str) -> float:
    """Wall seconds earlier sessions of this search logged (0 for a new search)."""
    return float(tracking.run_metrics(uri, parent_id).get(WALL, 0.0))


def log_spent(uri: str, parent_id: str, now: Spent, wall_s: float) -> None:
    metrics = {SEARCH_COST: now.cost, WALL: wall_s}
    if now.best_val_acc is not None:
        metrics[BEST_SO_FAR] = now.best_val_acc
    tracking.log_metrics(uri, parent_id, metrics, step=now.step)


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
        # Tune calls this before it stores `result` as the trial's last_result.
        latest = [result if t is trial else t.last_result for t in trials]
        now = spent(latest, self.metric)
        if self.lost or now == self.last:
            return
        self.last = now
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
