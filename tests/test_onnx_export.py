"""ONNX export (issue 14): real torch.onnx exports of pruned registry models, verified in real
onnxruntime on generated data; the dynamic batch, the metadata, a check that must fail, the
fallback without data, and the message when the optional extra is missing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pruning import onnx_export as ox
from pruning import schedule as schedule_io
from pruning.data import DataSpec, load_dataset
from pruning.models import ModelSpec, build_model, example_input, load_pruned, save_pruned
from pruning.prune import prune_to_speedup
from pruning.run_info import ModelInfo, RunInfo
from pruning.schedule import Schedule, Stage
from search.cli import main
from search.export import ONNX_FILE, export_onnx

# 256 val images (a count), the check's number, of 4 generated classes at 32x32
DATA = DataSpec(name="synthetic", num_classes=4, samples=600, val_size=256)
SPEEDUP = 2.0


def _pruned(folder: Path, arch: str, width: float) -> tuple[Path, RunInfo]:
    """A registry model pruned to SPEEDUP x fewer MACs, saved as export writes it."""
    torch.manual_seed(0)
    spec = ModelSpec(arch, num_classes=4, width=width)
    model = build_model(spec)
    prune_to_speedup(model, example_input(spec), SPEEDUP)
    folder.mkdir(parents=True, exist_ok=True)
    path = save_pruned(folder / "pruned.pt", model, spec)
    return path, RunInfo(model=ModelInfo(arch, width, 4), data=DATA, threads=1)


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _assert_runs_at_any_batch(path: Path, model: torch.nn.Module) -> None:
    """The batch dimension is symbolic, and batches 1 and 5 give torch's logits."""
    graph_input = onnx.load(str(path)).graph.input[0]
    assert graph_input.name == ox.INPUT_NAME
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # a name, not a fixed size
    session = ox.session(path, threads=1)
    gen = torch.Generator().manual_seed(1)
    for batch in (1, 5):
        x = torch.randn((batch, 3, 32, 32), generator=gen)
        (got,) = session.run([ox.OUTPUT_NAME], {ox.INPUT_NAME: x.numpy()})
        with torch.inference_mode():
            expected = model.eval()(x).numpy()
        assert got.shape == (batch, 4)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_export_of_a_pruned_vgg19_from_its_exported_folder(tmp_path) -> None:
    """`prunetune export --onnx`'s step: model.onnx beside schedule.yaml and pruned.pt, checked
    on the 256 val images of the data the schedule file's run section names."""
    pruned, run = _pruned(tmp_path, "vgg19", 0.125)
    schedule_io.save(tmp_path / "schedule.yaml", Schedule(SPEEDUP, (Stage(SPEEDUP, 0),)), run)
    (tmp_path / "report.md").write_text("# Exported pruning schedule (knee)\n")

    result = export_onnx(tmp_path, macs_speedup=SPEEDUP)

    path = tmp_path / ONNX_FILE
    assert result.path == path and path.is_file()
    v = result.verification
    assert v.ok and v.images == 256 and v.top1_mismatches == 0
    assert v.max_abs_diff <= v.tolerance and "256 val images of synthetic" in v.source
    assert result.note == "" and result.opset >= 18
    data = load_dataset(DATA)
    props = _props(path)
    assert json.loads(props["mean"]) == pytest.approx(data.mean)
    assert json.loads(props["std"]) == pytest.approx(data.std)
    assert props["image_size"] == "32" and props["num_classes"] == "4"
    assert json.loads(props["classes"]) == data.classes
    assert props["prunetune.arch"] == "vgg19" and float(props["prunetune.macs_speedup"]) == 2.0
    assert json.loads(props["prunetune.model_spec"])["width"] == 0.125
    # timed in both runtimes on the run's one thread, at the default batches (1, 64)
    assert sorted(result.latency) == [1, 64]
    for pair in result.latency.values():
        assert pair.torch.threads == pair.ort.threads == 1
        assert pair.torch.median_ms > 0 and pair.ort.median_ms > 0
    report = (tmp_path / "report.md").read_text()
    assert "- ONNX: `model.onnx` (opset" in report and "onnxruntime" in report
    assert "top-1 equal on 256/256" in report
    _assert_runs_at_any_batch(path, load_pruned(pruned))


def test_export_of_a_pruned_resnet56(tmp_path) -> None:
    """A residual model: the adds tie channel groups, the file still computes the same logits."""
    pruned, run = _pruned(tmp_path, "resnet56", 0.25)
    result = ox.export_pruned(pruned, tmp_path / "r.onnx", run, batches=(1,), warmup=1, runs=2)
    assert result.verification.ok and result.verification.images == 256
    assert _props(result.path)["prunetune.arch"] == "resnet56"
    _assert_runs_at_any_batch(result.path, load_pruned(pruned))


def test_a_file_that_does_not_match_its_model_fails_and_is_kept_aside(tmp_path) -> None:
    """Verified against another model (same shapes, other weights): an error, exit-worthy, and
    the file is kept only under its failed name."""
    spec = ModelSpec("vgg19", num_classes=4, width=0.125)
    torch.manual_seed(0)
    exported = build_model(spec)
    torch.manual_seed(1)
    other = build_model(spec)
    inputs = ox.check_inputs(RunInfo(data=DATA), spec, count=32)
    path = tmp_path / "model.onnx"
    with pytest.raises(ox.OnnxVerificationError, match="does not match the torch model") as err:
        ox.save_verified(path, ox.onnx_bytes(exported), other, inputs)
    assert "max |logit difference|" in str(err.value) and "model.failed.onnx" in str(err.value)
    assert not path.exists() and ox.failed_path(path).is_file()


