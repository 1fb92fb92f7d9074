"""The latency target (pruning/latency_target.py): landing on a measured latency speed-up with a
deterministic fake timer (latency a function of the pruned copy's MACs, with and without noise),
its bounds and errors, and one landing with the real timer on a x0.125 VGG19."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from pruning.latency import Latency, measure
from pruning.latency_target import MAX_PROBES, TOLERANCE, LatencyTarget, land, landed_schedule
from pruning.models import ModelSpec, build_model, layer_widths
from pruning.prune import count_macs_params, floor_speedup, prune_to_speedup
from pruning.schedule import log_equal

EXAMPLE = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec("vgg19", num_classes=4, width=0.125))


def prune(model: nn.Module, speedup: float):  # type: ignore[no-untyped-def]
    return prune_to_speedup(model, EXAMPLE, speedup, min_channels=4, min_channel_ratio=0.1)


class FakeTimer:
    """A model's latency as a function of its MACs: a fixed overhead plus a cost per MAC, so the
    latency speed-up saturates below the MACs speed-up (as on real CPUs). `noise`: each timing
    is off by a seeded uniform factor in [1 - noise, 1 + noise]."""

    OVERHEAD_MS = 0.3
    MS_PER_MMAC = 0.1

    def __init__(self, noise: float = 0.0, seed: int = 0) -> None:
        self.noise, self.rng, self.calls = noise, random.Random(seed), 0

    def ms(self, macs: float) -> float:
        return self.OVERHEAD_MS + self.MS_PER_MMAC * macs / 1e6

    def __call__(self, model: nn.Module) -> Latency:
        self.calls += 1
        ms = self.ms(count_macs_params(model, EXAMPLE)[0])
        ms *= 1 + self.rng.uniform(-self.noise, self.noise)
        return Latency(1, 1, "cpu", ms, 0.95 * ms, 1.1 * ms, 0.04 * ms, 20)


def exact_speedup(model: nn.Module, timer: FakeTimer, macs_speedup: float) -> float:
    """The fake timer's noiseless latency speed-up at a MACs speed-up."""
    macs = count_macs_params(model, EXAMPLE)[0]
    return timer.ms(macs) / timer.ms(macs / macs_speedup)


def landing(model: nn.Module, target: LatencyTarget, timer: FakeTimer, **kwargs):  # type: ignore[no-untyped-def]
    cap = floor_speedup(model, EXAMPLE, 4, 0.1)
    dense = FakeTimer()(model)  # the reference without noise
    options = {"low": 1.0, "cap": cap} | kwargs
    return land(model, target, prune=prune, time_model=timer, dense=dense, **options)


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_lands_within_tolerance_and_reports_the_spread(vgg: nn.Module, noise: float) -> None:
    before = layer_widths(vgg)
    timer = FakeTimer(noise, seed=1)
    target = LatencyTarget(2.0)
    result = landing(vgg, target, timer)
    assert result.met and abs(result.latency_speedup / 2.0 - 1) <= TOLERANCE
    assert 1 <= len(result.probes) <= MAX_PROBES and timer.calls == len(result.probes)
    # The latency speed-up is sub-linear in MACs here: the landing needs more MACs speed-up.
    assert result.macs_speedup > 2.2
    assert exact_speedup(vgg, FakeTimer(), result.macs_speedup) == pytest.approx(2.0, rel=0.1)
    # Spread: 4% IQR on both models -> about 8% of the speed-up.
    assert result.latency_spread == pytest.approx(0.08 * result.latency_speedup, rel=1e-6)
    assert result.latency_speedup == pytest.approx(result.dense_ms / result.latency_ms)
    assert layer_widths(vgg) == before  # probes prune copies


def test_the_landed_macs_speedup_reproduces_the_probe(vgg: nn.Module) -> None:
    """Pruning the model itself to the landed MACs speed-up gives the model that was timed."""
    result = landing(vgg, LatencyTarget(1.8), FakeTimer())
    model = copy.deepcopy(vgg)
    report = prune(model, result.macs_speedup)
    chosen = next(p for p in result.probes if p.macs_speedup == result.macs_speedup)
    assert report.speedup == pytest.approx(chosen.achieved_macs_speedup, rel=1e-12)
    assert FakeTimer()(model).median_ms == pytest.approx(result.latency_ms)


def test_probes_are_bounded_and_the_closest_is_returned(vgg: nn.Module) -> None:
    target = LatencyTarget(2.0, tolerance=1e-6, max_probes=3)
    timer = FakeTimer(noise=0.05, seed=3)
    result = landing(vgg, target, timer)
    assert len(result.probes) <= 3 and timer.calls == len(result.probes)
    assert not result.met
    misses = [abs(p.latency_speedup / 2.0 - 1) for p in result.probes]
    assert abs(result.latency_speedup / 2.0 - 1) == min(misses)


