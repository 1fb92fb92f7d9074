"""The schedule file's `run` section: typed (RunInfo), every key checked, portable paths, the
checkpoint's sha256 and widths, version-1 files still read and replayed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from pruning import schedule as S
from pruning.data import DataSpec
from pruning.models import vgg19
from pruning.run_info import ModelInfo, RunInfo, file_sha256
from search.cli import main

DATA = {"name": "synthetic", "samples": 600, "num_classes": 4, "val_size": 0.25}

# A version-1 file exactly as prunetune wrote it before the typed run section (the replay
# command's run_section() plus threads); only the checkpoint path is filled in by the test.
V1_FILE = """\
format: prunetune.schedule
version: 1
schedule:
  target_speedup: 4.0
  stages:
  - speedup: 2.0
    epochs: 1
    lr: 0.02
    lr_schedule: cosine
  - speedup: 4.0
    epochs: 1
    lr: 0.02
    lr_schedule: cosine
  importance: group_norm
  ranking: global
  min_channels: 4
  min_channel_ratio: 0.1
  sparse: null
  training:
    batch_size: 128
    momentum: 0.9
    weight_decay: 0.0005
    nesterov: false
    label_smoothing: 0.0
run:
  model:
    arch: vgg19
    width: 0.125
    num_classes: 4
  data:
    name: synthetic
    root: null
    download: false
    val_size: 0.25
    split_seed: 0
    train_subset: null
    num_classes: 4
    samples: 600
    image_size: 32
  seed: 5
  checkpoint: {checkpoint}
  threads: 1
