"""MLflow Models against a real `mlflow server` on 127.0.0.1: a trial's run logs its pruned model
(pytorch pt2 and onnx flavours), `register` makes it a model version that
`mlflow.pyfunc.load_model("models:/NAME/<version>")` runs with the logits of load_pruned, names
holding other models are refused, and neither an unreachable server nor a model torch.export
cannot trace fails the trial. (The sqlite store, through a real search and `prunetune export
--register`: tests/test_search_e2e.py.)"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from support.procs import free_port

from pruning import schedule as schedule_io
from pruning.data import DataSpec, load_dataset
from pruning.models import ModelSpec, build_model, example_input, load_pruned, save_pruned
from pruning.onnx_export import CheckInputs
from pruning.prune import prune_to_speedup
from pruning.run_info import RunInfo
from pruning.schedule import Schedule, Stage
from trainables import mlflow_models, tracking
from trainables.mlflow_models import FLAVOURS, IncompatibleModelError

DATA = DataSpec(name="synthetic", samples=100, num_classes=4, val_size=0.2)
SPEC = ModelSpec("vgg19", num_classes=4, width=0.125)


@dataclass(frozen=True)
class Pruned:
    path: Path  # pruned.pt, beside the schedule.yaml whose run section names DATA
    inputs: CheckInputs  # the input example: 2 normalised val images
    images: torch.Tensor  # (7, 3, 32, 32): a batch size the example never had


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Pruned:
    torch.manual_seed(0)
    model = build_model(SPEC)
    prune_to_speedup(model, example_input(SPEC), 3.0)
    folder = tmp_path_factory.mktemp("export")
    save_pruned(folder / "pruned.pt", model, SPEC)
    schedule_io.save(folder / "schedule.yaml", Schedule(3.0, (Stage(3.0, 0),)), RunInfo(data=DATA))
    images = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    inputs = mlflow_models.model_inputs(load_dataset(DATA))
    return Pruned(folder / "pruned.pt", inputs, images)


@pytest.fixture
def tracking_uri(mlflow_server, monkeypatch) -> str:
    """mlflow.pyfunc.load_model("models:/...") finds the server through the tracking URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


def torch_logits(p: Pruned) -> np.ndarray:
    model = load_pruned(p.path).eval()
    with torch.no_grad():
        return model(p.images).numpy()  # (7, 4)


def trial(uri: str, experiment: str) -> tuple[str, tracking.TrialRun]:
    """A search's parent run and one trial's open run (the caller closes it with `with`)."""
    exp = tracking.ensure_experiment(uri, experiment)
    parent = tracking.start_parent(uri, exp, "search", {}, {}, [])
    return parent, tracking.trial_run(uri, exp, parent, "t1", "trial_1", {})


def test_a_trial_logs_both_flavours_and_registers_them_over_http(
    tracking_uri: str, pruned: Pruned
) -> None:
    uri, client = tracking_uri, MlflowClient(tracking_uri)
    parent, opened = trial(uri, "models-http")
    with opened as run:
        run.log_model(load_pruned(pruned.path), pruned.inputs, 1, 3.0, FLAVOURS.names())
        run.completed = True
    assert run.lost is None
    tags = client.get_run(run.run_id).data.tags
    for name in FLAVOURS.names():
        logged = client.get_logged_model(tags[FLAVOURS[name].run_tag])
        assert logged.status == "READY" and logged.source_run_id == run.run_id
        assert logged.name == FLAVOURS[name].logged_name
        assert (
            logged.tags[mlflow_models.SIGNATURE_TAG] == "float32 (-1, 3, 32, 32) -> float32 (-1, 4)"
        )
    info = mlflow.models.get_model_info(f"models:/{tags[mlflow_models.MODEL_TAG]}")
    assert info.signature.inputs.inputs[0].shape == (-1, 3, 32, 32)
    assert info.signature.outputs.inputs[0].shape == (-1, 4)
    assert info.saved_input_example_info is not None
    assert json.loads(info.metadata["mean"]) == pytest.approx(list(pruned.inputs.mean))

    first = mlflow_models.register(uri, "tiny-http", run.run_id, pruned.path, {"val_acc": "0.5"})
    assert (first.version, first.uri, first.logged_now) == ("1", "models:/tiny-http/1", False)
    assert first.model_id == tags[mlflow_models.MODEL_TAG]
    version = client.get_model_version("tiny-http", "1")
    assert (
        version.tags["val_acc"] == "0.5" and version.tags["prunetune.format"] == "prunetune.pruned"
    )
    assert version.tags["search.experiment"] == "models-http"
    assert version.tags["search.parent_run_id"] == parent

    want = torch_logits(pruned)
    got = mlflow.pyfunc.load_model(first.uri).predict(pruned.images.numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    onnx = mlflow.pyfunc.load_model(f"models:/{tags[mlflow_models.ONNX_TAG]}")
    logits = onnx.predict(pruned.images.numpy())["logits"]
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-3 * max(1.0, np.abs(want).max()))
    assert mlflow_models.register(uri, "tiny-http", run.run_id, pruned.path, {}).version == "2"


