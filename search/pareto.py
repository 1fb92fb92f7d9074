"""Pareto fronts over finished trials, and the `--pick` rule that chooses one trial from them:
on arrays (non_dominated, knee_point, choose) and on a search's TrialRows (front, pick, the
printed table).

Pure numpy on purpose: the same code ranks results from a live Ray Tune run, from a saved
Optuna study or from an MLflow export, so it must not depend on any of them (TrialRow is only a
type here). A NaN anywhere in a row means "this trial did not report", so such rows are neither
on a front nor dominate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pruning.compute import COSTS, DEFAULT_COST, CostObjective

if TYPE_CHECKING:
    from search.trials import TrialRow

DIRECTION_NAMES = ("maximize", "minimize")  # what a column of `directions` may say
TRIAL_DIRECTIONS = ("maximize", "minimize")  # a trial's (val_acc, cost in the search's unit)
PICK_KINDS = ("max-acc", "knee", "max-acc-under-cost")
PICK_FORMS = (
    "'max-acc', 'knee' or 'max-acc-under-cost=X' (X a finite number in the search's cost unit, "
    "TMACs or epochs, e.g. 12.5)"
)
# Normalised knee distances closer than this are ties: on a straight front every point sits on
# the chord up to rounding, and rounding noise must not decide the pick.
_KNEE_TIE = 1e-9


def _losses(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Validate, then flip signs so that smaller is better in every column."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(
            f"values must have shape (n_points, n_objectives >= 1), got shape {arr.shape}"
        )
    if isinstance(directions, str):  # a bare string would be read as one direction per letter
        raise ValueError(
            f"directions must be a sequence of {DIRECTION_NAMES}, got the string {directions!r}"
        )
    if len(directions) != arr.shape[1]:
        raise ValueError(
            f"got {len(directions)} directions {list(directions)} for {arr.shape[1]} objectives"
        )
    for d in directions:
        if d not in DIRECTION_NAMES:
            raise ValueError(f"unknown direction {d!r}; valid directions are {DIRECTION_NAMES}")
    sign = np.array([-1.0 if d == "maximize" else 1.0 for d in directions])
    return arr * sign


def _dominance(loss: np.ndarray) -> np.ndarray:
    """dom[i, j] is True when row i dominates row j (all losses must be non-NaN).

    Built one objective at a time so memory stays at a few n x n booleans, not n x n x m.
    """
    n = loss.shape[0]
    no_worse = np.ones((n, n), dtype=bool)
    better = np.zeros((n, n), dtype=bool)
    for col in loss.T:
        no_worse &= col[:, None] <= col[None, :]
        better |= col[:, None] < col[None, :]
    return no_worse & better  # exact duplicates are never "better", so they never dominate


def non_dominated(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Boolean mask (n_points,) of the rows no other row dominates: the Pareto front.

    values: (n_points, n_objectives) floats; directions: 'maximize' or 'minimize' per column.
    A row dominates another if it is at least as good on every objective and strictly better on
    at least one, so exact duplicates all stay on the front (as in Optuna's best_trials).
    Rows containing NaN are never on the front and never dominate anything.
    """
    return pareto_ranks(values, directions) == 0


