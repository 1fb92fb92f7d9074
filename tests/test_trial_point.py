"""The trial point and its table of dimensions; the experiment checks that need it (points,
the floor against the target, MLflow settings), the same at --dry-run and in a real search."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pruning.schedule import Training
from search.cli import main
from search.config import ExperimentConfig, MlflowConfig, SpaceConfig, config_from_dict
from search.space import describe_space, known_points, param_space
from trainables.point import (
    DIMENSIONS,
    TrialPoint,
    flat_params,
    keyed_dimensions,
    point_from_user,
    reference_point,
)

SPACE = SpaceConfig(max_stages=2, total_epochs=(2, 4))
# VGG19 at 1/8 width: with a floor of half its channels (4 at least) it reaches 3.82x at most.
TINY = {"name": "t", "width": 0.125, "data": {"name": "synthetic", "num_classes": 4}}


def test_the_table_is_the_points_fields_and_the_tune_space() -> None:
    assert [d.name for d in DIMENSIONS] == [f.name for f in dataclasses.fields(TrialPoint)]
    keys = [k for k, _ in keyed_dimensions(2)]
    assert list(param_space(SPACE)) == keys
    assert keys[-6:] == ["split_0", "epochs_0", "lr_0", "split_1", "epochs_1", "lr_1"]
    assert list(describe_space(SPACE))[-3:] == ["split_0..1", "epochs_0..1", "lr_0..1"]
    assert describe_space(SPACE)["n_stages"].startswith("integer in [1, 2]")


def test_a_point_round_trips_through_tunes_flat_config() -> None:
    params = param_space(SPACE)
    for seed in range(20):
        config = {k: v.sample(random_state=seed) for k, v in params.items()}
        point = TrialPoint.from_config(config)
        assert point.to_config() == config and list(point.to_config()) == list(config)
        assert len(point.split) == len(point.lr) == 2


def test_reference_point_is_the_recipe_and_logs_its_coordinates() -> None:
    point = reference_point(SPACE)
    assert (point.n_stages, point.total_epochs, point.lr_schedule) == (1, 4, "step")
    assert point.lr == (0.01, 0.01) and point.min_channel_ratio == 0.0
    schedule = point.schedule(8.84, Training(), 5e-4)
    assert schedule.min_channels == 1  # no floor at all, as Torch-Pruning
    params = flat_params(schedule, point)
    assert params["n_stages"] == 1 and params["stage_1.epochs"] == 4
    assert params["point.lr_1"] == 0.01 and params["point.importance"] == "group_norm"


@pytest.mark.parametrize(
    "point, message",
    [
        ({"n_stages": "two"}, "points\\[0\\].n_stages='two' is invalid: it must be an integer"),
        ({"n_stages": 2.0}, "n_stages=2.0 is invalid"),
        ({"n_stages": True}, "n_stages=True is invalid"),
        ({"n_stages": 3}, "n_stages=3 is invalid: it must be an integer in \\[1, 2\\]"),
        ({"total_epochs": 3}, "total_epochs=3 is invalid: it must be one of \\[2, 4\\]"),
        ({"importance": "lmap"}, "did you mean 'lamp'"),
        ({"split_0": 5.0}, "split_0=5.0 is invalid: it must be a number in \\[0.2, 1.0\\]"),
        ({"lr_1": "0.01"}, "lr_1='0.01' is invalid"),
        ({"lr_1": float("nan")}, "lr_1=nan is invalid"),
        ({"splt_0": 1.0}, "unknown key 'splt_0'; did you mean 'split_0'"),
        ({"split_2": 1.0}, "unknown key 'split_2'"),  # max_stages is 2
        ("n_stages=2", "points\\[0\\]='n_stages=2' is invalid: it must be a mapping"),
    ],
)
def test_points_are_checked_fully(point: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        point_from_user(point, reference_point(SPACE), SPACE, "points[0]")


def test_a_point_that_leaves_out_a_value_the_space_lacks_says_so() -> None:
    space = SpaceConfig(max_stages=2, lr_min=0.02, lr_max=0.05)
    with pytest.raises(ValueError, match="lr_0=0.01 is invalid.*reference recipe's value"):
        ExperimentConfig(name="t", space=space, reference_trial=False, points=({"n_stages": 2},))
    given = {"n_stages": 2, "lr_0": 0.03, "lr_1": 0.02}
    config = ExperimentConfig(name="t", space=space, reference_trial=False, points=(given,))
    assert known_points(config)[0]["lr_0"] == 0.03


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"mlflow": {"tracking_uri": "htp://127.0.0.1:5000"}}, "did you mean 'http'"),
        ({"mlflow": {"tracking_uri": "runs/mlflow.db"}}, "mlflow.tracking_uri='runs/mlflow.db'"),
        ({"mlflow": {"tracking_uri": "sqlite://"}}, "sqlite:///path/to/mlflow.db"),
        ({"mlflow": {"tracking_uri": "http://"}}, "needs a host"),
        ({"mlflow": {"experiment": " "}}, "mlflow.experiment=' ' is invalid"),
        ({"mlflow": {"log_models": ["pytorch", "onxx"]}}, r"log_models\[\]='onxx'.*'onnx'\?"),
        ({"mlflow": {"log_models": "yes"}}, "log_models='yes' is invalid: true, false or a list"),
        ({"points": {"n_stages": 2}}, "points=.* is invalid: a list of mappings"),
        ({"reference_trial": "yes"}, "reference_trial='yes' is invalid"),
    ],
)
def test_mlflow_and_points_settings_are_checked(extra: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_dict(TINY | extra, "exp.yaml")


def test_good_tracking_uris_pass() -> None:
    for uri in ("sqlite:///m.db", "http://host:5000", "postgresql+psycopg2://u@h/db", None):
        assert MlflowConfig(tracking_uri=uri).tracking_uri == uri


def test_a_target_the_floor_cannot_reach_is_refused_with_the_most_it_can_reach() -> None:
    space = {"space": {"min_channel_ratios": [0.0, 0.5]}}
    with pytest.raises(ValueError, match="target_speedup=3.9 is invalid.*reach at most 3.8"):
        config_from_dict(TINY | space | {"target_speedup": 3.9})
    assert config_from_dict(TINY | space | {"target_speedup": 3.5}).target_speedup == 3.5
    # The same floor on the full-width model reaches further: the model decides, not 1/ratio^2.
    wide = config_from_dict(TINY | space | {"target_speedup": 3.9, "width": 1.0})
    assert wide.model.width == 1.0


def _cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    return capsys.readouterr().err.splitlines()[0]


@pytest.mark.parametrize(
    "bad",
    [
        {"points": [{"n_stages": "two"}]},
        {"target_speedup": 3.9, "space": {"min_channel_ratios": [0.0, 0.5]}},
    ],
)
def test_dry_run_and_search_give_the_same_error_before_any_compute(
    bad: dict, tmp_path, capsys
) -> None:
    path = tmp_path / "exp.yaml"
    out = tmp_path / "run"
    path.write_text(yaml.safe_dump(TINY | bad | {"out": str(out)}))
    dry = _cli_error(["search", str(path), "--dry-run"], capsys)
    real = _cli_error(["search", str(path)], capsys)
    assert dry == real and str(path) in real
    assert not out.exists()  # refused before the out folder, the baseline or Ray
