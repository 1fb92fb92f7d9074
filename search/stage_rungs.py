"""Early stopping for an Optuna strategy: the experiment's `asha` section, whose `rungs` names
one entry of search.rungs.RUNGS (the registry, apart so that reading a config needs no Ray).

- `epochs` (the default): Ray Tune's ASHAScheduler on validation accuracy alone, its rungs at
  grace_epochs * reduction_factor^k of the cumulative cost in dense epochs (trainables.trial.
  ASHA_TIME). A trial shorter than grace_epochs never reaches a rung.
- `stages`: StageRungs below, a Ray Tune scheduler whose rungs are the stages themselves and
  which promotes by non-dominated rank on (val acc, cost so far), as Syne Tune's MOASHA does.

StageRungs' rule. A trial's report of a stage k that is not its last (`completed` 0) is its
result at rung k: (val_acc, cost), cost being the search's cost objective, cumulative. Its
last stage is no rung: the trial is complete, and the report is never recorded. Only results
of the same rung are compared. The results recorded at rung k are ordered by non-dominated
sorting (search.pareto.pareto_ranks: val_acc up, cost down), then by val_acc (the primary
objective) within a front. With n results recorded, this one among them:
- n < reduction_factor: CONTINUE. A rung that holds fewer results than the one-in-
  reduction_factor promotion needs cannot rank them yet (Ray's ASHA continues the first result
  at a rung for the same reason).
- otherwise CONTINUE when fewer than ceil(n / reduction_factor) of the n results rank strictly
  ahead of it, else STOP. Ties never stop a trial.
Decisions are asynchronous (as ASHA's): a result is compared with those recorded before it and
never judged again, and early trials are promoted more easily than late ones. Recorded results
stay when their trial stops or fails: they are what later trials are measured against.

Caveat: a trial's stage-k val acc is measured at its own stage-k speed-up (each trial splits
the target its own way, over its own number of stages), so a rung compares models at different
speed-ups; cost so far at least counts the same compute for everyone. A stopped trial never
reaches the target: it is accounted with what it computed (search.accounting) and never on the
front, which holds finished trials only (search.trials.TrialRow.usable). A one-stage trial (the
reference recipe among them) has no rung and always runs to its end.
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.objectives import ACCURACY
from search.pareto import pareto_ranks

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

COST = "cost"  # the chosen cost objective's metric, cumulative (trainables.trial reports it)
DIRECTIONS = ("maximize", "minimize")  # (val_acc, cost)
RESULT_FILE = "result.json"  # Tune's per-trial log of every report, in the trial's folder


def rung_of(result: Mapping[str, Any]) -> int | None:
    """The rung a trial's report is at (its 1-based stage), or None: its last stage, a report
    without a stage, or one whose val_acc or cost is not a finite number."""
    if result.get("completed") or "stage" not in result:
        return None
    values = [result.get(ACCURACY), result.get(COST)]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    return int(result["stage"])


def ahead_of(values: np.ndarray, i: int) -> int:
    """How many rows of values (n, 2: val_acc, cost) rank strictly ahead of row i: a lower
    non-dominated rank, or the same rank and a higher val_acc."""
    ranks = pareto_ranks(values, DIRECTIONS)
    better_front = ranks < ranks[i]
    same_front_more_accurate = (ranks == ranks[i]) & (values[:, 0] > values[i, 0])
    return int(np.count_nonzero(better_front | same_front_more_accurate))


def promoted(recorded: Mapping[str, tuple[float, float]], trial_id: str, factor: int) -> bool:
    """The rule of the module docstring for `trial_id`'s result among `recorded` (trial id ->
    (val_acc, cost), its own included) at one rung."""
    n = len(recorded)
    if n < factor:
        return True
    ids = list(recorded)
    values = np.array([recorded[t] for t in ids], dtype=float)
    return ahead_of(values, ids.index(trial_id)) < math.ceil(n / factor)


class StageRungs(FIFOScheduler):
    """Successive halving at stage rungs by non-dominated rank on (val_acc, cost so far)."""

    def __init__(self, reduction_factor: int) -> None:
        super().__init__()
        if not (isinstance(reduction_factor, int) and reduction_factor >= 2):
            raise ValueError(f"reduction_factor={reduction_factor!r}: an integer >= 2")
        self.reduction_factor = reduction_factor
        self._metric = ACCURACY  # Tune then checks every report carries it
        self.rungs: dict[int, dict[str, tuple[float, float]]] = {}  # stage -> trial -> result
        self.stopped: dict[str, int] = {}  # trial id -> the rung it was stopped at

    def decide(self, trial_id: str, result: Mapping[str, Any]) -> str:
        """CONTINUE or STOP for one report (records it when it is a rung's first from trial)."""
        stage = rung_of(result)
        if stage is None:
            return TrialScheduler.CONTINUE
        recorded = self.rungs.setdefault(stage, {})
        if trial_id in recorded:  # judged at this rung already (a retry reporting it again)
            return TrialScheduler.CONTINUE
        recorded[trial_id] = (float(result[ACCURACY]), float(result[COST]))
        if promoted(recorded, trial_id, self.reduction_factor):
            return TrialScheduler.CONTINUE
        self.stopped[trial_id] = stage
        return TrialScheduler.STOP

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        return self.decide(trial.trial_id, result)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        """A trial a resumed Tuner restores brings its rung results back (Tune keeps no
        scheduler state across a restore: the Tuner unpickles the scheduler as it was built)."""
        if trial.has_reported_at_least_once:  # a new trial has no history (nor folder)
            self.record_history(trial.trial_id, reported(trial))

    def record_history(self, trial_id: str, reports: list[dict[str, Any]]) -> None:
        """Record earlier reports of a trial at their rungs, without judging them again."""
        for result in reports:
            stage = rung_of(result)
            if stage is not None:
                value = (float(result[ACCURACY]), float(result[COST]))
                self.rungs.setdefault(stage, {}).setdefault(trial_id, value)

    def debug_string(self) -> str:
        sizes = ", ".join(f"stage {k}: {len(v)}" for k, v in sorted(self.rungs.items()))
        return (
            f"Using StageRungs (reduction factor {self.reduction_factor}): "
            f"{len(self.stopped)} stopped; results at rungs: {sizes or 'none'}"
        )

    def save(self, checkpoint_path: str) -> None:
        state = (self.reduction_factor, self.rungs, self.stopped)
        Path(checkpoint_path).write_bytes(pickle.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = pickle.loads(Path(checkpoint_path).read_bytes())
        self.reduction_factor, self.rungs, self.stopped = state


def reported(trial: Trial) -> list[dict[str, Any]]:
    """Every report Tune logged for `trial` (its result.json in the search's storage, which
    may be a remote filesystem); none when it cannot be read."""
    storage = trial.storage
    path = Path(storage.trial_fs_path, RESULT_FILE).as_posix()
    try:
        with storage.storage_filesystem.open_input_stream(path) as stream:
            text = stream.read().decode()
    except (OSError, FileNotFoundError):
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
