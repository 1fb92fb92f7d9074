"""MLflow Models: a trial's pruned model logged under its run, and `prunetune export --register`
making it a version in the Model Registry. The second module that imports MLflow (tracking.py
holds runs, params, metrics and artifacts): this one holds what a logged model is (flavours,
signature, input example, metadata) and which registered names may take it, rules tracking.py
has no part in; it also imports mlflow.pytorch, mlflow.onnx and torch.export's machinery.

What a finished trial logs, by the experiment's `mlflow.log_models` (true: every flavour of
FLAVOURS whose packages are installed; false: none; or a list), each an MLflow LoggedModel whose
source is the trial's run:
  - `model`: the pytorch flavour in the pt2 format (torch.export). Pickle-free, so
    `mlflow.pyfunc.load_model` reads it without prunetune installed and without
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION (MLflow 3 refuses pickled models by default). pyfunc
    loads it on the CPU, where it was exported: pt2 weights cannot move to another device.
  - `model_onnx`: the ONNX flavour (pruning.onnx_export.onnx_bytes), when the optional extra
    `onnx` is installed; pyfunc runs it in onnxruntime.
Both take float32 images (batch, 3, H, W) normalised as in training, (pixel / 255 - mean) / std
(mean and std in the model's metadata), and give float32 logits (batch, classes). The input
example has 2 images: torch.export fixes a batch dimension it sees as 1 to a constant.

A registered name takes only prunetune models of the same signature: every version of it must
carry FORMAT_TAG and the same SIGNATURE_TAG, or registering is refused (IncompatibleModelError).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from pruning.data import BatchLoader, Dataset
from pruning.models import ModelSpec, load_pruned
from pruning.onnx_export import (
    CheckInputs,
    MissingExtraError,
    check_inputs,
    model_metadata,
    onnx_bytes,
    require_onnx,
)
from pruning.registry import Registry
from pruning.schedule import load as load_schedule
from pruning.validate import require

if TYPE_CHECKING:
    import mlflow
    from mlflow.models import ModelSignature

# MLflow (and trainables.tracking, which imports it) is imported by the functions that use it:
# search.config reads FLAVOURS and flavours() from here, and `prunetune search --dry-run` and a
# config's errors should not pay the seconds MLflow takes to import.

MODEL_NAME = "model"  # the pytorch flavour's LoggedModel, under the trial's run
ONNX_NAME = "model_onnx"
MODEL_TAG = "prunetune.model_id"  # on the trial's run: its `model`'s id
ONNX_TAG = "prunetune.onnx_model_id"
MODEL_ERROR_TAG = "prunetune.model_error"  # on the trial's run: why no model was logged
FORMAT_TAG, FORMAT = "prunetune.format", "prunetune.pruned"
SIGNATURE_TAG = "prunetune.signature"
EXAMPLE_BATCH = 2  # a batch of 1 would make torch.export fix the batch dimension


class ModelBuildError(RuntimeError):
    """The model could not be saved as an MLflow model (torch.export cannot trace it, ...)."""


class IncompatibleModelError(ValueError):
    """The registered name holds models that are not this kind of prunetune model."""


def model_inputs(data: Dataset) -> CheckInputs:
    """The input example: the first EXAMPLE_BATCH validation images, normalised as in
    training, on the CPU, with the normalisation and class names for the metadata."""
    loader = BatchLoader(data.val, EXAMPLE_BATCH, data.mean, data.std, augment=False, shuffle=False)
    images, _ = next(iter(loader))  # (2, 3, H, W) float32
    return CheckInputs(
        images=images.cpu(),
        source=f"{len(images)} val images",
        mean=data.mean,
        std=data.std,
        classes=tuple(data.classes),
    )


def signature(spec: ModelSpec) -> ModelSignature:
    """float32 (-1, 3, H, W) in, float32 (-1, classes) out; -1: any batch size."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    f32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, 3, spec.size, spec.size))]),
        outputs=Schema([TensorSpec(f32, (-1, spec.num_classes))]),
    )


def signature_text(spec: ModelSpec) -> str:
    return f"float32 (-1, 3, {spec.size}, {spec.size}) -> float32 (-1, {spec.num_classes})"


def _requirements(*packages: str) -> list[str]:
    # Given, not inferred: MLflow infers them by loading the model in a subprocess (seconds).
    return [f"{p}=={md.version(p)}" for p in ("mlflow", *packages)]


