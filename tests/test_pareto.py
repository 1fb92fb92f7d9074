from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
from support.trial_rows import row as trial_row

from search.objectives import resolve
from search.pareto import (
    DEFAULT,
    Pick,
    choose,
    choose_on,
    format_front,
    front,
    knee_point,
    non_dominated,
    pareto_ranks,
    parse_pick,
)
from search.pareto import (
    pick as pick_row,
)

NAN = float("nan")
MIN2 = ("minimize", "minimize")
ACC_COST = ("maximize", "minimize")


@pytest.mark.parametrize(
    "values, directions, expected",
    [
        pytest.param([[1.0, 2.0]], ACC_COST, [1], id="single-point"),
        pytest.param([[1.0, 1.0]] * 3, ACC_COST, [1, 1, 1], id="all-identical"),
        pytest.param([[1, 1], [2, 2], [3, 3]], MIN2, [1, 0, 0], id="chain"),
        pytest.param([[3, 3], [2, 2], [1, 1]], MIN2, [0, 0, 1], id="chain-reversed"),
        pytest.param([[1, 3], [1, 2], [2, 1], [3, 1]], MIN2, [0, 1, 1, 0], id="ties-on-one"),
        pytest.param([[1, 2], [1, 2], [2, 2]], MIN2, [1, 1, 0], id="duplicates-dominate-third"),
        pytest.param([[NAN, 0], [1, 1], [2, 2], [0, NAN]], MIN2, [0, 1, 0, 0], id="nan-rows"),
        pytest.param([[NAN, NAN], [5, 5]], MIN2, [0, 1], id="nan-does-not-dominate"),
        pytest.param([[NAN, 1.0]], MIN2, [0], id="only-nan"),
        pytest.param(
            [[0.9, 10], [0.8, 5], [0.85, 12], [0.7, 5], [0.95, 20]],
            ACC_COST,
            [1, 1, 0, 0, 1],
            id="mixed-acc-cost",
        ),
        pytest.param(
            [[1, 2, 3], [2, 1, 3], [3, 3, 1], [2, 2, 3], [3, 3, 3]],
            ("minimize",) * 3,
            [1, 1, 1, 0, 0],
            id="three-objectives",
        ),
        pytest.param(
            [[0.9, 5, 1], [0.9, 5, 2], [0.8, 1, 1], [0.7, 1, 3]],
            ("maximize", "minimize", "maximize"),
            [0, 1, 1, 1],
            id="three-mixed",
        ),
        pytest.param([[3], [1], [2], [1]], ("minimize",), [0, 1, 0, 1], id="minimise-only-1d"),
        pytest.param([[3], [1], [2], [3]], ("maximize",), [1, 0, 0, 1], id="maximise-only-1d"),
        pytest.param(
            [[-np.inf, 0], [0, 0], [np.inf, -1]], MIN2, [1, 0, 1], id="infinities-compare"
        ),
    ],
)
def test_non_dominated_table(values, directions, expected) -> None:
    mask = non_dominated(np.array(values, dtype=float), directions)
    assert mask.dtype == bool
    assert mask.tolist() == [bool(e) for e in expected]


def test_non_dominated_empty() -> None:
    assert non_dominated(np.empty((0, 2)), ACC_COST).shape == (0,)
    assert pareto_ranks(np.empty((0, 2)), ACC_COST).shape == (0,)


@pytest.mark.parametrize(
    "values, directions, match",
    [
        ([[1.0, 2.0]], ("maximize",), r"1 directions \['maximize'\] for 2 objectives"),
        ([[1.0, 2.0]], ("maximize", "best"), r"'best'.*'maximize', 'minimize'"),
        ([[1.0, 2.0]], ("max", "minimize"), r"'max'"),
        ([[1.0]], "minimize", r"the string 'minimize'"),
        ([1.0, 2.0], ACC_COST, r"shape \(2,\)"),
        (np.empty((3, 0)), (), r"shape \(3, 0\)"),
    ],
)
def test_bad_inputs_name_the_value(values, directions, match) -> None:
    with pytest.raises(ValueError, match=match):
        non_dominated(np.asarray(values, dtype=float), directions)


