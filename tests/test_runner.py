from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from support.tiny import tiny_data, tiny_vgg

from pruning.latency import LatencySettings
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


class ParamsClock:
    """A fake clock for latency: each forward of the model it watches takes 1 us per parameter
    per image, so a pruned model is faster by exactly its parameter ratio, every run."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.now = 0.0  # seconds
        model.register_forward_hook(self._forward)

    def _forward(self, module, inputs, output) -> None:
        self.now += _params(module) * inputs[0].shape[0] * 1e-6

    def __call__(self) -> float:
        return self.now


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_stages_report_latency_against_the_dense_model_measured_once(data) -> None:
    model = tiny_vgg()
    dense_params = _params(model)
    pruned_params: list[int] = []
    states: list[RunState] = []
    settings = LatencySettings(batches=(2, 8), warmup=1, runs=3)

    def keep(result, pruned, state) -> None:
        pruned_params.append(_params(pruned))
        states.append(copy.deepcopy(state))

    results = run_schedule(
        model,
        data,
        SCHEDULE,
        device=CPU,
        seed=1,
        on_stage=keep,
        latency=settings,
        timer=ParamsClock(model),
    )
    plain = run_schedule(tiny_vgg(), data, SCHEDULE, device=CPU, seed=1)
    # measuring draws no random numbers: the run takes the same path
    assert [r.val_acc for r in results] == [r.val_acc for r in plain]
    dense = states[0].dense_latency
    assert set(dense) == {2, 8} and dense[8].median_ms == pytest.approx(dense_params * 8e-3)
    for r, params in zip(results, pruned_params, strict=True):
        assert r.latency_ms == pytest.approx(params * 2e-3)  # the primary batch: the first, 2
        assert r.latency_speedup == pytest.approx(dense_params / params)
        m = r.metrics()
        assert m["latency_ms_b8"] == pytest.approx(params * 8e-3)
        assert m["latency_speedup_b8"] == pytest.approx(dense_params / params)
        assert m["dense_latency_ms_b2"] == pytest.approx(dense_params * 2e-3)
        assert m["latency_iqr_ms_b8"] == pytest.approx(0.0, abs=1e-9)  # a steady clock
        assert r.as_dict()["latency_ms_b8"] == m["latency_ms_b8"]
    assert 1 < results[0].latency_speedup < results[1].latency_speedup
    # dense_latency survives the trial's state.json round trip, so a resumed trial needs no
    # dense model to report its speed-up
    restored = RunState(**json.loads(json.dumps(dataclasses.asdict(states[0]))))
    assert restored.dense_latency == dense
    # off: no latency fields, no numbers made up
    assert plain[0].latency_ms is None and plain[0].latency_speedup is None
    assert not any("latency" in k for k in plain[0].metrics())
