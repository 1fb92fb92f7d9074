"""Compute cost (issue 11): a stage's count, the cost objectives, the front built on them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from support.tiny import tiny_data, tiny_vgg

from pruning.compute import COSTS, finetune_tmacs
from pruning.prune import count_macs_params
from pruning.runner import RunState, run_schedule
from pruning.schedule import Schedule, SparseTraining, Stage, Training
from search.config import config_from_dict
from search.pareto import front
from search.trials import rows_from_runs
from search.tuner import asha_max_t
from trainables import tracking
from trainables.trial import asha_time

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return tiny_data(300)


def test_finetune_tmacs_is_three_student_passes_plus_the_teacher_and_forward_only_images() -> None:
    student, teacher, images, extra = 2_000_000, 9_000_000, 1_000, 256
    expected = ((3 * student + teacher) * images + student * extra) / 1e12
    assert finetune_tmacs(student, images, teacher_macs=teacher, extra_images=extra) == expected
    assert finetune_tmacs(student, images) == 3 * student * images / 1e12
    # a teacher costs what its forward pass costs, per training image, and nothing without them
    with_teacher = finetune_tmacs(student, images, teacher_macs=teacher)
    assert with_teacher - finetune_tmacs(student, images) == pytest.approx(teacher * images / 1e12)
    assert finetune_tmacs(student, 0, teacher_macs=teacher) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        finetune_tmacs(student, -1)


def test_a_stage_counts_its_analytic_compute(data) -> None:
    """Sparse epochs at full size, then per stage 3 x the pruned MACs per training image seen
    plus its forward-only BN recalibration images."""
    n = len(data.train.labels)
    base = count_macs_params(tiny_vgg(), torch.zeros(1, 3, 32, 32))[0]
    schedule = Schedule(
        4.0,
        (Stage(2.0, 2, 0.02), Stage(4.0, 1, 0.02)),
        sparse=SparseTraining(1),
        training=Training(64),
        bn_recalibration_batches=2,
    )
    results = run_schedule(tiny_vgg(), data, schedule, device=CPU, seed=1)
    sparse = 3 * base * n / 1e12
    total = sparse
    for r, stage in zip(results, schedule.stages, strict=True):
        assert r.bn_recal_images == 2 * 64  # two full batches of 64
        expected = (3 * r.macs * stage.epochs * n + r.macs * r.bn_recal_images) / 1e12
        assert r.stage_tmacs == pytest.approx(expected, rel=1e-12)
        assert r.stage_tmacs == pytest.approx(
            finetune_tmacs(r.macs, stage.epochs * n, extra_images=r.bn_recal_images)
        )
        total += expected
        assert r.train_tmacs == pytest.approx(total, rel=1e-12)  # cumulative, sparse included
    assert results[-1].metrics()["train_tmacs"] == pytest.approx(total)


def test_the_cost_objectives_name_their_metric_and_unit() -> None:
    assert COSTS.names() == ("compute", "epochs")
    assert (COSTS["compute"].metric, COSTS["compute"].unit) == ("train_tmacs", "TMACs")
    assert (COSTS["epochs"].metric, COSTS["epochs"].unit) == ("epochs_used", "epochs")
    assert COSTS["compute"].axis() == "fine-tune compute (TMACs)"


def test_config_defaults_to_compute_and_rejects_an_unknown_cost_with_a_suggestion() -> None:
    assert config_from_dict({"name": "x"}).cost_objective.metric == "train_tmacs"
    assert config_from_dict({"name": "x", "cost": "epochs"}).cost == "epochs"
    with pytest.raises(ValueError, match=r"cost='compte'.*did you mean 'compute'"):
        config_from_dict({"name": "x", "cost": "compte"})


def _run(i: int, acc: float, epochs: float, tmacs: float) -> SimpleNamespace:
    metrics = {
        "completed": 1.0,
        "val_acc": acc,
        "epochs_used": epochs,
        "train_tmacs": tmacs,
        "cost": epochs,  # what an epochs search would have logged: never read for the front
    }
    return SimpleNamespace(
        info=SimpleNamespace(run_id=f"run{i}", status="FINISHED"),
        data=SimpleNamespace(metrics=metrics, tags={tracking.TRIAL_TAG: f"t{i}"}),
    )


def test_a_compute_front_is_built_on_train_tmacs_not_epochs() -> None:
    # Same epochs, but trial 1's early stages trained a bigger model: it costs more compute.
    runs = [_run(0, 0.70, 6, 1.0), _run(1, 0.69, 6, 3.0), _run(2, 0.60, 4, 2.0)]
    by_compute = rows_from_runs(runs, COSTS["compute"])
    assert [r.cost for r in by_compute] == [1.0, 3.0, 2.0]
    assert [r.run_id for r in front(by_compute)] == ["run0"]  # cheapest and best
    by_epochs = rows_from_runs(runs, COSTS["epochs"])
    assert [r.run_id for r in front(by_epochs)] == ["run2", "run0"]
    assert by_epochs[1].train_tmacs == 3.0 and by_compute[1].epochs_used == 6


def test_runs_without_the_chosen_cost_are_never_on_the_front() -> None:
    old = _run(0, 0.9, 6, 1.0)
    del old.data.metrics["train_tmacs"]  # logged before compute was counted
    rows = rows_from_runs([old, _run(1, 0.5, 6, 2.0)], COSTS["compute"])
    assert [r.run_id for r in front(rows)] == ["run1"]


def test_asha_time_is_the_chosen_cost_in_epochs_of_the_unpruned_model() -> None:
    dense, images = 4_000_000, 500  # MACs per image, training images
    one_epoch = 3 * dense * images / 1e12  # TMACs of one epoch of the unpruned model
    metrics = {"epochs_used": 3.0, "train_tmacs": 1.5 * one_epoch}
    state = RunState(base_macs=dense)
    assert asha_time("epochs", metrics, state, images) == 3.0
    assert asha_time("compute", metrics, state, images) == pytest.approx(1.5)


def test_asha_max_t_bounds_every_trial_in_epochs() -> None:
    raw = {"name": "a", "target_speedup": 2.0, "space": {"total_epochs": [2, 4], "max_stages": 2}}
    epochs = config_from_dict(raw | {"cost": "epochs"}, "a.yaml")
    compute = config_from_dict(raw, "a.yaml")
    assert asha_max_t(epochs) == 4.0
    # a distilled 4-epoch budget is 16/3 epochs; recalibration of 2 stages fits in the rest
    assert asha_max_t(compute) > 4 * 4 / 3 + 2
