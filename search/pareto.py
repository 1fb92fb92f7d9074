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
from search.objectives import DEFAULT_OBJECTIVES, DIRECTIONS, Objective, resolve

if TYPE_CHECKING:
    from search.trials import TrialRow

DIRECTION_NAMES = DIRECTIONS  # what a column of `directions` may say
DEFAULT = resolve(DEFAULT_OBJECTIVES)  # (val_acc, cost): what a search ranks by unless told
# The picks with a limit X: the metric X bounds, and the word for its lowest value.
LIMITED = {
    "max-acc-under-cost": ("cost", "cheapest"),
    "max-acc-under-latency": ("latency_ms", "fastest"),
}
PICK_KINDS = ("max-acc", "knee", *LIMITED)
PICK_FORMS = (
    "'max-acc', 'knee', 'max-acc-under-cost=X' (X a finite number in the search's cost unit, "
    "TMACs or epochs, e.g. 12.5) or 'max-acc-under-latency=X' (X in ms per batch at the first "
    "of latency.batches, e.g. 3.5)"
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
    """A parsed --pick argument: which trial of the front to report."""

    kind: str  # one of PICK_KINDS
    limit: float | None = None  # only for the kinds of LIMITED: X of 'max-acc-under-cost=X'

    def __post_init__(self) -> None:
        if self.kind not in PICK_KINDS:
            raise ValueError(f"unknown pick kind {self.kind!r}; valid forms are {PICK_FORMS}")
        needs_limit = self.kind in LIMITED
        if needs_limit != (self.limit is not None):
            raise ValueError(f"limit {self.limit!r} does not fit {self.kind!r}")
        if needs_limit and not np.isfinite(self.limit):
            raise ValueError(f"the limit must be a finite number, got {self.limit!r}")


def parse_pick(text: str) -> Pick:
    """'max-acc', 'knee', 'max-acc-under-cost=12.5' or 'max-acc-under-latency=3.5' -> Pick;
    anything else is a ValueError."""
    kind, eq, arg = text.strip().partition("=")
    if kind in ("max-acc", "knee") and not eq:
        return Pick(kind)
    if kind in LIMITED and eq:
        try:
            limit = float(arg)
        except ValueError:
            limit = float("nan")
        if np.isfinite(limit):
            return Pick(kind, limit)
    raise ValueError(f"bad --pick {text!r}; valid forms are {PICK_FORMS}")


def choose(acc: np.ndarray, cost: np.ndarray, pick: Pick) -> int:
    """Index of the trial that `pick` selects from completed trials' accuracy and cost: the
    two-objective case of choose_on (accuracy max, cost min)."""
    acc = np.asarray(acc, dtype=float)
    cost = np.asarray(cost, dtype=float)
    if acc.ndim != 1 or acc.shape != cost.shape:
        raise ValueError(
            f"acc and cost must be 1-D of one length, got {acc.shape} and {cost.shape}"
        )
    return choose_on({"val_acc": acc, "cost": cost}, pick, DEFAULT)


def choose_on(
    columns: dict[str, np.ndarray], pick: Pick, objectives: Sequence[Objective] = DEFAULT
) -> int:
    """Index of the trial `pick` selects. columns: metric -> (n_trials,) values, holding every
    objective's metric (val_acc among them) and the metric a limited pick bounds.

    max-acc: highest accuracy; ties go to the better value of the other objectives in their
    order, then to the lower index.
    knee: knee_point of the objectives' front (with 3 objectives: the most balanced point).
    max-acc-under-cost=X / max-acc-under-latency=X: max-acc among cost <= X / latency_ms <= X.
    Trials with a NaN objective are never chosen. The ties rule means every pick lies on the
    front, because a best-accuracy-then-best-rest point cannot be dominated.
    """
    ranked = np.column_stack([np.asarray(columns[o.metric], dtype=float) for o in objectives])
    usable = ~np.isnan(ranked).any(axis=1)
    if not usable.any():
        names = " and ".join(o.metric for o in objectives)
        raise ValueError(f"none of the {usable.size} trials has all of {names}")
    directions = [o.direction for o in objectives]
    if pick.kind == "knee":
        return knee_point(ranked, directions)
    if pick.kind in LIMITED:
        usable &= _under(columns, pick, usable)
    idx = np.flatnonzero(usable)
    loss = _losses(ranked[idx], directions)  # smaller is better in every column
    acc_col = [o.metric for o in objectives].index("val_acc")
    rest = [loss[:, j] for j in range(loss.shape[1]) if j != acc_col]
    # lexsort: the last key sorts first: accuracy, then the other objectives, then the index
    order = np.lexsort((idx, *reversed(rest), loss[:, acc_col]))
    return int(idx[order[0]])


def _under(columns: dict[str, np.ndarray], pick: Pick, usable: np.ndarray) -> np.ndarray:
    """Mask of the trials whose bounded metric is at most the pick's limit (NaN: not)."""
    metric, lowest = LIMITED[pick.kind]
    values = np.asarray(columns.get(metric, np.full(usable.shape, np.nan)), dtype=float)
    known = usable & ~np.isnan(values)
    if not known.any():
        raise ValueError(
            f"--pick {pick.kind}: no trial reports {metric} (a search with `latency: null` "
            "measures no latency)"
        )
    assert pick.limit is not None  # guaranteed by Pick.__post_init__
    under = known & (values <= pick.limit)
    if not under.any():
        raise ValueError(
            f"no trial has {metric} <= {pick.limit:g}; the {lowest} available {metric} is "
            f"{float(values[known].min())}"
        )
    return under


# -- a search's trials --------------------------------------------------------------------------


def _column(rows: Sequence[TrialRow], metric: str) -> np.ndarray:
    """One metric of every row (an Objective's metric is the TrialRow field of that name)."""
    return np.array([getattr(r, metric) for r in rows], dtype=float)


def front(rows: Sequence[TrialRow], objectives: Sequence[Objective] = DEFAULT) -> list[TrialRow]:
    """The completed trials no other completed trial beats on every objective, sorted by the
    objectives after accuracy (cost, then latency, as the search names them)."""
    usable = [r for r in rows if r.usable]
    if not usable:
        return []
    values = np.column_stack([_column(usable, o.metric) for o in objectives])
    mask = non_dominated(values, [o.direction for o in objectives])
    rest = [o.metric for o in objectives if o.metric != "val_acc"]
    on = [r for r, keep in zip(usable, mask, strict=True) if keep]
    return sorted(on, key=lambda r: tuple(getattr(r, m) for m in rest))


def pick(
    rows: Sequence[TrialRow], how: Pick, objectives: Sequence[Objective] = DEFAULT
) -> TrialRow:
    usable = [r for r in rows if r.usable]
    if not usable:
        raise ValueError("no trial completed its whole schedule: nothing to export")
    metrics = {o.metric for o in objectives} | {m for m, _ in LIMITED.values()}
    return usable[choose_on({m: _column(usable, m) for m in metrics}, how, objectives)]


def format_front(
    rows: Sequence[TrialRow],
    on_front: Sequence[TrialRow],
    cost: CostObjective = COSTS[DEFAULT_COST],
    objectives: Sequence[Objective] = DEFAULT,
) -> str:
    """The front as a table, on `objectives` (named in the first line, the cost in `cost`'s
    unit); compute, epochs, the MACs speed-up and the measured latency speed-up (at the first
    batch size; '-' when the search measured none) are shown whatever the objectives are."""
    usable = sum(r.usable for r in rows)
    against = " and ".join(o.axis(cost) for o in objectives if o.metric != "val_acc")
    lines = [
        f"{len(on_front)} of {usable} completed trials on the front of accuracy against "
        f"{against} ({len(rows) - usable} not completed or failed, never on it)",
        f"{'trial':<14} {'val acc':>8} {'TMACs':>8} {'epochs':>7} {'MACs x':>8} "
        f"{'latency':>9} {'lat x':>6} {'MACs':>8} {'train s':>8}  schedule",
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
    latency = "-" if np.isnan(r.latency_ms) else f"{r.latency_ms:.3g}ms"
    measured = "-" if np.isnan(r.latency_speedup) else f"{r.latency_speedup:.2f}x"
    return (
        f"{r.trial_id:<14} {r.val_acc:>8.2%} {r.train_tmacs:>8.4g} {r.epochs_used:>7g} "
        f"{r.speedup:>7.2f}x {latency:>9} {measured:>6} "
        f"{r.macs / 1e6:>7.2f}M {r.train_seconds:>8.0f}  {r.schedule}"
    )


def front_json(on_front: Sequence[TrialRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in on_front]
