"""The plots: what they flag and compute, and that each renders a real PNG."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from support.trial_rows import row

from pruning import schedule as schedule_io
from pruning.models import vgg19
from pruning.prune import channel_floor, layer_widths
from pruning.run_info import ModelInfo, RunInfo
from pruning.schedule import Schedule, Stage
from search.objectives import OBJECTIVES
from search.report.data import layer_data
from search.report.plots import (
    StagePoint,
    layer_status,
    plot_front,
    plot_schedule_accuracy,
    plot_speedups,
    plot_widths,
    sawtooth,
    short_name,
    stage_points,
)

PNG = b"\x89PNG\r\n\x1a\n"
FULL = {n: c for n, c in layer_widths(vgg19(100)).items() if n != "classifier"}


def assert_png(path: Path, min_bytes: int = 15_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG
    assert len(data) > min_bytes  # an empty figure is a few kB; these have bars, text, legend


@pytest.mark.parametrize(
    "layer, short",
    [
        ("block0.0", "conv1_1"),
        ("block0.3", "conv1_2"),
        ("block2.9", "conv3_4"),
        ("block4.9", "conv5_4"),
        ("classifier", "fc"),
        ("features.7", "features.7"),
    ],
)
def test_short_name(layer: str, short: str) -> None:
    assert short_name(layer) == short


@pytest.mark.parametrize(
    "kept, original, floor, status",
    [
        (2, 64, 1, "collapsed"),  # no floor: global ranking cut it to 3%
        (6, 64, 4, "collapsed"),  # above the floor but under 10% of the channels
        (7, 64, 7, "at floor"),  # the floor held it up
        (8, 8, 8, "ok"),  # a layer whose floor is its whole width is simply kept
        (30, 128, 13, "ok"),
    ],
)
def test_layer_status(kept: int, original: int, floor: int, status: str) -> None:
    assert layer_status(kept, original, floor) == status


def test_widths_plot_flags_the_collapsed_first_convolutions(tmp_path: Path) -> None:
    kept = dict(FULL)
    kept |= {"block0.0": 2, "block0.3": 3, "block1.0": 30, "block4.9": 200}
    floors = {n: channel_floor(c, 1, 0.0) for n, c in FULL.items()}
    collapsed = plot_widths(kept, FULL, floors, tmp_path / "w.png", "no floor")
    assert collapsed == ["block0.0", "block0.3"]
    assert_png(tmp_path / "w.png")


def test_widths_plot_with_a_floor_has_nothing_collapsed(tmp_path: Path) -> None:
    floors = {n: channel_floor(c, 4, 0.1) for n, c in FULL.items()}
    kept = {n: max(floors[n], c // 4) for n, c in FULL.items()} | {"block0.0": floors["block0.0"]}
    assert plot_widths(kept, FULL, floors, tmp_path / "w.png", "floor") == []
    assert layer_status(kept["block0.0"], 64, floors["block0.0"]) == "at floor"
    assert_png(tmp_path / "w.png")


def test_layer_data_reads_original_widths_and_floors(tmp_path: Path) -> None:
    schedule = Schedule(8.84, (Stage(8.84, 2, 0.01),), min_channels=4, min_channel_ratio=0.2)
    run = RunInfo(model=ModelInfo("vgg19", 0.25, 10))
    schedule_io.save(tmp_path / "schedule.yaml", schedule, run)
    small = layer_widths(vgg19(10, 0.25))
    kept = {n: max(1, c // 3) for n, c in small.items()} | {"classifier": 10}
    (tmp_path / "widths.json").write_text(json.dumps(kept))
    layers = layer_data(tmp_path / "schedule.yaml", tmp_path / "widths.json")
    got_kept, original, floors = layers.kept, layers.original, layers.floors
    assert "classifier" not in got_kept  # the output layer is never pruned: not drawn
    assert len(got_kept) == 16 and original["block0.0"] == 16 and original["block4.9"] == 128
    assert floors["block0.0"] == 4  # max(4, ceil(0.2 * 16))
    assert floors["block4.9"] == 26  # ceil(0.2 * 128)
    assert got_kept == {n: kept[n] for n in got_kept}


HISTORY = {  # metric -> stage -> value, as MLflow's history gives it; 5 sparse epochs first
    "val_acc": {1: 0.55, 2: 0.66, 3: 0.63},
    "val_acc_after_prune": {1: 0.55, 2: 0.40, 3: 0.05},
    "epochs": {1: 0.0, 2: 10.0, 3: 15.0},
    "epochs_used": {1: 5.0, 2: 15.0, 3: 30.0},
    "speedup": {1: 2.0, 2: 3.5, 3: 8.84},
}


def test_stage_points_place_each_prune_and_fine_tune() -> None:
    points = stage_points(HISTORY)
    assert [(p.epochs_before, p.epochs_after) for p in points] == [(5, 5), (5, 15), (15, 30)]
    assert [p.speedup for p in points] == [2.0, 3.5, 8.84]
    assert points[2] == StagePoint(3, 8.84, 15.0, 30.0, 0.05, 0.63)


def test_stage_points_skip_a_stage_with_missing_metrics() -> None:
    partial = {k: dict(v) for k, v in HISTORY.items()}
    del partial["val_acc"][3]  # the run died between logging two metrics of stage 3
    assert [p.stage for p in stage_points(partial)] == [1, 2]
    assert stage_points({}) == []


def test_sawtooth_starts_at_the_baseline() -> None:
    points = stage_points(HISTORY)
    xs, ys = sawtooth(points, 0.735)
    assert xs == [0.0, 5, 5, 5, 15, 15, 30]
    assert ys == pytest.approx([73.5, 55, 55, 40, 66, 5, 63])
    xs, ys = sawtooth(points, None)
    assert xs[0] == 5 and ys[0] == pytest.approx(55)


def test_schedule_accuracy_single_and_overlay(tmp_path: Path) -> None:
    points = stage_points(HISTORY)
    one = plot_schedule_accuracy({"t0001": points}, tmp_path / "one.png", "one", 0.735)
    assert_png(one)
    other = [StagePoint(1, 8.84, 0, 40, 0.01, 0.62)]
    overlay = plot_schedule_accuracy(
        {"t0001": points, "t0002 (reference)": other}, tmp_path / "all.png", "front", None
    )
    assert_png(overlay)


def test_front_plot_marks_reference_and_pick(tmp_path: Path) -> None:
    rows = [
        row(0, 0.62, 40, reference=True),
        row(1, 0.66, 30),
        row(2, 0.70, 60),
        row(3, 0.55, 10),
        row(4, 0.30, 10, done=False),  # stopped early: never drawn
    ]
    front = [rows[3], rows[1], rows[2]]
    plain = plot_front(rows, front, tmp_path / "plain.png")
    marked = plot_front(rows, front, tmp_path / "marked.png", rows[1], "knee")
    assert_png(plain)
    assert_png(marked)
    assert marked.read_bytes() != plain.read_bytes()


def test_front_plot_of_a_search_with_nothing_completed(tmp_path: Path) -> None:
    path = plot_front([row(0, 0.1, 1, done=False)], [], tmp_path / "empty.png")
    assert_png(path, min_bytes=5_000)


def test_front_on_latency_and_the_speedups_plot(tmp_path: Path) -> None:
    measured = [(0.62, 40, 3.0, 2.1), (0.66, 30, 2.0, 3.2), (0.70, 60, 4.0, 1.6)]
    rows = [
        dataclasses.replace(row(i, acc, cost), latency_ms=ms, latency_speedup=x)
        for i, (acc, cost, ms, x) in enumerate(measured)
    ]
    rows.append(row(3, 0.55, 10))  # a trial that measured no latency: off the latency axes
    latency = OBJECTIVES["latency"]
    on_latency = plot_front(rows, rows[1:3], tmp_path / "latency.png", x=latency)
    on_cost = plot_front(rows, rows[1:3], tmp_path / "cost.png", staircase=False)
    assert_png(on_latency)
    assert on_latency.read_bytes() != on_cost.read_bytes()
    speedups = plot_speedups(rows, rows[1:3], tmp_path / "speedups.png", rows[1], "knee")
    assert speedups is not None
    assert_png(speedups)
    # a search that measured no latency gets no such plot (no made-up numbers)
    assert plot_speedups(rows[3:], rows[3:], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