def test_the_bracket_starts_at_the_model_speedup(vgg: nn.Module) -> None:
    """A guess below the MACs speed-up the model already has is raised to it."""
    result = landing(vgg, LatencyTarget(2.5), FakeTimer(), low=3.0, guess=1.2)
    assert result.probes[0].macs_speedup == 3.0
    assert all(p.macs_speedup >= 3.0 for p in result.probes)


def test_an_unreachable_target_names_the_best_reachable_value(vgg: nn.Module) -> None:
    timer = FakeTimer()
    cap = floor_speedup(vgg, EXAMPLE, 4, 0.1)
    best = exact_speedup(vgg, timer, cap * 0.99)  # the fake's speed-up at the floor's cap
    with pytest.raises(ValueError, match=r"target\.latency_speedup=6\.0 is invalid") as err:
        landing(vgg, LatencyTarget(6.0), timer)
    assert f"best reachable measured is {best:.3g}x" in str(err.value)
    assert "Lower the target, or the floor" in str(err.value)
    assert timer.calls <= MAX_PROBES


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"latency_speedup": 1.0}, "target.latency_speedup"),
        ({"latency_speedup": 0.5}, "target.latency_speedup"),
        ({"latency_speedup": "2"}, "target.latency_speedup"),
        ({"latency_speedup": True}, "target.latency_speedup"),
        ({"latency_speedup": float("nan")}, "target.latency_speedup"),
        ({"latency_speedup": 2.0, "tolerance": 0.0}, "target.tolerance"),
        ({"latency_speedup": 2.0, "max_probes": 0}, "target.max_probes"),
    ],
)
def test_bad_targets_are_named(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}=.* is invalid"):
        LatencyTarget(**kwargs)


def test_landed_schedule_records_the_macs_speedup() -> None:
    schedule = log_equal(4.0, 2, 1)
    landed = landed_schedule(schedule, 5.5)
    assert landed.target_speedup == 5.5 and landed.stages[-1].speedup == 5.5
    assert landed.stages[0] == schedule.stages[0]


def test_real_timer_lands_within_tolerance_of_what_it_measures(vgg: nn.Module) -> None:
    """The real clock on a shared machine: a modest target at the throughput batch, with a
    tolerance wide enough for its noise. Asserts the landing's own report, not timings."""

    def time_model(model: nn.Module) -> Latency:
        return measure(model, EXAMPLE, 64, threads=1, warmup=2, runs=9)

    target = LatencyTarget(1.4, tolerance=0.25, max_probes=6)
    cap = floor_speedup(vgg, EXAMPLE, 4, 0.1)
    result = land(
        vgg, target, prune=prune, time_model=time_model, dense=time_model(vgg), low=1.0, cap=cap
    )
    assert result.met, result.probes
    assert abs(result.latency_speedup / 1.4 - 1) <= 0.25
    assert result.latency_speedup == pytest.approx(result.dense_ms / result.latency_ms)
    assert result.latency_spread > 0 and result.batch == 64
    assert 1.0 < result.macs_speedup <= cap


class VggClock:
    """A fake clock for the runner: each forward of a whole VGG takes a fixed overhead plus
    1 us per parameter per image (a global hook, so the runner's deep copies are timed too)."""

    OVERHEAD_S = 0.05

    def __init__(self) -> None:
        self.now = 0.0  # seconds

    def hook(self, module: nn.Module, inputs, output) -> None:  # type: ignore[no-untyped-def]
        if type(module).__name__ == "VGG":
            params = sum(p.numel() for p in module.parameters())
            self.now += (self.OVERHEAD_S + params * 1e-6) * inputs[0].shape[0]

    def __call__(self) -> float:
        return self.now


def test_the_runner_lands_the_last_stage_and_a_replay_of_the_landed_schedule_matches() -> None:
    from support.tiny import tiny_data

    from pruning.latency import LatencySettings
    from pruning.runner import run_schedule
    from pruning.schedule import Schedule, Stage, Training

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return build_model(ModelSpec("vgg19", num_classes=4, width=0.125))

    data = tiny_data(300)
    cpu = torch.device("cpu")
    schedule = Schedule(2.0, (Stage(1.5, 1, 0.02), Stage(2.0, 1, 0.02)), training=Training(64))
    clock = VggClock()
    handle = nn.modules.module.register_module_forward_hook(clock.hook)
    try:
        results = run_schedule(
            fresh(),
            data,
            schedule,
            device=cpu,
            seed=1,
            latency=LatencySettings(batches=(1,), warmup=1, runs=3),
            timer=clock,
            latency_target=LatencyTarget(1.8),
        )
    finally:
        handle.remove()
    first, last = results
    assert first.landing is None and first.target_speedup == 1.5
    landing = last.landing
    assert landing is not None and landing.met
    assert last.target_speedup == landing.macs_speedup > 2.0  # more MACs than S for S latency
    assert last.speedup == pytest.approx(landing.macs_speedup, rel=0.01)
    # The stage's own timing after the prune agrees with the probe's: the same model.
    assert last.latency_speedup == pytest.approx(landing.latency_speedup)
    assert last.metrics()["landing_latency_speedup"] == landing.latency_speedup
    assert last.as_dict()["landing"]["probes"]  # metrics.json keeps the probes
    # The exported schedule holds the landed MACs speed-up; replaying it (no latency target, no
    # clock) prunes and trains to the same model.
    replay = run_schedule(
        fresh(), data, landed_schedule(schedule, landing.macs_speedup), device=cpu, seed=1
    )
    assert replay[-1].widths == last.widths and replay[-1].val_acc == last.val_acc