def pareto_ranks(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Non-dominated sorting: rank 0 is the front, rank 1 the front once rank 0 is removed, ...

    Rows containing NaN get rank -1. Counting dominators once and peeling fronts off the counts
    keeps this O(n^2) even when the fronts form one long chain.
    """
    loss = _losses(values, directions)
    ranks = np.full(loss.shape[0], -1, dtype=int)
    valid = np.flatnonzero(~np.isnan(loss).any(axis=1))
    dom = _dominance(loss[valid])
    dominators = dom.sum(axis=0)
    left = np.ones(valid.size, dtype=bool)
    rank = 0
    while left.any():
        front = left & (dominators == 0)
        assert front.any(), "dominance has a cycle"  # impossible for a strict order; never hang
        ranks[valid[front]] = rank
        left &= ~front
        dominators -= dom[front].sum(axis=0)  # the removed front no longer dominates anyone
        rank += 1
    return ranks


def knee_point(
    values: np.ndarray, directions: Sequence[str], front_mask: np.ndarray | None = None
) -> int:
    """Index (into values) of the knee of the front (front_mask, or non_dominated by default).

    Each objective is rescaled over the front to [0, 1] with 1 = best (a column that is constant
    on the front counts as 1 everywhere). With 2 objectives and more than 2 front points the two
    extremes are then (1, 0) and (0, 1), and the knee is the point that bulges furthest from the
    chord between them towards the utopia corner (1, 1): the largest x + y - 1. Points on the
    far side of the chord are poor compromises, so the distance is signed, not absolute. For any
    other objective count, or a front of at most 2 points, or ties on that distance, the pick is
    the point with the largest minimum normalised objective (the most balanced one, closest to
    utopia), and any remaining tie goes to the lowest index.
    """
    loss = _losses(values, directions)
    if front_mask is None:
        front_mask = non_dominated(values, directions)
    front_mask = np.asarray(front_mask)
    if front_mask.dtype != bool or front_mask.shape != (loss.shape[0],):
        raise ValueError(
            f"front_mask must be a boolean array of shape ({loss.shape[0]},), "
            f"got {front_mask.dtype} with shape {front_mask.shape}"
        )
    idx = np.flatnonzero(front_mask)
    if idx.size == 0:
        raise ValueError("the front is empty: no point without NaN to pick a knee from")
    if np.isnan(loss[idx]).any():
        raise ValueError(
            f"front_mask selects rows containing NaN: {idx[np.isnan(loss[idx]).any(1)]}"
        )
    norm = _normalise(-loss[idx])
    balance = norm.min(axis=1)
    candidates = np.ones(idx.size, dtype=bool)
    if norm.shape[1] == 2 and idx.size > 2:
        bulge = norm.sum(axis=1) - 1.0  # signed distance to the chord, times sqrt(2)
        candidates = bulge >= bulge.max() - _KNEE_TIE
    best = np.flatnonzero(candidates & (balance == balance[candidates].max()))
    return int(idx[best[0]])  # flatnonzero is ascending, so this is the lowest index


def _normalise(gain: np.ndarray) -> np.ndarray:
    """Rescale each column of gain (bigger is better) to [0, 1]; constant columns become 1."""
    lo, hi = gain.min(axis=0), gain.max(axis=0)
    span = hi - lo
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (gain - lo) / safe, 1.0)


@dataclass(frozen=True)
class Pick:
    """A parsed --pick argument: which trial of the (accuracy, cost) front to report."""

    kind: str  # one of PICK_KINDS
    cost_limit: float | None = None  # only for 'max-acc-under-cost'

    def __post_init__(self) -> None:
        if self.kind not in PICK_KINDS:
            raise ValueError(f"unknown pick kind {self.kind!r}; valid forms are {PICK_FORMS}")
        needs_limit = self.kind == "max-acc-under-cost"
        if needs_limit != (self.cost_limit is not None):
            raise ValueError(f"cost_limit {self.cost_limit!r} does not fit {self.kind!r}")
        if needs_limit and not np.isfinite(self.cost_limit):
            raise ValueError(f"cost limit must be a finite number, got {self.cost_limit!r}")


def parse_pick(text: str) -> Pick:
    """'max-acc', 'knee' or 'max-acc-under-cost=12.5' -> Pick; anything else is a ValueError."""
    kind, eq, arg = text.strip().partition("=")
    if kind in ("max-acc", "knee") and not eq:
        return Pick(kind)
    if kind == "max-acc-under-cost" and eq:
        try:
            limit = float(arg)
        except ValueError:
            limit = float("nan")
        if np.isfinite(limit):
            return Pick(kind, limit)
    raise ValueError(f"bad --pick {text!r}; valid forms are {PICK_FORMS}")


def choose(acc: np.ndarray, cost: np.ndarray, pick: Pick) -> int:
    """Index of the trial that `pick` selects from completed trials' accuracy and cost.

    max-acc: highest accuracy, ties to the lower cost, then the lower index.
    knee: knee_point of the (accuracy max, cost min) front.
    max-acc-under-cost=X: highest accuracy among cost <= X, ties as for max-acc.
    Trials with a NaN accuracy or cost are never chosen. The ties rule means every pick lies on
    the front, because a higher-accuracy-then-cheaper point cannot be dominated.
    """
    acc = np.asarray(acc, dtype=float)
    cost = np.asarray(cost, dtype=float)
    if acc.ndim != 1 or acc.shape != cost.shape:
        raise ValueError(
            f"acc and cost must be 1-D of one length, got {acc.shape} and {cost.shape}"
        )
    usable = ~np.isnan(acc) & ~np.isnan(cost)
    if not usable.any():
        raise ValueError(f"none of the {acc.size} trials has both an accuracy and a cost")
    if pick.kind == "knee":
        values = np.column_stack([acc, cost])
        return knee_point(values, TRIAL_DIRECTIONS)
    if pick.kind == "max-acc-under-cost":
        assert pick.cost_limit is not None  # guaranteed by Pick.__post_init__
        under = usable & (cost <= pick.cost_limit)
        if not under.any():
            raise ValueError(
                f"no trial has cost <= {pick.cost_limit}; "
                f"the cheapest available cost is {float(cost[usable].min())}"
            )
        usable = under
    idx = np.flatnonzero(usable)
    order = np.lexsort((idx, cost[idx], -acc[idx]))  # last key sorts first: accuracy descending
    return int(idx[order[0]])


# -- a search's trials --------------------------------------------------------------------------


def front(rows: Sequence[TrialRow]) -> list[TrialRow]:
    """The completed trials no other completed trial beats on both accuracy and cost, by cost."""
    usable = [r for r in rows if r.usable]
    if not usable:
        return []
    mask = non_dominated(np.array([[r.val_acc, r.cost] for r in usable]), TRIAL_DIRECTIONS)
    return sorted((r for r, on in zip(usable, mask, strict=True) if on), key=lambda r: r.cost)


def pick(rows: Sequence[TrialRow], how: Pick) -> TrialRow:
    usable = [r for r in rows if r.usable]
    if not usable:
        raise ValueError("no trial completed its whole schedule: nothing to export")
    acc = np.array([r.val_acc for r in usable])
    cost = np.array([r.cost for r in usable])
    return usable[choose(acc, cost, how)]


def format_front(
    rows: Sequence[TrialRow],
    on_front: Sequence[TrialRow],
    cost: CostObjective = COSTS[DEFAULT_COST],
) -> str:
    """The front as a table, by `cost` (the search's objective, named in the first line); both
    epochs and compute are shown whichever it is."""
    usable = sum(r.usable for r in rows)
    lines = [
        f"{len(on_front)} of {usable} completed trials on the front of accuracy against "
        f"{cost.axis()} ({len(rows) - usable} not completed or failed, never on it)",
        f"{'trial':<14} {'val acc':>8} {'TMACs':>8} {'epochs':>7} {'speed-up':>9} {'MACs':>8} "
        f"{'train s':>8}  schedule",
    ]
    lines += [_line(r) for r in on_front]
    for r in rows:
        if r.reference:
            state = "on the front" if r in on_front else "not on the front"
            lines.append(f"reference (Torch-Pruning one-shot recipe, {state}):")
            lines.append(_line(r))
    failed = [r for r in rows if r.status == "FAILED"]
    if failed:
        lines.append(f"{len(failed)} failed:")
        lines += [_line(r) for r in failed]
    return "\n".join(lines)


def _line(r: TrialRow) -> str:
    if r.status == "FAILED":  # no metrics to show (never `nan`): the error instead
        error = r.error.strip().splitlines()[-1] if r.error.strip() else "no error recorded"
        return f"{r.trial_id:<14} FAILED: {error}"
    return (
        f"{r.trial_id:<14} {r.val_acc:>8.2%} {r.train_tmacs:>8.4g} {r.epochs_used:>7g} "
        f"{r.speedup:>8.2f}x "
        f"{r.macs / 1e6:>7.2f}M {r.train_seconds:>8.0f}  {r.schedule}"
    )


def front_json(on_front: Sequence[TrialRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in on_front]