def test_a_trial_without_a_model_gets_one_logged_when_registered(
    tracking_uri: str, pruned: Pruned
) -> None:
    uri = tracking_uri
    _, opened = trial(uri, "models-late")
    with opened as run:  # mlflow.log_models off, or its logging failed
        run.completed = True
    registered = mlflow_models.register(uri, "tiny-late", run.run_id, pruned.path, {}, 3.0)
    assert registered.logged_now and registered.version == "1"
    tags = MlflowClient(uri).get_run(run.run_id).data.tags
    assert tags[mlflow_models.MODEL_TAG] == registered.model_id
    got = mlflow.pyfunc.load_model(registered.uri).predict(pruned.images.numpy())
    np.testing.assert_allclose(got, torch_logits(pruned), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "tags, message",
    [
        ({}, "its version 1 is not a prunetune model"),
        (
            {
                "prunetune.format": "prunetune.pruned",
                mlflow_models.SIGNATURE_TAG: "float32 (-1, 3, 64, 64) -> float32 (-1, 10)",
            },
            r"its version 1 takes float32 \(-1, 3, 64, 64\) -> float32 \(-1, 10\), this model "
            r"float32 \(-1, 3, 32, 32\) -> float32 \(-1, 4\)",
        ),
    ],
)
def test_a_name_holding_other_models_is_refused(
    tracking_uri: str, pruned: Pruned, tags: dict, message: str
) -> None:
    uri, client = tracking_uri, MlflowClient(tracking_uri)
    _, opened = trial(uri, "models-taken")
    with opened as run:
        run.completed = True
    name = f"taken-{len(tags)}"
    client.create_registered_model(name)
    source = f"{client.get_run(run.run_id).info.artifact_uri}/elsewhere"
    client.create_model_version(name, source, run_id=run.run_id, tags=tags)
    with pytest.raises(IncompatibleModelError, match=message) as refused:
        mlflow_models.register(uri, name, run.run_id, pruned.path, {})
    assert "\n" not in str(refused.value) and "pass a new name" in str(refused.value)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1  # nothing registered
    assert mlflow_models.MODEL_TAG not in client.get_run(run.run_id).data.tags  # nor logged


def test_registering_against_a_down_server_is_one_clear_error(pruned: Pruned) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        RuntimeError, match=f"--register x: the MLflow tracking server at {url} is unreachable"
    ) as down:
        mlflow_models.register(url, "x", "0" * 32, pruned.path, {})
    assert "\n" not in str(down.value)


@pytest.mark.parametrize("name", ["", "a/b", "it's", " pad"])
def test_bad_registered_names_are_refused_before_anything(name: str) -> None:
    with pytest.raises(ValueError, match="--register="):
        mlflow_models.check_name(name)


def test_a_down_server_stops_the_runs_logging_and_the_trial_goes_on(
    pruned: Pruned, monkeypatch
) -> None:
    monkeypatch.setenv("PRUNETUNE_MLFLOW_RETRY_DELAYS", "0.1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    run = tracking.TrialRun(f"http://127.0.0.1:{free_port()}", "0" * 32)
    run.log_model(load_pruned(pruned.path), pruned.inputs, 1, 3.0, ("pytorch",))  # no raise
    assert run.lost and "failed after 2 attempts" in run.lost


class Untraceable(torch.nn.Module):
    """A forward torch.export cannot trace (it leaves torch for numpy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.detach().numpy()).mean((2, 3))[:, :1].repeat(1, 4)


def test_a_model_that_cannot_be_saved_is_a_tag_not_a_failed_trial(
    tracking_uri: str, pruned: Pruned
) -> None:
    model = Untraceable()
    model.prunetune_spec = SPEC  # type: ignore[assignment]
    _, opened = trial(tracking_uri, "models-untraceable")
    with opened as run:
        run.log_model(model, pruned.inputs, 1, 3.0, ("pytorch",))
        run.completed = True
    got = MlflowClient(tracking_uri).get_run(run.run_id)
    assert got.info.status == "FINISHED" and run.lost is None
    assert "saving the pytorch flavour failed" in got.data.tags[mlflow_models.MODEL_ERROR_TAG]
    assert mlflow_models.MODEL_TAG not in got.data.tags


def test_registering_leaves_the_tracking_uri_to_the_environment(monkeypatch, tmp_path) -> None:
    """The URI MLflow resolves models:/ with is set only while registering: a process whose
    MLFLOW_TRACKING_URI changes afterwards (a later search, a later test) follows the variable."""
    import mlflow

    first, second = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", first)
    with mlflow_models._tracking_uri("http://127.0.0.1:9"):
        assert mlflow.get_tracking_uri() == "http://127.0.0.1:9"
    assert os.environ["MLFLOW_TRACKING_URI"] == first  # kept (set_tracking_uri rewrites it)
    assert mlflow.get_tracking_uri() == first
    monkeypatch.setenv("MLFLOW_TRACKING_URI", second)
    assert mlflow.get_tracking_uri() == second