def test_a_latency_target_without_latency_is_refused_before_compute() -> None:
    from support.tiny import tiny_data

    from pruning.runner import run_schedule

    with pytest.raises(ValueError, match=r"target\.latency_speedup=2\.0 is invalid: .*latency"):
        run_schedule(
            nn.Identity(),
            tiny_data(50),
            log_equal(2.0, 1, 0),
            device=torch.device("cpu"),
            latency_target=LatencyTarget(2.0),
        )


CONFIG = {"name": "t", "data": {"name": "synthetic"}}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"target_speedup": 4.0, "target": {"latency_speedup": 2.0}},
            r"target_speedup=4\.0 is invalid: give one target",
        ),
        ({"target": {"latency_speedup": 1.0}}, r"target\.latency_speedup=1\.0 is invalid"),
        ({"target": {"latency_speedup": "fast"}}, r"target\.latency_speedup='fast' is invalid"),
        ({"target": {"latency_speedup": 2.0, "tolerance": 0.9}}, r"target\.tolerance=0\.9"),
        ({"target": {"latency": 2.0}}, "did you mean 'latency_speedup'"),
        (
            {"target": {"latency_speedup": 2.0}, "latency": None},
            r"target\.latency_speedup=2\.0 is invalid: a latency target needs measured latency",
        ),
    ],
)
def test_config_errors_name_the_target_field(extra: dict, message: str) -> None:
    from search.config import config_from_dict

    with pytest.raises(ValueError, match=message):
        config_from_dict(CONFIG | extra, "exp.yaml")


def test_config_takes_a_latency_target_and_writes_it_back() -> None:
    from search.config import config_from_dict, config_to_dict

    config = config_from_dict(CONFIG | {"target": {"latency_speedup": 2.5}})
    assert config.target == LatencyTarget(2.5, TOLERANCE, MAX_PROBES)
    assert config_from_dict(CONFIG).target is None
    # experiment.yaml holds one target, so it reads back as the same config
    written = config_to_dict(config)
    assert "target_speedup" not in written
    assert config_from_dict(written).target == config.target


def test_a_trial_splits_its_stages_from_the_first_guess_and_keeps_it(
    vgg: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trial's first MACs guess: a copy of the unpruned model landed on S (timed by the fake
    clock: a tiny model timed for real on a loaded machine measures noise, not its widths); the
    point's stages split from it; a resumed trial reads it from its state."""
    import dataclasses

    monkeypatch.setattr(
        "pruning.latency_target.measure", lambda model, *args, **kwargs: FakeTimer()(model)
    )

    from support.tiny import tiny_data

    from pruning.data import DataSpec
    from pruning.latency import LatencySettings
    from pruning.run_info import ModelInfo
    from pruning.runner import RunState
    from pruning.schedule import Training
    from search.config import SpaceConfig
    from trainables.point import reference_point
    from trainables.trial import TrialContext, _guessed_schedule

    point = dataclasses.replace(reference_point(SpaceConfig()), n_stages=2)
    context = TrialContext(
        target_speedup=8.84,
        training=Training(64),
        sparse_reg=5e-4,
        data=DataSpec(name="synthetic"),
        model=ModelInfo(),
        seed=0,
        tracking_uri="sqlite:///unused.db",
        experiment_id="0",
        parent_run_id="p",
        baseline_path=None,
        latency=LatencySettings(batches=(64,), warmup=1, runs=5),
        latency_target=LatencyTarget(1.3, tolerance=0.3, max_probes=4),
    )
    state = RunState()
    data = tiny_data(50)
    widths = layer_widths(vgg)
    schedule = _guessed_schedule(point, context, vgg, data, torch.device("cpu"), state)
    assert state.macs_guess is not None and state.macs_guess > 1.0
    assert schedule.target_speedup == state.macs_guess == schedule.stages[-1].speedup
    assert len(schedule.stages) == 2 and 1.0 < schedule.stages[0].speedup < state.macs_guess
    assert layer_widths(vgg) == widths  # the unpruned model itself is not pruned
    # resumed: the kept guess, no model touched (an Identity would fail any probe)
    again = _guessed_schedule(point, context, nn.Identity(), data, torch.device("cpu"), state)
    assert again == schedule
