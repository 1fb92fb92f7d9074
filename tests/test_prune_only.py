"""Prune-only searches (issue 15 item 15): space.total_epochs may hold 0, a budget of 0 epochs is
a schedule of 0-epoch stages, and the trial, the cost count, the front and the report take it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from support.experiment import tiny_experiment
from support.tiny import tiny_data, tiny_vgg
from support.trial_rows import row

from pruning.compute import COSTS, finetune_tmacs
from pruning.runner import run_schedule
from pruning.schedule import Training
from search.config import SpaceConfig, config_from_dict
from search.pareto import front, parse_pick, pick
from search.report.plots import plot_front
from trainables.point import TrialPoint, reference_point, split_epochs

CPU = torch.device("cpu")


def _point(space: SpaceConfig, n_stages: int) -> TrialPoint:
    """The space's reference point, with `n_stages` uneven stages."""
    shares = (0.2, 1.0, 0.5)[:n_stages]
    return dataclasses.replace(
        reference_point(space),
        n_stages=n_stages,
        split=shares,
        epochs=shares,
        lr=(0.01,) * n_stages,
    )


def test_a_zero_budget_is_a_schedule_of_zero_epoch_stages() -> None:
    space = SpaceConfig(max_stages=3, total_epochs=(0,))
    assert space.budget == 0 and split_epochs(0, [0.2, 1.0, 0.5]) == [0, 0, 0]
    schedule = _point(space, 3).schedule(3.0, Training(64), 5e-4)
    assert [s.epochs for s in schedule.stages] == [0, 0, 0] and schedule.total_epochs == 0
    assert schedule.stages[-1].speedup == 3.0
    reference = reference_point(space).schedule(3.0, Training(64), 5e-4)
    assert [s.epochs for s in reference.stages] == [0]


def test_a_prune_only_run_prunes_recalibrates_and_counts_only_the_recalibration() -> None:
    data = tiny_data(300)
    schedule = _point(SpaceConfig(max_stages=2, total_epochs=(0,)), 2).schedule(
        3.0, Training(64), 5e-4
    )
    model = tiny_vgg()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    results = run_schedule(model, data, schedule, device=CPU, seed=1)
    assert [r.stage for r in results] == [1, 2] and results[-1].completed
    assert results[-1].speedup == pytest.approx(3.0, rel=0.01)
    for r in results:
        assert r.epochs == 0 and r.epochs_used == 0 and r.train_seconds == 0.0
        assert r.bn_recal_images > 0  # recalibration still runs, forward only
        assert r.stage_tmacs == finetune_tmacs(r.macs, 0, extra_images=r.bn_recal_images)
        assert r.val_acc == r.val_acc_after_recal  # no fine-tune moved a weight
    # the surviving weights are the baseline's own (pruning only drops channels)
    kept = model.state_dict()
    assert torch.equal(kept["classifier.bias"], before["classifier.bias"])


def test_a_prune_only_experiment_is_accepted_and_asha_on_it_refused() -> None:
    prune_only = tiny_experiment("p", space={"total_epochs": [0]})
    assert config_from_dict(prune_only).space.total_epochs == (0,)
    mixed = tiny_experiment("m", space={"total_epochs": [0, 2]}, asha={"enabled": True})
    assert config_from_dict(mixed).space.budget == 2
    with pytest.raises(ValueError, match=r"asha\.grace_epochs=1 is invalid: .* = 0\)"):
        config_from_dict(prune_only | {"asha": {"enabled": True}})
    with pytest.raises(ValueError, match="space.total_epochs"):
        config_from_dict(tiny_experiment("n", space={"total_epochs": [-1]}))


def test_the_front_the_pick_and_the_plot_take_zero_cost_trials(tmp_path: Path) -> None:
    rows = [row(0, 0.50, 0.0), row(1, 0.55, 0.0), row(2, 0.70, 2.0), row(3, 0.1, 0.0, done=False)]
    on_front = front(rows)
    assert [r.trial_id for r in on_front] == ["t0001", "t0002"]
    assert pick(rows, parse_pick("max-acc-under-cost=0")).trial_id == "t0001"
    assert pick(rows[:2], parse_pick("knee")).trial_id == "t0001"
    png = plot_front(rows[:2], front(rows[:2]), tmp_path / "front.png", cost=COSTS["epochs"])
    assert png.read_bytes()[:4] == b"\x89PNG"
