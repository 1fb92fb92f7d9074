from __future__ import annotations

import itertools

import pytest
import yaml

from pruning.schedule import Training
from search.config import ExperimentConfig, SpaceConfig, config_from_dict, load_config
from search.space import known_points, param_space
from trainables.point import TrialPoint, reference_point, split_epochs, split_speedups

BASE = {"name": "t", "data": {"name": "synthetic"}}


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"num_trails": 3}, "did you mean 'num_trials'"),
        ({"space": {"max_stage": 2}}, "did you mean 'max_stages'"),
        ({"space": {"importances": ["l7"]}}, "space.importances"),
        ({"space": {"total_epochs": []}}, "space.total_epochs"),
        ({"space": {"lr_min": 0.1, "lr_max": 0.01}}, "space.lr_max"),
        ({"num_trials": 0}, "num_trials"),
        ({"strategy": "tpee"}, "strategy='tpee' is invalid: did you mean 'tpe'"),
        ({"sampler": "randon"}, "strategy='randon' is invalid: did you mean 'random'"),
        ({"strategy": "random", "n_startup_trials": 3}, "n_startup_trials=3 is invalid with"),
        ({"n_startup_trials": 0}, "n_startup_trials=0 is invalid"),
        ({"sampler": "tpe", "strategy": "random"}, "`sampler` is the old name of `strategy`"),
        ({"resources": {"gpu": -1}}, "resources.gpu"),
        ({"target_speedup": 0.9}, "target_speedup"),
        ({"space": {"min_channel_ratios": [0.0, 0.5]}}, "reach at most"),
        ({"space": {"lr_schedules": ["cosine"]}}, "reference_trial needs lr_schedule='step'"),
        ({"space": {"lr_min": 0.02}}, "space.lr_min/space.lr_max.*reference_trial needs lr=0.01"),
        ({"data": {"name": "imagenet"}}, "data.name"),
        ({"name": "a b"}, "name"),
        ({"objectives": ["val_acc", "latncy"]}, "objectives.*did you mean 'latency'"),
        ({"objectives": ["val_acc", "latency"], "latency": None}, "needs the latency measured"),
        ({"objectives": ["val_acc", "latency"], "latency": {"enabled": False}}, "needs the lat"),
        ({"objectives": ["cost", "latency"]}, "it must include val_acc"),
        ({"objectives": ["val_acc", "cost", "cost"]}, "each objective once"),
        ({"latency": {"batches": [1, 0]}}, r"latency.batches\[\]=0"),
        ({"latency": {"runs": 1}}, "latency.runs=1"),
        ({"latency": {"warmups": 3}}, "did you mean 'warmup'"),
    ],
)
def test_config_errors_name_the_key(extra: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_dict(BASE | extra, "exp.yaml")


def test_defaults_resolve_to_absolute_paths(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(BASE | {"data": {"name": "imagefolder", "root": "imgs"}}))
    config = load_config(path, ["num_trials=3", "space.max_stages=2"])
    assert config.num_trials == 3 and config.space.max_stages == 2
    assert config.out == str(tmp_path / "runs" / "t")
    assert config.data.root == str(tmp_path / "imgs")
    assert config.tracking_uri == f"sqlite:///{tmp_path / 'runs' / 't' / 'mlflow.db'}"
    assert config.storage_path == str(tmp_path / "runs" / "t" / "ray")


def test_shipped_configs_are_valid() -> None:
    for name in ("experiments/demo_search.yaml", "experiments/vgg19_cifar100.yaml"):
        config = load_config(name)
        assert known_points(config)[0]["n_stages"] == 1


@pytest.mark.parametrize("target, shares", [(8.84, [1.0]), (8.84, [0.2, 1.0, 0.5]), (2.0, [1, 1])])
def test_speedup_split_is_increasing_and_exact(target, shares) -> None:
    s = split_speedups(target, shares)
    assert s[-1] == target and all(b > a for a, b in itertools.pairwise(s)) and s[0] > 1


@pytest.mark.parametrize("total, shares", [(6, [1.0, 1.0, 1.0]), (5, [0.2, 1.0]), (1, [1, 1, 1])])
def test_epoch_split_sums_to_the_budget(total, shares) -> None:
    epochs = split_epochs(total, shares)
    assert sum(epochs) == total and all(e >= 0 for e in epochs)


def test_every_sampled_point_is_a_valid_schedule_on_target() -> None:
    space = SpaceConfig(max_stages=3, total_epochs=(2, 4, 7))
    params = param_space(space)
    for _ in range(50):
        config = {k: v.sample() for k, v in params.items()}
        schedule = TrialPoint.from_config(config).schedule(8.84, Training(), 5e-4)
        assert schedule.stages[-1].speedup == 8.84
        assert schedule.total_epochs == config["total_epochs"]
        assert len(schedule.stages) == config["n_stages"]


def test_reference_point_is_torch_pruning_recipe() -> None:
    point = reference_point(SpaceConfig(max_stages=3, total_epochs=(2, 6)))
    schedule = point.schedule(8.84, Training(), 5e-4)
    assert len(schedule.stages) == 1 and schedule.stages[0].epochs == 6
    assert schedule.importance == "group_norm" and schedule.min_channel_ratio == 0.0
    assert schedule.stages[0].lr_schedule == "step" and schedule.stages[0].lr == 0.01


def test_injected_points_are_checked_against_the_space() -> None:
    with pytest.raises(ValueError, match="points\\[0\\].min_channel_ratio=0.3 is invalid"):
        ExperimentConfig(name="t", points=({"min_channel_ratio": 0.3},))
    with pytest.raises(ValueError, match="unknown key 'lr'; lr is per stage: give lr_0 .. lr_2"):
        ExperimentConfig(name="t", points=({"lr": 0.1},))
    ok = known_points(ExperimentConfig(name="t", points=({"n_stages": 2},)))
    assert [p["n_stages"] for p in ok] == [1, 2]


def test_latency_section_and_objectives() -> None:
    from pruning.latency import BATCHES, LatencySettings

    default = config_from_dict(BASE)
    assert default.latency == LatencySettings() and default.latency.batches == BATCHES
    assert [o.metric for o in default.ranked_by] == ["val_acc", "cost"]
    assert not config_from_dict(BASE | {"latency": None}).latency.enabled
    three = config_from_dict(
        BASE | {"objectives": ["val_acc", "cost", "latency"], "latency": {"batches": [8, 1]}}
    )
    assert three.latency.primary == 8
    assert [(o.metric, o.mode) for o in three.ranked_by] == [
        ("val_acc", "max"),
        ("cost", "min"),
        ("latency_ms", "min"),
    ]