"""


def baseline(path: Path, width: float = 0.125) -> Path:
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(vgg19(4, width).state_dict(), path)
    return path


def replay(capsys, *argv: str) -> tuple[dict, str]:
    assert main(["replay", *argv, "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def run_section(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["run"]


def test_a_version_1_file_loads_and_replays(capsys, tmp_path) -> None:
    checkpoint = baseline(tmp_path / "old" / "baseline.pt")
    path = tmp_path / "v1.yaml"
    path.write_text(V1_FILE.format(checkpoint=checkpoint))
    schedule, run = S.load(path)
    assert schedule == S.log_equal(4.0, 2, 1, lr=0.02)
    assert run == RunInfo(
        model=ModelInfo("vgg19", 0.125, 4),
        data=DataSpec(**DATA),
        seed=5,
        checkpoint=str(checkpoint),  # version 1 paths are used as they were written
        threads=1,
    )
    r, err = replay(capsys, str(path), "--out", str(tmp_path / "out"))
    assert r["completed"] == 1.0 and r["seed"] == 5 and "warning" not in err
    written = yaml.safe_load((tmp_path / "out" / "schedule.yaml").read_text())
    assert written["version"] == S.VERSION == 2
    assert written["run"]["checkpoint_sha256"] == file_sha256(checkpoint)


def test_paths_inside_the_project_are_written_relative_to_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the project: where the command runs
    run = RunInfo(
        data=DataSpec(name="imagefolder", root="runs/study/data"),
        checkpoint=str(tmp_path / "runs" / "baseline" / "baseline.pt"),
    )
    path = S.save(tmp_path / "runs" / "replay" / "a" / "schedule.yaml", S.one_shot(2.0, 1), run)
    section = run_section(path)
    assert section["checkpoint"] == "../../baseline/baseline.pt"
    assert section["data"]["root"] == "../../study/data"
    assert str(tmp_path) not in path.read_text()
    # Read from anywhere, the paths point at the same files.
    monkeypatch.chdir(tmp_path.parent)
    _, loaded = S.load(path)
    assert loaded.checkpoint == str(tmp_path / "runs" / "baseline" / "baseline.pt")
    assert loaded.data.root == str(tmp_path / "runs" / "study" / "data")


def test_home_paths_keep_their_tilde(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    outside = tmp_path / "home" / "weights" / "b.pt"  # under home, outside the project folder
    run = RunInfo(data=DataSpec(name="cifar10", root="~/data/cifar10"), checkpoint=str(outside))
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    path = S.save(project / "out" / "s.yaml", S.one_shot(2.0, 1), run)
    section = run_section(path)
    assert section["data"]["root"] == "~/data/cifar10"  # as given, not expanded
    assert section["checkpoint"] == os.path.join("~", "weights", "b.pt")
    assert S.load(path)[1].data.root == "~/data/cifar10"


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d["run"].update(modle=d["run"].pop("model")),
            "unknown key 'modle'; did you mean 'model'",
        ),
        (
            lambda d: d["schedule"].update(stagez=d["schedule"].pop("stages")),
            "unknown key 'stagez'; did you mean 'stages'",
        ),
        (
            lambda d: d["run"]["model"].update(widht=1.0),
            "run.model: unknown key 'widht'; did you mean 'width'",
        ),
        (
            lambda d: d["run"]["data"].update(nmae="x"),
            "run.data: unknown key 'nmae'; did you mean 'name'",
        ),
        (lambda d: d["run"].update(seed=-1), "run.seed=-1"),
        (lambda d: d["run"]["model"].update(arch="resnet"), "run.model.arch='resnet'"),
        (lambda d: d["run"].update(checkpoint_sha256="abc"), "run.checkpoint_sha256"),
        (lambda d: d.update(scheduel={}), "unknown key 'scheduel'; did you mean 'schedule'"),
    ],
)
def test_every_section_is_checked(tmp_path, change, message: str) -> None:
    run = RunInfo(model=ModelInfo("vgg19", 0.25, 4), data=DataSpec(**DATA), seed=1)
    doc = S.dump_document(S.one_shot(2.0, 1), run)
    change(doc)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError) as err:
        S.load(path)
    assert message in str(err.value) and "stages=None" not in str(err.value)


def test_replay_warns_when_the_checkpoint_is_not_the_one_it_ran_with(capsys, tmp_path) -> None:
    checkpoint = baseline(tmp_path / "baseline.pt")
    run = RunInfo(
        model=ModelInfo("vgg19", 0.125, 4),
        data=DataSpec(**DATA),
        checkpoint=str(checkpoint),
        checkpoint_sha256="0" * 64,
    )
    path = S.save(tmp_path / "s.yaml", S.one_shot(2.0, 0), run)
    _, err = replay(capsys, str(path), "--out", str(tmp_path / "out"))
    lines = [ln for ln in err.splitlines() if "not the one this schedule ran with" in ln]
    assert len(lines) == 1 and str(checkpoint) in lines[0]
    _, written = S.load(tmp_path / "out" / "schedule.yaml")
    assert written.checkpoint_sha256 == file_sha256(checkpoint)


def test_the_checkpoint_is_the_source_of_truth_for_widths(capsys, tmp_path) -> None:
    checkpoint = baseline(tmp_path / "baseline.pt", width=0.125)
    run = RunInfo(model=ModelInfo("vgg19", 0.25, 4), data=DataSpec(**DATA), checkpoint=None)
    path = S.save(tmp_path / "s.yaml", S.one_shot(2.0, 0), run)
    _, err = replay(
        capsys, str(path), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")
    )
    assert "holds a VGG19 x0.125, 4 classes, but the schedule's run.model says VGG19 x0.25" in err
    _, written = S.load(tmp_path / "o" / "schedule.yaml")
    assert written.model == ModelInfo("vgg19", 0.125, 4)  # what actually ran


def test_random_init_replays_on_one_seed_prune_alike(capsys, tmp_path) -> None:
    run = RunInfo(model=ModelInfo("vgg19", 0.125, 4), data=DataSpec(**DATA), seed=7)
    path = S.save(tmp_path / "s.yaml", S.one_shot(4.0, 0, ranking="global"), run)
    widths = []
    for i in range(2):
        torch.manual_seed(100 + i)  # whatever the process did before must not matter
        r, _ = replay(capsys, str(path), "--out", str(tmp_path / f"o{i}"))
        widths.append(r["stages"][-1]["widths"])
    assert widths[0] == widths[1]
