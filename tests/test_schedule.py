from __future__ import annotations

import json
import math

import pytest

from pruning import schedule as S
from pruning.data import DataSpec
from pruning.run_info import ModelInfo, RunInfo
from pruning.schedule import Schedule, SparseTraining, Stage, Training


def stages(*speedups: float) -> tuple[Stage, ...]:
    return tuple(Stage(s, 2) for s in speedups)


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda: Stage(1.0, 1), "stage.speedup"),
        (lambda: Stage(0.5, 1), "stage.speedup"),
        (lambda: Stage(float("nan"), 1), "stage.speedup"),
        (lambda: Stage(2.0, -1), "stage.epochs"),
        (lambda: Stage(2.0, 1.5), "stage.epochs"),
        (lambda: Stage(2.0, 1, lr=0.0), "stage.lr"),
        (lambda: Stage(2.0, 1, lr_schedule="linear"), "stage.lr_schedule"),
        (lambda: Schedule(2.0, ()), "stages"),
        (lambda: Schedule(4.0, stages(3.0, 2.0, 4.0)), r"stages\[1\].speedup"),
        (lambda: Schedule(4.0, stages(2.0, 2.0, 4.0)), r"stages\[1\].speedup"),
        (lambda: Schedule(4.0, stages(2.0, 3.0)), r"stages\[-1\].speedup"),
        (lambda: Schedule(1.0, stages(2.0)), "target_speedup"),
        (lambda: Schedule(2.0, stages(2.0), importance="l7"), "importance"),
        (lambda: Schedule(2.0, stages(2.0), ranking="tree"), "ranking"),
        (lambda: Schedule(2.0, stages(2.0), min_channels=0), "min_channels"),
        (lambda: Schedule(8.84, stages(8.84), min_channel_ratio=0.5), "min_channel_ratio"),
        (lambda: SparseTraining(epochs=0), "sparse.epochs"),
        (lambda: SparseTraining(epochs=1, reg=-1.0), "sparse.reg"),
        (lambda: Training(batch_size=0), "training.batch_size"),
        (lambda: Training(momentum=0.0, nesterov=True), "training.nesterov"),
    ],
)
def test_bad_values_name_the_field(build, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build()


def test_error_message_says_what_is_allowed() -> None:
    with pytest.raises(ValueError) as err:
        Schedule(2.0, stages(2.0), importance="l7")
    assert "group_norm" in str(err.value) and "'l7'" in str(err.value)


@pytest.mark.parametrize(
    "schedule",
    [
        S.one_shot(8.84, 10),
        S.log_equal(8.84, 3, 4, lr=0.02),
        S.geometric(8.84, 4, 2, decay=0.5, importance="lamp", ranking="local"),
        Schedule(
            3.0,
            stages(1.5, 3.0),
            sparse=SparseTraining(3, 1e-4),
            training=Training(batch_size=64, nesterov=True, label_smoothing=0.1),
        ),
    ],
)
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_file_round_trip_is_exact(tmp_path, schedule: Schedule, suffix: str) -> None:
    run = RunInfo(model=ModelInfo("vgg19", 0.25, 10), data=DataSpec(num_classes=4), seed=3)
    path = S.save(tmp_path / f"s{suffix}", schedule, run)
    loaded, loaded_run = S.load(path)
    assert loaded == schedule
    assert loaded_run == run
    assert S.save(tmp_path / f"again{suffix}", loaded, run).read_text() == path.read_text()


def test_builders_end_exactly_on_the_target() -> None:
    log = S.log_equal(8.84, 3, 5)
    assert [round(s.speedup, 4) for s in log.stages] == [2.0677, 4.2753, 8.84]
    # log-equal: every stage takes the same factor
    assert math.isclose(log.stages[1].speedup / log.stages[0].speedup, log.stages[0].speedup)
    geo = S.geometric(8.84, 3, 5, decay=0.5)
    factors = [geo.stages[0].speedup] + [
        b.speedup / a.speedup for a, b in zip(geo.stages, geo.stages[1:], strict=False)
    ]
    assert factors[0] > factors[1] > factors[2]  # big cut first
    assert geo.stages[-1].speedup == 8.84 and log.total_epochs == 15


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"format": "other", "version": 1}, "not a prunetune schedule"),
        ({"format": S.FORMAT, "version": 99, "schedule": {}}, "version 99"),
        ({"format": S.FORMAT, "version": 1, "schedule": {"target_speedup": 2.0}}, "stages"),
        (
            {
                "format": S.FORMAT,
                "version": 1,
                "schedule": {
                    "target_speedup": 2.0,
                    "stages": [{"speedup": 2.0, "epochs": 1}],
                    "importnce": "lamp",
                },
            },
            "did you mean 'importance'",
        ),
        ({"format": S.FORMAT, "version": 1, "extra": 1, "schedule": {}}, "extra"),
    ],
)
def test_bad_documents(tmp_path, doc: dict, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message):
        S.load(path)


def test_unsafe_yaml_is_rejected(tmp_path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        S.load(path)
