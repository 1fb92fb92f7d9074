from __future__ import annotations

import copy

import pytest
import torch
from support.tiny import tiny_data, tiny_vgg

from pruning.models import vgg19_from_state_dict
from pruning.runner import RunState, run_schedule
from pruning.schedule import Schedule, SparseTraining, Stage, Training

CPU = torch.device("cpu")
SCHEDULE = Schedule(4.0, (Stage(2.0, 1, 0.02), Stage(4.0, 1, 0.02)), training=Training(64))


@pytest.fixture(scope="module")
def data():
    return tiny_data(600)


def test_stages_report_what_the_trainable_needs(data) -> None:
    results = run_schedule(tiny_vgg(), data, SCHEDULE, device=CPU, seed=1)
    assert [r.stage for r in results] == [1, 2]
    assert [r.completed for r in results] == [False, True]
    assert [r.epochs_used for r in results] == [1, 2]
    assert results[1].train_seconds > results[0].train_seconds > 0
    for r, target in zip(results, (2.0, 4.0), strict=True):
        assert r.speedup == pytest.approx(target, rel=0.01)
    assert {"val_acc", "val_acc_after_prune", "speedup", "macs", "params"} <= set(
        results[0].metrics()
    )


def test_continuing_from_a_stage_checkpoint_matches_an_uninterrupted_run(data) -> None:
    full = run_schedule(tiny_vgg(), data, SCHEDULE, device=CPU, seed=1)

    saved = {}

    def checkpoint(result, pruned, state) -> None:
        if result.stage == 1:
            saved["weights"] = copy.deepcopy(pruned.state_dict())
            saved["state"] = copy.deepcopy(state)

    run_schedule(
        tiny_vgg(),
        data,
        Schedule(2.0, SCHEDULE.stages[:1], training=Training(64)),
        device=CPU,
        seed=1,
        on_stage=checkpoint,
    )
    resumed_model = vgg19_from_state_dict(saved["weights"])
    rest = run_schedule(resumed_model, data, SCHEDULE, device=CPU, seed=1, state=saved["state"])
    assert [r.stage for r in rest] == [2]
    assert rest[0].val_acc == full[1].val_acc and rest[0].macs == full[1].macs


def test_sparse_training_runs_first_and_counts_its_epochs(data) -> None:
    sparse = Schedule(
        2.0, (Stage(2.0, 1, 0.02),), sparse=SparseTraining(1, reg=1e-3), training=Training(64)
    )
    epochs: list[int] = []
    results = run_schedule(
        tiny_vgg(), data, sparse, device=CPU, on_epoch=lambda e, s: epochs.append(e)
    )
    assert epochs == [1, 1]  # one sparse epoch, then one fine-tune epoch
    assert results[-1].epochs_used == 2


def test_state_defaults_to_a_fresh_run() -> None:
    assert RunState().done == 0 and RunState().base_macs is None
