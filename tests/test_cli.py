"""End to end through the command line, on generated data and width-reduced VGG19."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from support.experiment import tiny_experiment

from pruning import schedule as schedule_io
from pruning.data import DataSpec
from pruning.models import load_vgg19
from pruning.prune import count_macs_params
from pruning.run_info import RunInfo
from search.cli import main, parse_args
from trainables import tracking

DATA = {"name": "synthetic", "samples": 1500, "num_classes": 10, "val_size": 0.2}


def run_json(capsys, *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def replay_json(capsys, schedule: Path, checkpoint: Path, out: Path) -> dict:
    """`prunetune replay` of a schedule file on the CPU; its final metrics."""
    argv = ["replay", str(schedule), "--checkpoint", str(checkpoint), "--out", str(out)]
    return run_json(capsys, *argv, "--device", "cpu")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("baseline")
    config = out / "pretrain.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": DATA,
                "width": 0.25,
                "epochs": 4,
                "lr": 0.05,
                "lr_schedule": "cosine",
                "out": str(out),
                "device": "cpu",
            }
        )
    )
    assert main(["pretrain", str(config)]) == 0
    return out / "baseline.pt"


def test_prune_json_report(capsys) -> None:
    r = run_json(capsys, "prune", "--speedup", "4", "--width", "0.25", "--num-classes", "10")
    assert {"base_macs", "macs", "params", "speedup", "widths", "seconds"} <= set(r)
    assert r["speedup"] == pytest.approx(4.0, rel=0.01)
    assert r["base_macs"] / r["macs"] == pytest.approx(r["speedup"])
    assert r["widths"]["classifier"] == 10 and r["widths"]["block0.0"] <= 16
    assert set(r["latency_speedup"]) == {"1", "64"}  # measured beside the MACs, dense vs pruned
    assert all(r["latency_ms"][b]["median_ms"] > 0 for b in ("1", "64"))


def test_prune_with_data_shows_accuracy_before_and_after(capsys, baseline: Path) -> None:
    r = run_json(
        capsys,
        "prune",
        "--speedup",
        "8.84",
        "--checkpoint",
        str(baseline),
        "--data",
        "synthetic",
        "--device",
        "cpu",
    )
    assert r["val_acc_before"] > 0.3  # 10 classes: chance is 0.1
    assert r["val_acc_after_prune"] < r["val_acc_before"]  # one shot to 8.84x: the drop users see


def test_pretrain_writes_checkpoint_and_metrics(baseline: Path) -> None:
    metrics = json.loads((baseline.parent / "metrics.json").read_text())
    assert metrics["val_acc"] > 0.3  # 10 classes: chance is 0.1
    assert len(metrics["history"]) == 4 and metrics["best_epoch"] >= 1
    assert load_vgg19(baseline).classifier.out_features == 10


def test_replay_recovers_accuracy_and_writes_everything(capsys, tmp_path, baseline) -> None:
    schedule = schedule_io.log_equal(8.84, 2, 2, lr=0.02)
    run = RunInfo(data=DataSpec(**DATA), seed=3)
    path = schedule_io.save(tmp_path / "two_stage.yaml", schedule, run)
    out = tmp_path / "out"
    r = replay_json(capsys, path, baseline, out)
    last = r["stages"][-1]
    assert [s["stage"] for s in r["stages"]] == [1, 2] and last["completed"]
    assert last["val_acc"] > last["val_acc_after_prune"] + 0.05
    assert r["speedup"] == pytest.approx(8.84, rel=0.01) and r["epochs_used"] == 4
    written, run = schedule_io.load(out / "schedule.yaml")
    assert written == schedule and run.seed == 3 and run.checkpoint == str(baseline)
    pruned = load_vgg19(out / "pruned.pt")
    assert count_macs_params(pruned, torch.zeros(1, 3, 32, 32))[0] == last["macs"]
    assert json.loads((out / "metrics.json").read_text())["val_acc"] == last["val_acc"]
    # timed beside the MACs: the dense model once, each stage's pruned model after its prune
    assert {"latency_ms", "latency_ms_b64", "dense_latency_ms_b1"} <= set(last)
    assert last["latency_speedup_b64"] > 1 and r["latency_speedup"] == last["latency_speedup"]


def test_replay_on_the_same_seed_reproduces_accuracy(capsys, tmp_path, baseline) -> None:
    run = RunInfo(data=DataSpec(**DATA))
    path = schedule_io.save(tmp_path / "s.yaml", schedule_io.one_shot(4.0, 1), run)
    runs = [replay_json(capsys, path, baseline, tmp_path / f"o{i}") for i in range(2)]
    assert runs[0]["val_acc"] == runs[1]["val_acc"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["replay", "missing.yaml"], "missing.yaml does not exist"),
        (["prune", "--speedup", "0.5"], "speedup"),
        (["prune", "--speedup", "2", "--importance", "l7"], "group_norm"),
        (["prune", "--speedup", "2", "--data", "imagenet"], "cifar10"),
        (["prune", "--speedup", "2", "--checkpoint", "nope.pt"], "nope.pt does not exist"),
        (
            ["prune", "--speedup", "2", "--num-classes", "7", "--data", "synthetic"],
            "predicts 7 classes but the data has 10",
        ),
    ],
)
def test_user_mistakes_are_one_readable_error(capsys, argv, message) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "--debug" in err


def test_pretrain_config_typo_suggests_the_key(capsys, tmp_path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("epocs: 3\n")
    assert main(["pretrain", str(config)]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_console_script_help() -> None:
    script = Path(sys.executable).parent / "prunetune"
    if not script.exists():
        pytest.skip("prunetune is not installed in this environment (run via make test)")
    out = subprocess.run(
        [str(script), "replay", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "examples:" in out and "--checkpoint" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "c.yaml", "--resume", "target_speedup=3"],
        ["search", "c.yaml", "--dry-run", "target_speedup=3"],
        ["pareto", "c.yaml", "--json", "target_speedup=3"],
        ["export", "c.yaml", "--out", "d", "target_speedup=3", "--pick", "max-acc"],
        ["report", "c.yaml", "--pick", "knee", "target_speedup=3"],
        ["pretrain", "c.yaml", "--json", "target_speedup=3"],
    ],
)
def test_overrides_may_follow_options(argv) -> None:
    args = parse_args(argv)
    assert args.overrides == ["target_speedup=3"]
    assert str(getattr(args, "config", getattr(args, "experiment", None))) == "c.yaml"


def _tiny_config(tmp_path: Path, **changes) -> Path:
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment("cli", out=str(tmp_path / "out"), **changes)))
    return config


def test_dry_run_takes_an_override_after_the_option(capsys, tmp_path) -> None:
    assert main(["search", str(_tiny_config(tmp_path)), "--dry-run", "num_trials=3"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["config"]["num_trials"] == 3
    assert not (tmp_path / "out").exists()


def _readable_error(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Errno" not in err and "Traceback" not in err


def test_a_failed_export_leaves_no_out_folder(capsys, tmp_path) -> None:
    out = tmp_path / "new" / "export"
    _readable_error(capsys, ["export", "no-such-search", "--out", str(out)], "--mlflow-uri")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.ensure_experiment(uri, "empty")  # a store, but no search in it
    argv = ["export", "empty", "--mlflow-uri", uri, "--out", str(out)]
    _readable_error(capsys, argv, "no search run yet")
    assert not (tmp_path / "new").exists()


def test_out_on_a_file_is_one_readable_error(capsys, tmp_path) -> None:
    file = tmp_path / "file"
    file.write_text("not a folder")
    argv = ["export", "no-such-search", "--out", str(file / "export")]
    _readable_error(capsys, argv, "is a file, not a folder")
    config = _tiny_config(tmp_path)
    _readable_error(capsys, ["search", str(config), f"out={file}"], "is a file, not a folder")
    assert file.read_text() == "not a folder"


def test_a_missing_data_root_is_reported_before_anything_is_written(capsys, tmp_path) -> None:
    missing = tmp_path / "no-data"
    config = _tiny_config(tmp_path, data={"name": "imagefolder", "root": str(missing)})
    _readable_error(capsys, ["search", str(config)], f"{missing / 'train'} does not exist")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob("mlflow.db"))