def test_without_readable_data_the_check_uses_random_inputs_and_says_so(tmp_path) -> None:
    spec = ModelSpec("vgg19", num_classes=4, width=0.125)
    missing = RunInfo(data=DataSpec(name="cifar10", root=str(tmp_path / "nothing-here")))
    inputs = ox.check_inputs(missing, spec)
    assert inputs.images.shape == (256, 3, 32, 32) and inputs.mean is None
    assert "could not be read" in inputs.note and "random inputs" in inputs.note
    assert "unknown" in ox.model_metadata(spec, inputs)["normalization"]
    assert "no data was given" in ox.check_inputs(None, spec).note


def test_missing_extra_is_named_before_any_export_work(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    with pytest.raises(ox.MissingExtraError, match=r"pip install 'prunetune\[onnx\]'"):
        ox.onnx_bytes(build_model(ModelSpec("vgg19", num_classes=4, width=0.125)))
    out = tmp_path / "export"
    # without --onnx this names the missing --mlflow-uri; with it the extra is said first
    assert main(["export", "no-such-search", "--out", str(out), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'prunetune[onnx]'" in err and "onnxruntime" in err
    assert "--mlflow-uri" not in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("with_data", [True, False], ids=["data", "no-data"])
def test_prune_onnx_writes_a_verified_file_beside_the_pruned_model(
    tmp_path, capsys, with_data
) -> None:
    """`prunetune prune --onnx`: model.onnx beside --out, checked as export checks it, on the val
    images of --data, else on seeded random inputs (said, and no normalisation stated)."""
    out = tmp_path / "pruned" / "pruned.pt"
    argv = ["prune", "--speedup", "2", "--width", "0.125", "--out", str(out), "--onnx"]
    argv += ["--device", "cpu", "--no-latency", "--json"]
    data_args = ["--data", "synthetic", "--val-size", "256", "--train-subset", "64"]
    argv += data_args if with_data else ["--num-classes", "4"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    path = out.parent / ONNX_FILE
    assert path.is_file() and result["onnx"]["path"] == str(path)
    assert result["onnx"]["top1_mismatches"] == 0
    assert result["speedup"] == pytest.approx(2.0, rel=0.01)
    props = _props(path)
    assert float(props["prunetune.macs_speedup"]) == pytest.approx(result["speedup"], abs=1e-4)
    model = load_pruned(out).eval()
    if with_data:  # the same 256 val images, normalised as prune's --data normalises them
        assert result["onnx"]["check_source"] == "256 val images of synthetic"
        data = DataSpec(val_size=256, train_subset=64)
        assert json.loads(props["mean"]) == pytest.approx(load_dataset(data).mean)
        assert props["num_classes"] == "10"
        x = ox.check_inputs(RunInfo(data=data), model.prunetune_spec).images[:16]
    else:
        assert result["onnx"]["check_source"] == "256 seeded random inputs"
        assert "warning: no data was given" in captured.err
        assert "unknown" in props["normalization"] and "mean" not in props
        x = torch.randn((16, 3, 32, 32), generator=torch.Generator().manual_seed(2))
    (got,) = ox.session(path, threads=1).run([ox.OUTPUT_NAME], {ox.INPUT_NAME: x.numpy()})
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "{tmp}/p/pruned.pt"], "pip install 'prunetune[onnx]'"),
        ([], "pass --out too"),
        (["--out", "{tmp}/p/model.onnx"], "give the pruned model another name"),
    ],
    ids=["missing-extra", "no-out", "out-is-the-onnx-file"],
)
def test_prune_onnx_mistakes_are_said_before_any_pruning(
    tmp_path, monkeypatch, capsys, argv, message
) -> None:
    if "onnx]" in message:
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    argv = [a.format(tmp=tmp_path) for a in argv]
    base = ["prune", "--speedup", "2", "--width", "0.125", "--data", "synthetic", "--onnx"]
    assert main([*base, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert "data: " not in err  # said once the data are loaded: nothing was loaded or pruned
    assert not (tmp_path / "p").exists()


def test_prune_onnx_that_fails_its_check_exits_2_and_keeps_the_file_aside(
    tmp_path, monkeypatch, capsys
) -> None:
    """As with export: the error names what differed, the pruned model stays, the ONNX file is
    kept only as model.failed.onnx (a tolerance below any difference forces the failure)."""
    monkeypatch.setattr(ox, "tolerance", lambda torch_logits: -1.0)
    out = tmp_path / "p" / "pruned.pt"
    argv = ["prune", "--speedup", "2", "--width", "0.125", "--num-classes", "4", "--no-latency"]
    assert main([*argv, "--device", "cpu", "--out", str(out), "--onnx"]) == 2
    err = capsys.readouterr().err
    assert "does not match the torch model" in err and "model.failed.onnx" in err
    assert out.is_file() and (out.parent / "model.failed.onnx").is_file()
    assert not (out.parent / ONNX_FILE).exists()