def _random_points(seed: int, n_objectives: int) -> np.ndarray:
    """~200 points on a coarse grid (many ties) plus some exact duplicates."""
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 12, size=(180, n_objectives)).astype(float)
    points[:60] += rng.random((60, n_objectives))  # some continuous values as well
    dups = points[rng.integers(0, len(points), size=20)]
    return rng.permutation(np.vstack([points, dups]))


@pytest.mark.parametrize(
    "directions",
    [
        ("maximize", "minimize"),
        ("minimize", "maximize"),
        ("maximize", "minimize", "maximize"),
        ("minimize", "minimize", "maximize"),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_optuna_best_trials(directions, seed) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    values = _random_points(seed, len(directions))
    assert len(np.unique(values, axis=0)) < len(values)  # the duplicates really are there
    study = optuna.create_study(directions=list(directions))
    for row in values:
        trial = optuna.trial.create_trial(values=row.tolist(), params={}, distributions={})
        study.add_trial(trial)
    ours = set(np.flatnonzero(non_dominated(values, directions)).tolist())
    theirs = {t.number for t in study.best_trials}
    assert len(theirs) > 1
    assert ours == theirs


@pytest.mark.parametrize("n_objectives", [2, 3])
def test_pareto_ranks_peel_fronts(n_objectives: int) -> None:
    values = _random_points(7, n_objectives)
    values[[3, 50]] = NAN
    directions = ("maximize",) + ("minimize",) * (n_objectives - 1)
    ranks = pareto_ranks(values, directions)
    assert ranks[3] == ranks[50] == -1
    assert ((ranks == 0) == non_dominated(values, directions)).all()
    assert ranks.max() >= 2
    for r in range(ranks.max() + 1):
        left = np.flatnonzero(ranks >= r)  # fronts 0..r-1 removed (NaN rows too)
        assert (ranks[left[non_dominated(values[left], directions)]] == r).all()
        assert (ranks[left] == r).sum() == non_dominated(values[left], directions).sum()


def test_pareto_ranks_chain_and_duplicates() -> None:
    values = np.array([[3.0, 3.0], [1.0, 1.0], [2.0, 2.0], [1.0, 1.0], [NAN, 0.0]])
    assert pareto_ranks(values, MIN2).tolist() == [2, 0, 1, 0, -1]


def test_knee_on_convex_front_picks_the_bend() -> None:
    # min/min front (0,10) (1,4) (2,2) (4,1) (10,0): normalised x + y - 1 peaks at (2, 2).
    front = [[10, 0], [1, 4], [0, 10], [2, 2], [4, 1]]
    dominated = [[5, 5], [3, 3], [11, 11]]
    values = np.array(dominated + front, dtype=float)
    assert knee_point(values, MIN2) == 6
    # the same front as (accuracy, cost): accuracy = 100 - first column
    acc_cost = values * [-1, 1] + [100, 0]
    assert knee_point(acc_cost, ACC_COST) == 6


@pytest.mark.parametrize("scale", [(0.1, 1.0), (0.7, 3.0)])
def test_knee_on_straight_front_takes_the_balanced_point(scale: tuple[float, float]) -> None:
    # every point is on the chord, and only rounding tells them apart (for (0.7, 3) rounding
    # alone would pick index 7), so the tie rule must pick the balanced middle point
    k = np.arange(11)
    a, b = scale
    values = np.column_stack([a * k, b - b * k / 10])
    assert knee_point(values, MIN2) == 5


def test_knee_on_concave_front_is_not_the_sag() -> None:
    values = np.array([[0.0, 10.0], [8.0, 8.0], [10.0, 0.0]])
    assert non_dominated(values, MIN2).all()
    assert knee_point(values, MIN2) == 0  # both extremes tie; the lower index wins


def test_knee_small_fronts_return_a_front_point() -> None:
    one = np.array([[2.0, 2.0], [1.0, 1.0], [NAN, 0.0]])
    assert knee_point(one, MIN2) == 1
    two = np.array([[3.0, 3.0], [1.0, 2.0], [2.0, 1.0]])
    assert knee_point(two, MIN2) == 1
    assert knee_point(np.array([[5.0, 5.0]]), ACC_COST) == 0


def test_knee_three_objectives_uses_most_balanced() -> None:
    values = np.array([[0, 10, 10], [10, 0, 10], [10, 10, 0], [4, 4, 4]], dtype=float)
    assert knee_point(values, ("minimize",) * 3) == 3


def test_knee_honours_front_mask_and_validates_it() -> None:
    values = np.array([[0.0, 10.0], [2.0, 2.0], [10.0, 0.0], [3.0, 3.0]])
    assert knee_point(values, MIN2, np.array([True, False, True, True])) == 3
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        knee_point(values, MIN2, np.array([True, False]))
    with pytest.raises(ValueError, match="front is empty"):
        knee_point(values, MIN2, np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="front is empty"):
        knee_point(np.array([[NAN, 1.0]]), MIN2)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("max-acc", Pick("max-acc")),
        ("knee", Pick("knee")),
        (" knee ", Pick("knee")),
        ("max-acc-under-cost=12.5", Pick("max-acc-under-cost", 12.5)),
        ("max-acc-under-cost=3", Pick("max-acc-under-cost", 3.0)),
        ("max-acc-under-cost=1e3", Pick("max-acc-under-cost", 1000.0)),
    ],
)
def test_parse_pick_valid(text: str, expected: Pick) -> None:
    assert parse_pick(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "max_acc",
        "MAX-ACC",
        "knee=1",
        "max-acc=2",
        "max-acc-under-cost",
        "max-acc-under-cost=",
        "max-acc-under-cost=cheap",
        "max-acc-under-cost=nan",
        "max-acc-under-cost=inf",
    ],
)
def test_parse_pick_invalid_lists_valid_forms(text: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_pick(text)
    message = str(err.value)
    assert repr(text) in message
    for form in ("'max-acc'", "'knee'", "'max-acc-under-cost=X'"):
        assert form in message


@pytest.mark.parametrize(
    "kind, limit",
    [("best", None), ("knee", 3.0), ("max-acc-under-cost", None), ("max-acc-under-cost", NAN)],
)
def test_pick_rejects_inconsistent_fields(kind: str, limit: float | None) -> None:
    with pytest.raises(ValueError):
        Pick(kind, limit)


ACC = np.array([0.9, 0.95, 0.95, NAN, 0.7])
COST = np.array([5.0, 9.0, 8.0, 1.0, 2.0])


@pytest.mark.parametrize(
    "pick, expected",
    [
        (Pick("max-acc"), 2),  # 0.95 tie goes to the cheaper trial
        (Pick("max-acc-under-cost", 9.0), 2),
        (Pick("max-acc-under-cost", 7.9), 0),
        (Pick("max-acc-under-cost", 5.0), 0),  # the limit is inclusive
        (Pick("max-acc-under-cost", 4.9), 4),
        # front (0.9, 5) (0.95, 8) (0.7, 2) normalises to (0.8, 0.5) (1, 0) (0, 1)
        (Pick("knee"), 0),
    ],
)
def test_choose(pick: Pick, expected: int) -> None:
    chosen = choose(ACC, COST, pick)
    assert chosen == expected
    assert non_dominated(np.column_stack([ACC, COST]), ACC_COST)[chosen]


def test_choose_full_ties_go_to_lower_index() -> None:
    acc, cost = np.array([0.5, 0.9, 0.9]), np.array([1.0, 3.0, 3.0])
    assert choose(acc, cost, Pick("max-acc")) == 1
    assert choose(acc, cost, Pick("max-acc-under-cost", 3.0)) == 1
    acc2, cost2 = np.array([0.8, 0.8, 0.9]), np.array([4.0, 3.0, 20.0])
    assert choose(acc2, cost2, Pick("max-acc-under-cost", 10.0)) == 1


def test_choose_never_picks_nan() -> None:
    acc, cost = np.array([NAN, 0.5, 0.99]), np.array([0.0, 10.0, NAN])
    for pick in (Pick("max-acc"), Pick("knee"), Pick("max-acc-under-cost", 100.0)):
        assert choose(acc, cost, pick) == 1


def test_choose_nothing_under_cost_names_limit_and_cheapest() -> None:
    # the NaN-accuracy trial costs 1.0 but is not available, so 2.0 is the cheapest
    with pytest.raises(ValueError, match=r"cost <= 1\.5; the cheapest available cost is 2\.0"):
        choose(ACC, COST, Pick("max-acc-under-cost", 1.5))


@pytest.mark.parametrize("pick", [Pick("max-acc"), Pick("knee"), Pick("max-acc-under-cost", 1)])
def test_choose_without_finite_points(pick: Pick) -> None:
    with pytest.raises(ValueError, match="none of the 2 trials"):
        choose(np.array([NAN, NAN]), np.array([1.0, 2.0]), pick)


def test_choose_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(3,\) and \(2,\)"):
        choose(np.zeros(3), np.zeros(2), Pick("max-acc"))


# -- objectives beyond (accuracy, cost): measured latency -------------------------------------

THREE = resolve(("val_acc", "cost", "latency"))
# trial:            0     1     2     3     4
ACC3 = np.array([0.90, 0.95, 0.95, 0.80, 0.95])
COST3 = np.array([5.0, 9.0, 8.0, 1.0, 8.0])
LAT3 = np.array([2.0, 1.5, 3.0, 4.0, 2.5])  # ms


def test_front_and_picks_on_three_objectives() -> None:
    columns = {"val_acc": ACC3, "cost": COST3, "latency_ms": LAT3}
    values = np.column_stack([ACC3, COST3, LAT3])
    directions = [o.direction for o in THREE]
    # 2 is dominated by 4 (same accuracy and cost, slower); 1 stays: the fastest of the 0.95s
    assert non_dominated(values, directions).tolist() == [True, True, False, True, True]
    # max-acc: 0.95 three times; the tie goes to the cheaper (cost is named before latency),
    # then to the faster of the equally cheap 2 and 4
    assert choose_on(columns, Pick("max-acc"), THREE) == 4
    assert choose_on(columns, Pick("max-acc-under-latency", 2.0), THREE) == 1
    assert choose_on(columns, Pick("max-acc-under-latency", 1.9), THREE) == 1
    assert choose_on(columns, Pick("max-acc-under-cost", 5.0), THREE) == 0
    # knee with 3 objectives: the most balanced front point (largest minimum normalised
    # objective). Normalised over the front (0, 1, 3, 4): trial 0 is (2/3, 1/2, 4/5)
    assert choose_on(columns, Pick("knee"), THREE) == 0


def test_latency_objective_alone_and_its_pick() -> None:
    acc_lat = resolve(("val_acc", "latency"))
    columns = {"val_acc": ACC3, "cost": COST3, "latency_ms": LAT3}
    assert choose_on(columns, Pick("max-acc"), acc_lat) == 1  # 0.95 at 1.5 ms beats 2.5, 3.0
    with pytest.raises(ValueError, match=r"latency_ms <= 1; the fastest available latency_ms"):
        choose_on(columns, Pick("max-acc-under-latency", 1.0), acc_lat)
    no_latency = {"val_acc": ACC3, "cost": COST3, "latency_ms": np.full(5, NAN)}
    with pytest.raises(ValueError, match="no trial reports latency_ms"):
        choose_on(no_latency, Pick("max-acc-under-latency", 9.0), DEFAULT)


def test_parse_latency_pick() -> None:
    assert parse_pick("max-acc-under-latency=3.5") == Pick("max-acc-under-latency", 3.5)
    with pytest.raises(ValueError, match="max-acc-under-latency=X"):
        parse_pick("max-acc-under-latency=fast")


def test_front_of_rows_follows_the_objectives() -> None:
    rows = [
        dataclasses.replace(trial_row(i, acc, cost), latency_ms=lat)
        for i, (acc, cost, lat) in enumerate(zip(ACC3, COST3, LAT3, strict=True))
    ]
    by_cost = [r.run_id for r in front(rows)]
    assert by_cost == ["run3", "run0", "run2", "run4"]  # sorted by cost; 1 is dominated
    # on latency, 1 (the most accurate and the fastest) dominates every other trial
    by_latency = front(rows, resolve(("val_acc", "latency")))
    assert [r.run_id for r in by_latency] == ["run1"]
    assert [r.run_id for r in front(rows, THREE)] == ["run3", "run0", "run4", "run1"]
    assert pick_row(rows, Pick("max-acc-under-latency", 2.0), THREE).run_id == "run1"
    table = format_front(rows, by_latency, objectives=resolve(("val_acc", "latency")))
    assert "against latency (ms per batch)" in table and "1.5ms" in table
