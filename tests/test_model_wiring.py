"""The model registry everywhere a model appears: experiment and pretrain files (the old top-level
`width` still read), the schedule file's run.model with kwargs, `prune --arch`, and the widths plot
of a 50+ layer model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pruning import schedule as schedule_io
from pruning.data import DataSpec
from pruning.models import ModelSpec, build_model, example_input, load_pruned
from pruning.pretrain import load_pretrain_config
from pruning.prune import prune_to_speedup
from pruning.run_info import ModelInfo, RunInfo, run_from_dict
from pruning.schedule import Schedule, Stage
from search.cli import main
from search.config import config_from_dict, config_to_dict, load_config
from search.report.data import layer_data
from search.report.plots import plot_widths

TINY = {"name": "t", "data": {"name": "synthetic", "num_classes": 4}}
EXPERIMENTS = Path(__file__).parent.parent / "experiments"


def test_old_top_level_width_reads_as_vgg19_model_width() -> None:
    config = config_from_dict(TINY | {"width": 0.125})
    assert config.model == ModelInfo("vgg19", 0.125)
    assert config_to_dict(config)["model"] == {"arch": "vgg19", "width": 0.125, "num_classes": None}
    # the same width given both ways is fine; two different widths are one readable error
    assert config_from_dict(TINY | {"width": 0.125, "model": {"width": 0.125}}).model.width == 0.125
    with pytest.raises(ValueError, match=r"width=0.5 is invalid: it is the old spelling of model"):
        config_from_dict(TINY | {"width": 0.5, "model": {"width": 0.125}})


def test_pretrain_config_old_width_and_model_section(tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("width: 0.25\nepochs: 1\n")
    assert load_pretrain_config(old).model == ModelInfo("vgg19", 0.25)
    assert load_pretrain_config(old, ["model.arch=resnet56"]).model == ModelInfo("resnet56", 0.25)


def test_committed_experiment_files_use_the_model_section() -> None:
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if "name" in raw or "epochs" in raw:  # experiment and pretrain configs
            assert "width" not in raw and "model" in raw, path.name
    config = load_config(EXPERIMENTS / "resnet56_cifar10.yaml")
    assert config.model.arch == "resnet56" and config.model_spec.num_classes == 10


def test_unknown_arch_suggests_the_closest() -> None:
    with pytest.raises(
        ValueError, match=r"model.arch='resnet65' is invalid: did you mean 'resnet56'"
    ):
        config_from_dict(TINY | {"model": {"arch": "resnet65"}})
    with pytest.raises(ValueError, match=r"run.model.arch='mobilenetv2'.*'mobilenet_v2'"):
        run_from_dict({"model": {"arch": "mobilenetv2"}})


def test_prune_unknown_arch_is_one_readable_error(capsys) -> None:
    assert main(["prune", "--arch", "vgg91", "--speedup", "2"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'vgg19'" in err and "Traceback" not in err


def test_prune_arch_resnet56_lands_and_saves_a_reloadable_model(capsys, tmp_path: Path) -> None:
    out = tmp_path / "pruned.pt"
    argv = ["prune", "--arch", "resnet56", "--width", "0.25", "--num-classes", "10"]
    assert main([*argv, "--speedup", "1.8", "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["model"]["arch"] == "resnet56" and abs(r["speedup"] / 1.8 - 1) <= 0.01
    assert "layer3.8.conv2" in r["widths"]  # the model's own layer names
    # residual adds tie each stage's second convs: pruned to one width
    stage = {r["widths"][f"layer2.{i}.conv2"] for i in range(9)}
    assert len(stage) == 1 and stage.pop() < r["widths_before"]["layer2.0.conv2"]
    model = load_pruned(out)
    assert model.prunetune_spec.arch == "resnet56"
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_schedule_with_model_kwargs_round_trips(tmp_path: Path) -> None:
    run = RunInfo(
        model=ModelInfo("torchvision:resnet18", 1.0, 10, {"zero_init_residual": True}),
        data=DataSpec(name="synthetic", num_classes=10, image_size=32),
    )
    schedule = Schedule(2.0, (Stage(2.0, 1, 0.01),))
    schedule_io.save(tmp_path / "s.yaml", schedule, run)
    doc = yaml.safe_load((tmp_path / "s.yaml").read_text())
    assert doc["version"] == 2 and doc["run"]["model"]["kwargs"] == {"zero_init_residual": True}
    loaded_schedule, loaded_run = schedule_io.load(tmp_path / "s.yaml")
    assert loaded_schedule == schedule and loaded_run.model == run.model
    # a built-in model writes no kwargs: the file reads exactly as version 2 always did
    schedule_io.save(tmp_path / "v.yaml", schedule, RunInfo(model=ModelInfo("vgg19", 0.25, 10)))
    assert "kwargs" not in yaml.safe_load((tmp_path / "v.yaml").read_text())["run"]["model"]
    with pytest.raises(ValueError, match=r"run.model.kwargs=.*vgg19 takes no kwargs"):
        run_from_dict({"model": {"arch": "vgg19", "kwargs": {"depth": 3}}})


def test_widths_plot_of_resnet50_renders_with_its_groups(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ModelSpec("torchvision:resnet50", num_classes=10, input_size=32)
    model = build_model(spec)
    report = prune_to_speedup(model, example_input(spec), 2.0)
    schedule = Schedule(2.0, (Stage(2.0, 1, 0.01),), min_channels=4, min_channel_ratio=0.1)
    run = RunInfo(model=ModelInfo(spec.arch, 1.0, 10), data=DataSpec(image_size=32))
    schedule_io.save(tmp_path / "schedule.yaml", schedule, run)
    (tmp_path / "widths.json").write_text(json.dumps(report.widths_after))
    layers = layer_data(tmp_path / "schedule.yaml", tmp_path / "widths.json")
    assert len(layers.kept) >= 50 and "layer4.2.conv3" in layers.kept and "fc" not in layers.kept
    # one group per residual stage: its last convs and the downsample pruned together
    assert [len(g) for g in layers.groups] == [4, 5, 7, 4]
    assert "layer1.0.downsample.0" in layers.groups[0]
    kept = dict(layers.kept) | {"conv1": 2}  # a collapsed stem is still flagged
    path = tmp_path / "widths.png"
    assert plot_widths(kept, layers.original, layers.floors, path, "t", layers.groups) == ["conv1"]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 60_000


def test_readme_models_table_is_the_registry() -> None:
    from pruning.models import MODELS

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("<!-- models table")[1].split("<!-- end models table")[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    expected = [
        f"| `{n}` | {MODELS[n].description} | {MODELS[n].input_size[0]}x{MODELS[n].input_size[1]} |"
        for n in MODELS.names()
    ]
    assert rows == expected
