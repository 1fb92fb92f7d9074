"""Where a schedule ran: the `run` section of a schedule file, as a typed, frozen `RunInfo`.

    run: {model: {arch, width, num_classes, kwargs}, data: {DataSpec fields}, seed,
          checkpoint, checkpoint_sha256, threads}

`model` is the same section experiment and pretrain files have (`ModelInfo`): an architecture of
the model registry (pruning.models), its width multiplier and class count, and the keyword
arguments of a torchvision model or user factory. `kwargs` is written only when there are some,
so a file of a built-in model reads exactly as format version 2 always did (no version bump).

Paths (`checkpoint`, `data.root`) are written so that the file names no folder of the machine
that wrote it, where that can be avoided:
  - a path starting with `~` is kept as given (never expanded);
  - a path inside the project (the working directory the command runs from) is written relative
    to the schedule file's folder, e.g. `../../baseline/baseline.pt`;
  - any other path under the home folder is written as `~/...`; the rest as an absolute path.
On reading, a relative path is taken relative to the schedule file's folder. In memory a RunInfo
holds paths usable from the working directory (absolute, `~/...`, or relative to it).
`checkpoint_sha256` identifies the checkpoint's bytes, so `replay` can say when the file it finds
is not the one the schedule ran with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pruning.data import DataSpec
from pruning.models import (
    MODELS,
    CheckpointMismatchError,
    ModelSpec,
    as_state_dict,
    build_model,
    check_arch,
    layer_widths,
    load_fitting,
    load_pruned,
    read_checkpoint,
    uniform_width,
    vgg19_classes,
    vgg19_from_state_dict,
    vgg19_widths,
)
from pruning.models.pruned import FORMAT as PRUNED_FORMAT
from pruning.validate import build_dataclass, check_keys, positive_int, require

_SHA256_HEX = 64


@dataclass(frozen=True)
class ModelInfo:
    """A model as files name it: `model: {arch, width, num_classes, kwargs}`."""

    arch: str = "vgg19"  # a model registry name, torchvision:NAME or module.path:callable
    # Uniform channel multiplier; None: per-layer widths that no single multiplier gives (a
    # pruned checkpoint), read from the checkpoint itself.
    width: float | None = 1.0
    num_classes: int | None = None  # None: the data's class count
    # Keyword arguments of a torchvision model or a user factory, as sorted (key, value) pairs
    # so the section stays frozen; given (and written) as a mapping.
    kwargs: Any = ()

    def __post_init__(self) -> None:
        require(
            isinstance(self.kwargs, (Mapping, tuple, list)),
            "model.kwargs",
            self.kwargs,
            "a mapping of keyword arguments",
        )
        items = self.kwargs.items() if isinstance(self.kwargs, Mapping) else self.kwargs
        object.__setattr__(self, "kwargs", tuple(sorted((str(k), v) for k, v in items)))
        check_arch(self.arch, "model.arch")
        if self.num_classes is not None:
            positive_int("model.num_classes", self.num_classes, minimum=1)
        self.spec(self.num_classes or 2)  # the registry's checks: width and kwargs it takes

    def spec(self, num_classes: int, input_size: int | None = None) -> ModelSpec:
        """What to build from the registry; `num_classes` (the data's) when the section has none,
        `input_size` (pixels per side, the data's) when the model should see another size than
        its registry entry's."""
        return ModelSpec(
            self.arch,
            num_classes=self.num_classes or num_classes,
            width=1.0 if self.width is None else self.width,
            input_size=input_size,
            kwargs=self.kwargs,
        )

    def to_dict(self) -> dict[str, Any]:
        """The file section: kwargs only when there are some."""
        out: dict[str, Any] = {
            "arch": self.arch,
            "width": self.width,
            "num_classes": self.num_classes,
        }
        return out | ({"kwargs": dict(self.kwargs)} if self.kwargs else {})

    def describe(self) -> str:
        width = "with per-layer (pruned) widths" if self.width is None else f"x{self.width:g}"
        classes = "" if self.num_classes is None else f", {self.num_classes} classes"
        options = ", ".join(f"{k}={v!r}" for k, v in self.kwargs)
        name = self.arch.upper() if self.arch in MODELS else self.arch
        return f"{name} {width}{classes}" + (f" ({options})" if options else "")


@dataclass(frozen=True)
class RunInfo:
    model: ModelInfo | None = None  # None: not recorded
    data: DataSpec | None = None  # None: not recorded (replay then uses DataSpec())
    seed: int = 0
    checkpoint: str | None = None  # None: a random-init model
    checkpoint_sha256: str | None = None  # of the checkpoint's bytes; None: not known
    threads: int | None = None  # torch CPU threads it ran with; None: not recorded

    def __post_init__(self) -> None:
        model_ok = self.model is None or isinstance(self.model, ModelInfo)
        require(model_ok, "run.model", self.model, "it must be null or a ModelInfo")
        data_ok = self.data is None or isinstance(self.data, DataSpec)
        require(data_ok, "run.data", self.data, "it must be null or a DataSpec")
        positive_int("run.seed", self.seed)
        ok = self.checkpoint is None or (isinstance(self.checkpoint, str) and self.checkpoint)
        require(bool(ok), "run.checkpoint", self.checkpoint, "it must be null or a path")
        sha = self.checkpoint_sha256
        sha_ok = sha is None or (
            isinstance(sha, str)
            and len(sha) == _SHA256_HEX
            and all(c in "0123456789abcdef" for c in sha)
        )
        require(sha_ok, "run.checkpoint_sha256", sha, "it must be null or 64 lower-case hex digits")
        if self.threads is not None:
            positive_int("run.threads", self.threads, minimum=1)


def model_info(state: dict[str, Any], width: float | None = None) -> ModelInfo:
    """What a VGG19 state dict holds: its own widths and classes (`width`: the expected
    multiplier, tried first)."""
    return ModelInfo("vgg19", uniform_width(vgg19_widths(state), width), vgg19_classes(state))


def model_from_state(
    info: ModelInfo, state: dict[str, Any], num_classes: int, input_size: int | None = None
) -> tuple[nn.Module, ModelInfo]:
    """The registry's model holding the plain state dict `state`, and what it is.

    A VGG19 state dict brings its own widths and classes (a pruned VGG19 checkpoint loads as it
    is); any other architecture is built from `info` (classes: `num_classes` when it names none)
    and the state must fit it exactly. The model carries its ModelSpec (`prunetune_spec`), so
    save_pruned can record it."""
    if info.arch == "vgg19":
        model: nn.Module = vgg19_from_state_dict(state)
        found = model_info(state, info.width)
    else:
        spec = info.spec(num_classes, input_size)
        model = load_fitting(
            build_model(spec),
            state,
            f"the state dict does not fit {spec.describe()}",
            "Check model.arch, model.width, model.num_classes and model.kwargs against the "
            "checkpoint",
        )
        found = dataclasses.replace(info, num_classes=spec.num_classes)
    model.prunetune_spec = found.spec(num_classes, input_size)  # type: ignore[assignment]
    return model, found


def model_from_checkpoint(
    path: str | Path, info: ModelInfo, num_classes: int, input_size: int | None = None
) -> tuple[nn.Module, ModelInfo]:
    """`model_from_state` for a file: a plain state dict, or a pruned model written by
    save_pruned (it names its own architecture and widths)."""
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == PRUNED_FORMAT:
        model = load_pruned(path)
        spec: ModelSpec = model.prunetune_spec  # type: ignore[assignment]
        return model, ModelInfo(spec.arch, _spec_width(model, spec), spec.num_classes, spec.kwargs)
    try:
        return model_from_state(info, as_state_dict(obj, path), num_classes, input_size)
    except CheckpointMismatchError as err:
        raise CheckpointMismatchError(f"checkpoint {path}: {err}") from None


def _spec_width(model: nn.Module, spec: ModelSpec) -> float | None:
    """The spec's width when the model is unpruned, None when its layers were cut."""
    unpruned = layer_widths(build_model(spec))
    return spec.width if layer_widths(model) == unpruned else None


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).expanduser().open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # 1 MiB at a time
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- paths


def portable_path(path: str, folder: Path, project: Path | None = None) -> str:
    """`path` (usable from the working directory) as a schedule file in `folder` records it."""
    if path.startswith("~"):
        return path
    target = Path(os.path.abspath(path))
    here = Path(os.path.abspath(folder))
    inside = Path(os.path.abspath(project or Path.cwd()))
    if target.is_relative_to(inside) and here.is_relative_to(inside):
        return os.path.relpath(target, here)
    home = Path.home()
    if target.is_relative_to(home):
        return str(Path("~") / target.relative_to(home))
    return str(target)


def located_path(path: str, folder: Path) -> str:
    """A path read from a schedule file in `folder`, made usable from the working directory."""
    if path.startswith("~") or Path(path).is_absolute():
        return path
    return os.path.normpath(os.path.join(os.path.abspath(folder), path))


def map_paths(run: RunInfo, convert: Any) -> RunInfo:
    """`run` with `convert(path) -> path` applied to its checkpoint and data root."""
    checkpoint = convert(run.checkpoint) if run.checkpoint else run.checkpoint
    data = run.data
    if data is not None and data.root:
        data = dataclasses.replace(data, root=convert(data.root))
    return dataclasses.replace(run, checkpoint=checkpoint, data=data)


# ---------------------------------------------------------------- file section


def run_to_dict(run: RunInfo) -> dict[str, Any]:
    out = dataclasses.asdict(run)
    if run.model is not None:
        out["model"] = run.model.to_dict()
    return out


def model_from_dict(raw: Any, where: str = "model") -> ModelInfo:
    """A `model:` section (of a schedule's run, an experiment or a pretrain config); errors
    name the field as that file spells it (`run.model.width`)."""
    try:
        return build_dataclass(ModelInfo, raw, where)
    except ValueError as err:
        text = str(err)
        raise ValueError(
            where + text[len("model") :] if text.startswith("model.") else text
        ) from None


def with_model_section(raw: dict[str, Any], where: str = "") -> dict[str, Any]:
    """A config mapping whose `model` is a ModelInfo. Files written before the model registry
    gave a top-level `width` (of VGG19): it becomes `model.width`. Given both ways, they must
    agree."""
    raw = dict(raw)
    section = raw.get("model")
    section = {} if section is None else section
    if "width" in raw:
        width = raw.pop("width")
        if isinstance(section, Mapping):
            require(
                section.get("width", width) == width,
                f"{where}width",
                width,
                f"it is the old spelling of {where}model.width, which says "
                f"{section.get('width')!r}; give the width once, as {where}model.width",
            )
            section = {**section, "width": width}
    raw["model"] = model_from_dict(section, f"{where}model")
    return raw


def run_from_dict(raw: Any, where: str = "run") -> RunInfo:
    """Every key checked (with a did-you-mean) before any value is converted."""
    check_keys(RunInfo, raw, where)
    raw = dict(raw)
    if raw.get("model") is not None:
        raw["model"] = model_from_dict(raw["model"], f"{where}.model")
    else:
        raw.pop("model", None)
    if raw.get("data") is not None:
        raw["data"] = build_dataclass(DataSpec, raw["data"], f"{where}.data")
    else:
        raw.pop("data", None)
    return build_dataclass(RunInfo, raw, where)
