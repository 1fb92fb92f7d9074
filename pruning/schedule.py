"""Pruning schedules as data: frozen, validated dataclasses and their versioned file format.

A schedule file is the export format of a search and the input of `prunetune replay`:

    format: prunetune.schedule
    version: 2
    schedule: {target_speedup, importance, ranking, min_channels, min_channel_ratio,
               sparse, training, distill, bn_recalibration_batches, round_to,
               stages: [{speedup, epochs, lr, lr_schedule[, importance][, distill_alpha]}, ...]}
    run: {model: {arch, width, num_classes}, data: {...}, seed, checkpoint,
          checkpoint_sha256, threads}       # optional: where it ran (pruning.run_info.RunInfo)

Every key of every section is checked; an unknown one is an error with a did-you-mean. Version 1
files (the same, with an untyped `run` section of absolute or working-directory paths) are
migrated on read. `distill` is optional (null: plain cross-entropy), so files written before it
existed read as schedules without distillation; `round_to` likewise (absent: 1, any width).
A stage's `importance` and `distill_alpha` are optional overrides of the schedule's (a PBT
lineage's stages after an exploit, trainables/lineage.py); they are written only when set, so
files without them read and write back unchanged.

Speed-ups are MACs ratios against the unpruned model and are cumulative: a stage's `speedup` is
what the model reaches at the end of that stage.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pruning.importance import IMPORTANCES
from pruning.prune import MIN_CHANNEL_RATIO, MIN_CHANNELS, RANKINGS, ROUND_TO, speedup_cap
from pruning.run_info import (
    RunInfo,
    located_path,
    map_paths,
    portable_path,
    run_from_dict,
    run_to_dict,
)
from pruning.train import LR_SCHEDULES
from pruning.validate import build_dataclass, check_keys, number_in, positive_int, require

FORMAT = "prunetune.schedule"
VERSION = 2  # 2: a typed `run` section (pruning.run_info), portable paths
READABLE_VERSIONS = (1, 2)  # 1 is migrated on read
MAX_SPEEDUP = 1000.0
# Recalibration batches after each prune: measured enough for the accuracy to settle (README,
# "Accuracy right after a prune": within 0.2 points of 50 batches).
BN_RECALIBRATION_BATCHES = 20


@dataclass(frozen=True)
class Stage:
    speedup: float  # cumulative MACs ratio vs. the unpruned model, reached at the end of the stage
    epochs: int  # fine-tune epochs after pruning; 0 = prune only
    lr: float = 0.01
    lr_schedule: str = "cosine"
    # Overrides of the schedule's settings for this stage; None: the schedule's. importance: how
    # this stage's prune ranks channels; distill_alpha: this stage's fine-tune weight of the
    # teacher's term at the schedule's distill.temperature (0: plain cross-entropy).
    importance: str | None = None
    distill_alpha: float | None = None

    def __post_init__(self) -> None:
        number_in("stage.speedup", self.speedup, 1.0, MAX_SPEEDUP)
        positive_int("stage.epochs", self.epochs)
        number_in("stage.lr", self.lr, 0.0, 10.0)
        LR_SCHEDULES.check("stage.lr_schedule", self.lr_schedule)
        if self.importance is not None:
            IMPORTANCES.check("stage.importance", self.importance)
        if self.distill_alpha is not None:
            number_in("stage.distill_alpha", self.distill_alpha, 0.0, 1.0, low_open=False)


@dataclass(frozen=True)
class SparseTraining:
    """Group-sparsity training before the first prune (the paper's 'group_sl')."""

    epochs: int
    reg: float = 5e-4
    lr: float = 0.01

    def __post_init__(self) -> None:
        positive_int("sparse.epochs", self.epochs, minimum=1)
        number_in("sparse.reg", self.reg, 0.0, 1.0)
        number_in("sparse.lr", self.lr, 0.0, 10.0)


@dataclass(frozen=True)
class Training:
    """Optimiser settings shared by every fine-tune stage (the paper's recipe by default)."""

    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        positive_int("training.batch_size", self.batch_size, minimum=1)
        number_in("training.momentum", self.momentum, 0.0, 0.999, low_open=False)
        number_in("training.weight_decay", self.weight_decay, 0.0, 1.0, low_open=False)
        require(
            isinstance(self.nesterov, bool),
            "training.nesterov",
            self.nesterov,
            "it must be true or false",
        )
        number_in("training.label_smoothing", self.label_smoothing, 0.0, 0.5, low_open=False)
        require(
            not self.nesterov or self.momentum > 0,
            "training.nesterov",
            self.nesterov,
            "nesterov needs momentum > 0",
        )


DEFAULT_TEMPERATURE = 4.0  # Hinton et al.'s usual softening for 10-100 classes
MAX_TEMPERATURE = 100.0  # beyond it every softened distribution is uniform to float precision


@dataclass(frozen=True)
class Distill:
    """Knowledge distillation from the unpruned baseline during every fine-tune stage: the loss
    is (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)).
    T^2 keeps the soft term's gradients on the CE's scale as T grows."""

    alpha: float  # weight of the teacher's term; 0 would be plain CE (write distill: null)
    temperature: float = DEFAULT_TEMPERATURE

    def __post_init__(self) -> None:
        number_in("distill.alpha", self.alpha, 0.0, 1.0, low_open=False)
        number_in("distill.temperature", self.temperature, 0.0, MAX_TEMPERATURE)


@dataclass(frozen=True)
class Schedule:
    target_speedup: float
    stages: tuple[Stage, ...]
    importance: str = "group_norm"
    ranking: str = "global"
    # Per-layer floor: a layer keeps at least max(min_channels, ceil(min_channel_ratio * C0))
    # channels (never more than its original C0); see pruning.prune.MIN_CHANNELS.
    min_channels: int = MIN_CHANNELS
    min_channel_ratio: float = MIN_CHANNEL_RATIO
    sparse: SparseTraining | None = None
    training: Training = field(default_factory=Training)
    distill: Distill | None = None  # None: fine-tune on plain cross-entropy
    # Training batches each stage re-estimates BatchNorm statistics on right after its prune, for
    # an honest val_acc_after_recal (pruning.bn_recal); 0 turns it off. Training is unchanged.
    bn_recalibration_batches: int = BN_RECALIBRATION_BATCHES
    # Every pruned layer's width a multiple of it (8, 16: hardware-friendly); 1: any width.
    # Floors round up to a multiple; see pruning.prune.ROUND_TO. Absent in older files: 1.
    round_to: int = ROUND_TO

    def __post_init__(self) -> None:
        # Checked in this order, so the first error a file shows stays the same.
        self._check_settings()
        self._check_stages()
        require(
            self.distill is None or isinstance(self.distill, Distill),
            "distill",
            self.distill,
            "it must be null or a Distill (alpha, temperature)",
        )
        self._check_stage_distill()
        self._check_landing()

    def _check_settings(self) -> None:
        number_in("target_speedup", self.target_speedup, 1.0, MAX_SPEEDUP)
        positive_int("bn_recalibration_batches", self.bn_recalibration_batches)
        IMPORTANCES.check("importance", self.importance)
        RANKINGS.check("ranking", self.ranking)
        positive_int("min_channels", self.min_channels, minimum=1)
        number_in("min_channel_ratio", self.min_channel_ratio, 0.0, 1.0, low_open=False)
        positive_int("round_to", self.round_to, minimum=1)

    def _check_stages(self) -> None:
        """At least one Stage, with cumulative speed-ups that increase."""
        require(
            isinstance(self.stages, tuple) and len(self.stages) > 0,
            "stages",
            self.stages,
            "a schedule needs at least one stage (a non-empty tuple)",
        )
        require(
            all(isinstance(s, Stage) for s in self.stages),
            "stages",
            self.stages,
            "every entry must be a Stage",
        )
        for i in range(1, len(self.stages)):
            prev, cur = self.stages[i - 1].speedup, self.stages[i].speedup
            require(
                cur > prev,
                f"stages[{i}].speedup",
                cur,
                f"speed-ups are cumulative and must increase (stage {i - 1} reaches {prev})",
            )

    def _check_stage_distill(self) -> None:
        """A stage that distills takes the schedule's temperature, so the schedule needs one."""
        if self.distill is not None:
            return
        for i, stage in enumerate(self.stages):
            require(
                not stage.distill_alpha,
                f"stages[{i}].distill_alpha",
                stage.distill_alpha,
                "a distilling stage uses the schedule's distill.temperature: set the schedule's "
                "distill (alpha, temperature), or give this stage 0 or null",
            )

    def _check_landing(self) -> None:
        """The last stage ends on the target, and the floor alone does not keep it from landing."""
        last = self.stages[-1].speedup
        require(
            math.isclose(last, self.target_speedup, rel_tol=1e-9),
            "stages[-1].speedup",
            last,
            f"the last stage must end on target_speedup={self.target_speedup}",
        )
        cap = speedup_cap(self.min_channel_ratio)
        require(
            cap >= self.target_speedup,
            "min_channel_ratio",
            self.min_channel_ratio,
            f"a floor of {self.min_channel_ratio:.3g} x channels caps the speed-up near "
            f"{cap:.3g}x, below target_speedup={self.target_speedup}; lower it",
        )

    @property
    def total_epochs(self) -> int:
        sparse = self.sparse.epochs if self.sparse else 0
        return sparse + sum(s.epochs for s in self.stages)

    def importance_at(self, stage: int) -> str:
        """The importance stage `stage` (an index into stages) prunes with."""
        return self.stages[stage].importance or self.importance

    def distill_at(self, stage: int) -> Distill | None:
        """How stage `stage` (an index into stages) fine-tunes: None is plain cross-entropy."""
        alpha = self.stages[stage].distill_alpha
        if alpha is None or self.distill is None:
            return self.distill  # the schedule's (a set alpha needs a distill: __post_init__)
        return dataclasses.replace(self.distill, alpha=alpha) if alpha > 0 else None

    @property
    def distills(self) -> bool:
        """Whether any stage fine-tunes against the teacher (the unpruned baseline)."""
        return any(self.distill_at(i) is not None for i in range(len(self.stages)))

    def prune_options(self, stage: int | None = None) -> dict[str, Any]:
        """How stage `stage` (an index into stages; None: the schedule's settings) prunes:
        prune_to_speedup's keyword arguments."""
        return {
            "importance": self.importance if stage is None else self.importance_at(stage),
            "ranking": self.ranking,
            "min_channels": self.min_channels,
            "min_channel_ratio": self.min_channel_ratio,
            "round_to": self.round_to,
        }

    def summary(self) -> str:
        steps = " -> ".join(
            f"{s.speedup:.3g}x/{s.epochs}ep@{s.lr:g}{_overrides(s)}" for s in self.stages
        )
        sparse = f"sparse {self.sparse.epochs}ep, " if self.sparse else ""
        kd = f", KD a={self.distill.alpha:g} T={self.distill.temperature:g}" if self.distill else ""
        rounded = f", round_to {self.round_to}" if self.round_to != ROUND_TO else ""
        return f"{self.importance}/{self.ranking}, {sparse}{steps}{kd}{rounded}"


def _overrides(stage: Stage) -> str:
    """A stage's overrides in a summary: "[lamp, KD a=0.5]", "[no KD]"; "" when none."""
    parts = [stage.importance] if stage.importance else []
    if stage.distill_alpha is not None:
        parts.append(f"KD a={stage.distill_alpha:g}" if stage.distill_alpha else "no KD")
    return f"[{', '.join(parts)}]" if parts else ""


# ---------------------------------------------------------------- builders


def one_shot(
    target: float, epochs: int, lr: float = 0.01, lr_schedule: str = "step", **kwargs: Any
) -> Schedule:
    """Torch-Pruning's recipe: prune once to the target, then fine-tune."""
    return Schedule(target, (Stage(target, epochs, lr, lr_schedule),), **kwargs)


def log_equal(
    target: float,
    n_stages: int,
    epochs_per_stage: int,
    lr: float = 0.01,
    lr_schedule: str = "cosine",
    **kwargs: Any,
) -> Schedule:
    """N stages, each taking the same speed-up factor: target^(1/N) per stage."""
    positive_int("n_stages", n_stages, minimum=1)
    speedups = [target ** ((i + 1) / n_stages) for i in range(n_stages)]
    speedups[-1] = target
    stages = tuple(Stage(s, epochs_per_stage, lr, lr_schedule) for s in speedups)
    return Schedule(target, stages, **kwargs)


def geometric(
    target: float,
    n_stages: int,
    epochs_per_stage: int,
    decay: float = 0.5,
    lr: float = 0.01,
    lr_schedule: str = "cosine",
    **kwargs: Any,
) -> Schedule:
    """N stages whose log-speed-up shrinks by `decay` each stage: big cut first, then refine."""
    positive_int("n_stages", n_stages, minimum=1)
    number_in("decay", decay, 0.0, 10.0)
    weights = [decay**i for i in range(n_stages)]
    total, acc, speedups = sum(weights), 0.0, []
    for w in weights:
        acc += w
        speedups.append(target ** (acc / total))
    speedups[-1] = target
    stages = tuple(Stage(s, epochs_per_stage, lr, lr_schedule) for s in speedups)
    return Schedule(target, stages, **kwargs)


# ---------------------------------------------------------------- file format


def schedule_to_dict(schedule: Schedule) -> dict[str, Any]:
    """The `schedule` section; a stage's overrides only where set (files without stay as
    they were)."""
    return dataclasses.asdict(schedule) | {"stages": [_stage_to_dict(s) for s in schedule.stages]}


def _stage_to_dict(stage: Stage) -> dict[str, Any]:
    overrides = ("importance", "distill_alpha")
    return {
        k: v for k, v in dataclasses.asdict(stage).items() if v is not None or k not in overrides
    }


def schedule_from_dict(data: Any) -> Schedule:
    """Every key checked (with a did-you-mean) before any value is converted."""
    check_keys(Schedule, data, "schedule")
    data = dict(data)
    stages = data.pop("stages", None)
    if not isinstance(stages, list):
        raise ValueError(f"stages={stages!r} is invalid: it must be a list of stage mappings")
    data["stages"] = tuple(build_dataclass(Stage, s, f"stages[{i}]") for i, s in enumerate(stages))
    if data.get("sparse") is not None:
        data["sparse"] = build_dataclass(SparseTraining, data["sparse"], "sparse")
    if "training" in data:
        data["training"] = build_dataclass(Training, data["training"], "training")
    if data.get("distill") is not None:
        data["distill"] = build_dataclass(Distill, data["distill"], "distill")
    return build_dataclass(Schedule, data, "schedule")


@dataclass(frozen=True)
class _Document:
    """The top level of a schedule file; only its keys are used (for the unknown-key check)."""

    format: str
    version: int
    schedule: Any
    run: Any = None


def dump_document(
    schedule: Schedule,
    run: RunInfo | None = None,
    folder: Path | None = None,
    project: Path | None = None,
) -> dict[str, Any]:
    """The file's content; with `folder`, run's paths are written as a file there records them
    (see pruning.run_info), else as they are."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "schedule": schedule_to_dict(schedule),
    }
    if run is not None:
        if folder is not None:
            run = map_paths(run, lambda p: portable_path(p, folder, project))
        doc["run"] = run_to_dict(run)
    return doc


def save(
    path: str | Path,
    schedule: Schedule,
    run: RunInfo | None = None,
    *,
    portable: bool = True,
    project: Path | None = None,
) -> Path:
    """Write YAML (or JSON when the suffix is .json). Run's paths inside `project` (default:
    the working directory) are written relative to the file; `portable=False` keeps them as
    they are (a trial's bundle, which `export` rewrites for where it puts it)."""
    path = Path(path)
    doc = dump_document(schedule, run, path.parent if portable else None, project)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(doc, indent=2) + "\n")
    else:
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def parse_document(
    doc: Any, source: str = "<document>", folder: Path | None = None
) -> tuple[Schedule, RunInfo | None]:
    """(schedule, run section or None); relative paths in a version-2 run section are taken
    relative to `folder` (the file's folder)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{source} is not a prunetune schedule: expected 'format: {FORMAT}'")
    version = doc.get("version")
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"{source} has schedule format version {version!r}; this prunetune reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    try:
        check_keys(_Document, doc, "the file's top level")
        schedule = schedule_from_dict(doc.get("schedule"))
        run = None if doc.get("run") is None else run_from_dict(doc["run"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: {err}") from None
    # Migrating version 1: its `run` keys are a subset of RunInfo's (no checkpoint_sha256), and
    # its paths were absolute or relative to the working directory, so they are used as they are.
    if run is not None and folder is not None and version >= 2:
        run = map_paths(run, lambda p: located_path(p, folder))
    return schedule, run


def load(path: str | Path) -> tuple[Schedule, RunInfo | None]:
    """Read a schedule file (version 1 or 2); returns the schedule and its `run` section."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"schedule file {path} does not exist")
    text = path.read_text()
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {err}"
        ) from err
    return parse_document(doc, str(path), path.parent)