def _save_pytorch(
    folder: Path, model: nn.Module, inputs: CheckInputs, meta: dict[str, str]
) -> None:
    import mlflow.pytorch

    spec: ModelSpec = model.prunetune_spec  # type: ignore[assignment]
    mlflow.pytorch.save_model(
        model,
        str(folder),
        serialization_format="pt2",
        signature=signature(spec),
        input_example=inputs.images[:EXAMPLE_BATCH].numpy(),  # (2, 3, H, W) float32
        pip_requirements=_requirements("torch"),
        metadata=meta,
    )
    _load_on_cpu(folder)


def _save_onnx(folder: Path, model: nn.Module, inputs: CheckInputs, meta: dict[str, str]) -> None:
    import mlflow.onnx
    import onnx

    spec: ModelSpec = model.prunetune_spec  # type: ignore[assignment]
    proto = onnx.load_from_string(onnx_bytes(model, meta, inputs.images[:1]))
    mlflow.onnx.save_model(
        proto,
        str(folder),
        signature=signature(spec),
        input_example=inputs.images[:EXAMPLE_BATCH].numpy(),
        pip_requirements=_requirements("onnx", "onnxruntime"),
        metadata=meta,
        save_as_external_data=False,  # one file, as pruning.onnx_export writes it
    )


def _no_extra() -> None:
    pass


ENV_URI = "MLFLOW_TRACKING_URI"  # what mlflow.set_tracking_uri also writes (see _tracking_uri)


@dataclass(frozen=True)
class Flavour:
    """An MLflow model flavour a trial logs its model in: the LoggedModel's name, the run tag
    holding its id, how it is saved, and the check that its packages are installed."""

    logged_name: str
    run_tag: str
    save: Callable[[Path, nn.Module, CheckInputs, dict[str, str]], None]
    require: Callable[[], None]  # raises MissingExtraError when its optional extra is missing


FLAVOURS: Registry[Flavour] = Registry(
    "model flavour",
    {
        "pytorch": Flavour(MODEL_NAME, MODEL_TAG, _save_pytorch, _no_extra),
        "onnx": Flavour(ONNX_NAME, ONNX_TAG, _save_onnx, lambda: require_onnx("the onnx flavour")),
    },
)
LOG_MODELS = True  # mlflow.log_models' default: every flavour whose packages are installed


def flavours(setting: bool | tuple[str, ...], field: str = "mlflow.log_models") -> tuple[str, ...]:
    """mlflow.log_models as flavour names: true is every flavour whose packages are installed,
    false none, a list those named (a flavour whose extra is missing is an error then)."""
    if isinstance(setting, bool):
        if not setting:
            return ()
        return tuple(n for n in FLAVOURS.names() if _installed(FLAVOURS[n]))
    require(
        isinstance(setting, (list, tuple)) and all(isinstance(n, str) for n in setting),
        field,
        setting,
        f"true, false or a list of flavours ({', '.join(FLAVOURS.names())})",
    )
    for name in setting:
        FLAVOURS.check(f"{field}[]", name)
        try:
            FLAVOURS[name].require()
        except MissingExtraError as err:
            raise ValueError(f"{field}: {err}") from None
    return tuple(dict.fromkeys(setting))


def _installed(flavour: Flavour) -> bool:
    try:
        flavour.require()
    except MissingExtraError:
        return False
    return True


def build(
    folder: Path,
    model: nn.Module,
    inputs: CheckInputs,
    speedup: float | None = None,
    names: tuple[str, ...] = ("pytorch",),
) -> dict[str, Path]:
    """The model saved in each flavour of `names`, as MLflow model folders in `folder` (by
    flavour). Local only, no server. Raises ModelBuildError naming the flavour that failed."""
    spec: ModelSpec = model.prunetune_spec  # type: ignore[assignment]
    model = model.cpu().eval()
    meta = model_metadata(spec, inputs, speedup)
    folders = {}
    for name in names:
        folders[name] = folder / FLAVOURS[name].logged_name
        # torch.export and the ONNX exporter raise many kinds of errors (untraceable control
        # flow, unsupported ops, a missing extra): each becomes one ModelBuildError.
        try:
            FLAVOURS[name].require()
            FLAVOURS[name].save(folders[name], model, inputs, meta)
        except Exception as err:
            raise ModelBuildError(f"saving the {name} flavour failed: {err}") from err
    return folders


