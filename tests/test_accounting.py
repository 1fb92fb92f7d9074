"""A search's compute and its anytime curve on the parent run (real sqlite MLflow; Tune's trials
stand in as objects with a `last_result`, as the driver's callback sees them)."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest

from search.accounting import (
    BEST_SO_FAR,
    SEARCH_COST,
    WALL,
    describe_spent,
    per_trial_cost,
    spent,
)
from search.callbacks import AnytimeCurve
from trainables import tracking

METRIC = "train_tmacs"


def _report(tmacs: float, acc: float, completed: bool = False) -> dict:
    return {METRIC: tmacs, "val_acc": acc, "completed": completed}


def test_spent_counts_every_trial_and_ranks_only_finished_ones() -> None:
    now = spent(
        [
            _report(0.5, 0.9),  # stopped early after its first stage: counted, never the best
            _report(1.25, 0.6, completed=True),
            {"val_acc": 0.1},  # failed before its cost was known
            None,  # not reported yet
        ],
        METRIC,
    )
    assert now.cost == pytest.approx(1.75) and now.trials == 3
    assert now.best_val_acc == 0.6 and now.step == 1750


def test_per_trial_cost_counts_a_retried_trials_restored_stages_once() -> None:
    row = SimpleNamespace
    rows = [
        row(trial_id="a", cost=0.4),  # the attempt that died after stage 1
        row(trial_id="a", cost=1.0),  # its retry: stage 1 restored (0.4 again) + stage 2
        row(trial_id="b", cost=0.3),
        row(trial_id="c", cost=float("nan")),
    ]
    assert per_trial_cost(rows) == pytest.approx(1.3)


@pytest.fixture
def parent(tmp_path: Path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.ensure_experiment(uri, "acc", str(tmp_path / "artifacts"))
    return uri, tracking.start_parent(uri, experiment, "search", {}, {}, [])


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    points = tracking.client(uri).get_metric_history(run_id, key)
    return [(m.step, m.value) for m in sorted(points, key=lambda m: (m.timestamp, m.step))]


def _feed(curve: AnytimeCurve, trials: list, events: list[tuple[int, dict]]) -> None:
    for i, result in events:
        curve.on_trial_result(0, trials, trials[i], result)
        trials[i].last_result = result  # what Tune does right after the callbacks


def test_anytime_curve_is_monotone_and_a_resumed_search_continues_it(parent) -> None:
    uri, run = parent
    trials = [SimpleNamespace(last_result=None) for _ in range(3)]
    curve = AnytimeCurve(uri, run, METRIC)
    curve.setup()
    _feed(
        curve,
        trials,
        [(0, _report(0.2, 0.5)), (1, _report(0.3, 0.4)), (0, _report(0.6, 0.7, True))],
    )
    # the driver dies; the restored Tuner unpickles the callback, Tune restores the trials
    again = pickle.loads(pickle.dumps(curve))
    again.setup()
    assert again.offset > 0  # the first session's wall time
    _feed(again, trials, [(1, _report(0.9, 0.8, True)), (2, _report(0.1, 0.3))])

    cost = _history(uri, run, SEARCH_COST)
    assert [s for s, _ in cost] == [200, 500, 900, 1500, 1600]
    assert [v for _, v in cost] == pytest.approx([0.2, 0.5, 0.9, 1.5, 1.6])
    best = _history(uri, run, BEST_SO_FAR)
    assert best == [(900, 0.7), (1500, 0.8), (1600, 0.8)]
    walls = [v for _, v in _history(uri, run, WALL)]
    assert walls == sorted(walls)
    metrics = tracking.run_metrics(uri, run)
    assert metrics[SEARCH_COST] == pytest.approx(1.6)  # the total of the trials' latest reports


def test_describe_spent_names_what_partial_trials_count() -> None:
    now = spent([_report(1.0, 0.5, True), _report(0.5, 0.2)], METRIC)
    line = describe_spent(now, 125, "TMACs", stopped=1, failed=0)
    assert line == (
        "search compute: 1.5 TMACs of fine-tuning over 2 trials (1 stopped early: counted "
        "with what they computed); wall time 2m05s"
    )
