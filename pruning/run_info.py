"""Where a schedule ran: the `run` section of a schedule file, as a typed, frozen `RunInfo`.

    run: {model: {arch, width, num_classes}, data: {DataSpec fields}, seed,
          checkpoint, checkpoint_sha256, threads}

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pruning.data import DataSpec
from pruning.models import ARCHS, check_width, uniform_width, vgg19_classes, vgg19_widths
from pruning.validate import build_dataclass, check_keys, choice, positive_int, require

_SHA256_HEX = 64


@dataclass(frozen=True)
class ModelInfo:
    arch: str = "vgg19"
    # Uniform channel multiplier; None: per-layer widths that no single multiplier gives (a
    # pruned checkpoint), read from the checkpoint itself.
    width: float | None = 1.0
    num_classes: int | None = None  # None: the data's class count

    def __post_init__(self) -> None:
        choice("run.model.arch", self.arch, ARCHS)
        if self.width is not None:
            check_width(self.width, "run.model.width")
        if self.num_classes is not None:
            positive_int("run.model.num_classes", self.num_classes, minimum=1)

    def describe(self) -> str:
        width = "with per-layer (pruned) widths" if self.width is None else f"x{self.width:g}"
        classes = "" if self.num_classes is None else f", {self.num_classes} classes"
        return f"{self.arch.upper()} {width}{classes}"


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
    return dataclasses.asdict(run)


def run_from_dict(raw: Any, where: str = "run") -> RunInfo:
    """Every key checked (with a did-you-mean) before any value is converted."""
    check_keys(RunInfo, raw, where)
    raw = dict(raw)
    if raw.get("model") is not None:
        raw["model"] = build_dataclass(ModelInfo, raw["model"], f"{where}.model")
    else:
        raw.pop("model", None)
    if raw.get("data") is not None:
        raw["data"] = build_dataclass(DataSpec, raw["data"], f"{where}.data")
    else:
        raw.pop("data", None)
    return build_dataclass(RunInfo, raw, where)