def _load_on_cpu(folder: Path) -> None:
    """pyfunc picks CUDA when it sees a GPU, where pt2 weights exported on the CPU cannot go."""
    from mlflow.models import Model

    mlmodel = Model.load(str(folder))
    mlmodel.flavors["python_function"]["model_config"] = {"device": "cpu"}
    mlmodel.save(str(folder / "MLmodel"))


def upload(
    uri: str, run_id: str, folders: dict[str, Path], step: int, tags: dict[str, str]
) -> dict[str, str]:
    """Each built folder (by flavour) as a READY LoggedModel of the run, tagged `tags`, and the
    run tagged with their ids; returns flavour -> model id. Retried like every tracking call."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    from trainables import tracking

    client = tracking.client(uri)
    experiment = tracking._retry(lambda: client.get_run(run_id), "reading a run").info.experiment_id
    ids = {}
    for name, folder in folders.items():
        logged = tracking._retry(
            lambda n=name: client.create_logged_model(
                experiment, name=FLAVOURS[n].logged_name, source_run_id=run_id, tags=tags
            ),
            "creating a logged model",
        )
        _name_in(folder, logged.model_id, logged.artifact_location, run_id)
        tracking._retry(
            lambda f=folder, m=logged.model_id: client.log_model_artifacts(m, str(f)),
            "uploading a logged model",
        )
        output = [LoggedModelOutput(logged.model_id, step=step)]
        tracking._retry(lambda o=output: client.log_outputs(run_id, o), "linking a logged model")
        tracking._retry(
            lambda m=logged.model_id: client.finalize_logged_model(m, LoggedModelStatus.READY),
            "finalising a logged model",
        )
        ids[name] = logged.model_id
    tracking.set_tags(uri, run_id, {FLAVOURS[n].run_tag: i for n, i in ids.items()})
    return ids


def _name_in(folder: Path, model_id: str, artifact_location: str, run_id: str) -> None:
    """The MLmodel file names the LoggedModel it is stored as, as mlflow's own log_model does."""
    from mlflow.models import Model

    mlmodel = Model.load(str(folder))
    mlmodel.model_id = mlmodel.model_uuid = model_id
    mlmodel.artifact_path, mlmodel.run_id = artifact_location, run_id
    mlmodel.save(str(folder / "MLmodel"))


def model_tags(spec: ModelSpec) -> dict[str, str]:
    return {FORMAT_TAG: FORMAT, SIGNATURE_TAG: signature_text(spec), "prunetune.arch": spec.arch}


# --- the Model Registry (prunetune export --register) ----------------------------------------


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    model_id: str
    logged_now: bool  # the trial had no logged model: it was logged from pruned.pt first

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def check_name(name: str) -> None:
    """A registered-model name usable in `models:/NAME/<version>` and in a search filter."""
    require(
        isinstance(name, str) and name.strip() == name and name != "",
        "--register",
        name,
        "a non-empty name without leading or trailing spaces",
    )
    bad = sorted({c for c in name if c in "/:'\"\\%"})
    require(not bad, "--register", name, f"a name without {' '.join(bad)}")


def register(
    uri: str,
    name: str,
    run_id: str,
    pruned: Path,
    tags: dict[str, str],
    speedup: float | None = None,
) -> Registered:
    """The trial's logged `model` (logged now from `pruned`, the exported pruned.pt beside its
    schedule.yaml, when the trial has none) as a new version of the registered model `name`,
    tagged `tags`, its search (experiment, parent run) and the model's format and signature;
    `speedup` (MACs) goes into the metadata of a model logged now.

    Raises RuntimeError when the server cannot be reached, IncompatibleModelError when `name`
    holds other models."""
    from trainables import tracking

    check_name(name)
    try:
        tracking.check_reachable(uri)
    except RuntimeError as err:
        raise RuntimeError(f"--register {name}: {err}") from None
    require(
        bool(run_id),
        "run_id",
        run_id,
        "the trial's MLflow run (`prunetune pareto` copies a "
        "trial only Ray's storage has into MLflow)",
    )
    model = load_pruned(pruned)
    spec: ModelSpec = model.prunetune_spec  # type: ignore[assignment]
    client = _client(uri)
    _check_compatible(client, uri, name, spec)
    model_id = _trial_model(uri, run_id, spec)
    logged_now = model_id is None
    if model_id is None:
        model_id = _log_now(uri, run_id, model, pruned, speedup)
    # the caller's first: the registry's pages show a version's first few tags
    version_tags = tags | _search_tags(uri, run_id) | model_tags(spec)
    with _tracking_uri(uri):  # MLflow resolves models:/<id> through the global tracking URI
        if not tracking._retry(lambda: _exists(client, name), "reading the registered model"):
            tracking._retry(
                lambda: client.create_registered_model(name, tags=model_tags(spec)),
                "creating the registered model",
            )
        version = tracking._retry(
            lambda: client.create_model_version(
                name, f"models:/{model_id}", run_id=run_id, tags=version_tags, model_id=model_id
            ),
            "creating the model version",
        )
    return Registered(name, str(version.version), model_id, logged_now)


def _search_tags(uri: str, run_id: str) -> dict[str, str]:
    """The search the trial ran in: its MLflow experiment's name and parent run."""
    from trainables import tracking

    client = tracking.client(uri)
    run = tracking._retry(lambda: client.get_run(run_id), "reading the trial's run")
    experiment = tracking._retry(
        lambda: client.get_experiment(run.info.experiment_id), "reading the experiment"
    )
    return {
        "search.experiment": experiment.name,
        "search.parent_run_id": run.data.tags.get(tracking.PARENT_TAG, ""),
        "run_id": run_id,
    }


def _client(uri: str) -> mlflow.MlflowClient:
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to `uri` inside, and after it both the global and the
    MLFLOW_TRACKING_URI variable as they were. mlflow.set_tracking_uri also writes (or, given
    None, deletes) that variable, and is_tracking_uri_set() counts the variable too, so each is
    put back on its own: a URI that came from the variable is not pinned as the global, and the
    variable is not lost."""
    import mlflow

    env = os.environ.get(ENV_URI)
    current = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    before = None if current == env else current  # None: the global was not set
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]
        if env is None:
            os.environ.pop(ENV_URI, None)
        else:
            os.environ[ENV_URI] = env


def _exists(client: mlflow.MlflowClient, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _check_compatible(client: mlflow.MlflowClient, uri: str, name: str, spec: ModelSpec) -> None:
    """Every version `name` already has is a prunetune model taking and giving what this one
    does; a name without versions takes any."""
    from trainables import tracking

    ours = signature_text(spec)
    versions = tracking._retry(
        lambda: client.search_model_versions(f"name = '{name}'"), "reading the registered model"
    )
    for v in sorted(versions, key=lambda v: int(v.version)):
        theirs = v.tags.get(SIGNATURE_TAG)
        if v.tags.get(FORMAT_TAG) != FORMAT:
            why = f"its version {v.version} is not a prunetune model (no tag {FORMAT_TAG})"
        elif theirs != ours:
            why = f"its version {v.version} takes {theirs}, this model {ours}"
        else:
            continue
        raise IncompatibleModelError(
            f"--register {name}: the registered model {name!r} at {uri} holds other models: "
            f"{why}; pass a new name, or one whose versions take this input and class count"
        )


def _trial_model(uri: str, run_id: str, spec: ModelSpec) -> str | None:
    """The trial's READY logged `model` of this signature, or None (none was logged)."""
    from mlflow.entities import LoggedModelStatus

    from trainables import tracking

    run = tracking._retry(lambda: tracking.client(uri).get_run(run_id), "reading the trial's run")
    model_id = run.data.tags.get(MODEL_TAG)
    if not model_id:
        return None
    logged = tracking._retry(
        lambda: tracking.client(uri).get_logged_model(model_id), "reading the logged model"
    )
    ready = logged.status == LoggedModelStatus.READY
    return model_id if ready and logged.tags.get(SIGNATURE_TAG) == signature_text(spec) else None


def _log_now(uri: str, run_id: str, model: nn.Module, pruned: Path, speedup: float | None) -> str:
    """The model logged under the trial's run from the exported files (a trial with
    mlflow.log_models off, one whose logging failed, one copied from Ray's storage)."""
    spec: ModelSpec = model.prunetune_spec  # type: ignore[assignment]
    _, run = load_schedule(pruned.parent / "schedule.yaml")
    inputs = check_inputs(run, spec, count=EXAMPLE_BATCH)
    print(f"prunetune: the trial has no logged model; logging it from {pruned}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        folders = build(Path(tmp), model, inputs, speedup)
        return upload(uri, run_id, folders, 0, model_tags(spec))["pytorch"]
