"""A trial's point in the search space, typed, and the one table of the space's dimensions.

`TrialPoint`'s fields ARE the table: each field carries its `Dimension` (how it is drawn, from
which setting of the experiment's `space`, its value in Torch-Pruning's recipe, what it means).
The Tune/Optuna space (search/space.py), the `--dry-run` description, the checking of the
experiment file's `points`, the reference recipe and the trial's MLflow params all read it, so a
new dimension is one new field here.

Per-stage dimensions are drawn for all `space.max_stages` stages, as `<name>_<i>` keys, and only
the first `n_stages` are used: the space stays static, so NSGA-II and GP samplers do not fall back
to random sampling on conditional parameters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pruning.prune import MIN_CHANNELS, ROUND_TO
from pruning.schedule import (
    DEFAULT_TEMPERATURE,
    Distill,
    Schedule,
    SparseTraining,
    Stage,
    Training,
    schedule_to_dict,
)
from pruning.validate import did_you_mean, require

SHARE_RANGE = (0.2, 1.0)  # a stage's share of log speed-up / epochs: at most 5x another's
LARGEST = "the largest choice"  # a reference value: the largest of the space's choices

# How a dimension is drawn. "int": an integer in [1, space.<source>]; "choice": one of
# space.<source>; "uniform" / "loguniform": a number in [low, high], where `source` is either the
# fixed (low, high) or the names of the two space settings that hold them.
Kind = Literal["int", "choice", "uniform", "loguniform"]


@dataclass(frozen=True)
class Dimension:
    """One row of the table: one axis of the search space (per stage: one axis a stage)."""

    kind: Kind
    value_type: type  # int, float or str
    source: str | tuple[str, str] | tuple[float, float]
    reference: Any  # its value in Torch-Pruning's one-shot recipe (LARGEST: the largest choice)
    help: str
    per_stage: bool = False
    # The value of a trial config that lacks the key (one from a search run before this
    # dimension existed); None: the key is required.
    absent: Any = None
    name: str = ""  # the TrialPoint field; filled in from it

    def keys(self, max_stages: int) -> list[str]:
        return [f"{self.name}_{i}" for i in range(max_stages)] if self.per_stage else [self.name]

    def domain(self, space: Any) -> tuple[Any, ...]:
        """The choices ("choice"), or (low, high) for the others, in this `space` (a
        search.config.SpaceConfig: trainables cannot import it, so it is read by name)."""
        if self.kind == "choice":
            return tuple(getattr(space, str(self.source)))
        if self.kind == "int":
            return (1, getattr(space, str(self.source)))
        low, high = self.source
        return (getattr(space, low), getattr(space, high)) if isinstance(low, str) else (low, high)

    def describe(self, space: Any) -> str:
        domain = self.domain(space)
        text = {
            "int": f"integer in [{domain[0]}, {domain[-1]}]",
            "choice": f"one of {list(domain)}",
            "uniform": f"uniform in [{domain[0]}, {domain[-1]}]",
            "loguniform": f"log-uniform in [{domain[0]}, {domain[-1]}]",
        }[self.kind]
        return f"{text}: {self.help}"

    def reference_value(self, space: Any) -> Any:
        return max(self.domain(space)) if self.reference == LARGEST else self.reference

    def problem(self, value: object, space: Any) -> str | None:
        """Why a user-given value (an experiment file's `points`) is not a value of this
        dimension in `space`: wrong type or out of the space. None when it is one."""
        domain = self.domain(space)
        if self.value_type is str:
            ok = isinstance(value, str)
        else:  # YAML numbers; a bool is not one, and an int dimension takes no 2.0
            allowed = (int,) if self.value_type is int else (int, float)
            ok = isinstance(value, allowed) and not isinstance(value, bool)
            ok = ok and math.isfinite(value)  # type: ignore[arg-type]
        if self.kind == "choice":
            if ok and value in domain:
                return None
            hint = did_you_mean(value, [str(c) for c in domain]) if isinstance(value, str) else ""
            return f"{hint}it must be one of {list(domain)}"
        if ok and domain[0] <= value <= domain[-1]:  # type: ignore[operator]
            return None
        noun = "an integer" if self.value_type is int else "a number"
        return f"it must be {noun} in [{domain[0]}, {domain[-1]}]"


def min_channels_for(min_channel_ratio: float) -> int:
    """The min_channels that goes with a ratio: a ratio of 0 is no floor at all (Torch-Pruning's
    recipe: 1 channel), any other keeps at least MIN_CHANNELS too."""
    return MIN_CHANNELS if min_channel_ratio > 0 else 1


def _dim(
    kind: Kind,
    type_: type,
    source: str | tuple[str, str] | tuple[float, float],
    reference: Any,
    help: str,
    per_stage: bool = False,
    absent: Any = None,
) -> Any:
    dim = Dimension(kind, type_, source, reference, help, per_stage, absent)
    return field(metadata={"dimension": dim})


@dataclass(frozen=True)
class TrialPoint:
    """What the searcher draws for one trial. Per-stage fields hold one value per stage up to
    space.max_stages; the first n_stages are used."""

    n_stages: int = _dim("int", int, "max_stages", 1, "prune -> fine-tune stages")
    total_epochs: int = _dim(
        "choice", int, "total_epochs", LARGEST, "fine-tune epochs of the trial (its budget)"
    )
    lr_schedule: str = _dim("choice", str, "lr_schedules", "step", "LR schedule of every stage")
    importance: str = _dim("choice", str, "importances", "group_norm", "channel importance")
    ranking: str = _dim(
        "choice", str, "rankings", "global", "rank channels across all layers or per layer"
    )
    min_channel_ratio: float = _dim(
        "choice", float, "min_channel_ratios", 0.0, "per-layer floor, a fraction of its channels"
    )
    sparse_epochs: int = _dim(
        "choice", int, "sparse_epochs", 0, "sparse-training epochs before the first prune"
    )
    # A dimension with one choice costs the searcher nothing: Optuna does not sample a
    # single-valued distribution, so adding these left every earlier search's draws unchanged.
    distill_alpha: float = _dim(
        "choice",
        float,
        "distill_alphas",
        0.0,
        "weight of distillation from the unpruned model (0: none, plain cross-entropy)",
        absent=0.0,
    )
    distill_temperature: float = _dim(
        "choice",
        float,
        "distill_temperatures",
        LARGEST,
        "distillation temperature T (unused when distill_alpha is 0)",
        absent=DEFAULT_TEMPERATURE,
    )
    round_to: int = _dim(
        "choice",
        int,
        "round_tos",
        ROUND_TO,
        "every pruned width a multiple of it (1: any width)",
        absent=ROUND_TO,
    )
    split: tuple[float, ...] = _dim(
        "uniform", float, SHARE_RANGE, 1.0, "stage share of log(target speed-up)", per_stage=True
    )
    epochs: tuple[float, ...] = _dim(
        "uniform", float, SHARE_RANGE, 1.0, "stage share of total_epochs", per_stage=True
    )
    lr: tuple[float, ...] = _dim(
        "loguniform", float, ("lr_min", "lr_max"), 0.01, "stage fine-tune LR", per_stage=True
    )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialPoint:
        """Tune's flat trial config (`split_0`, ...) -> a point; values converted to their type."""
        values: dict[str, Any] = {}
        for dim in DIMENSIONS:
            if dim.per_stage:
                stages = _count_stages(config, dim.name)
                values[dim.name] = tuple(dim.value_type(config[k]) for k in dim.keys(stages))
            elif dim.name not in config and dim.absent is not None:
                values[dim.name] = dim.absent
            else:
                values[dim.name] = dim.value_type(config[dim.name])
        return cls(**values)

    def to_config(self) -> dict[str, Any]:
        """The flat trial config, keys in the order Tune's space draws them."""
        flat = {d.name: getattr(self, d.name) for d in DIMENSIONS if not d.per_stage}
        staged = [d for d in DIMENSIONS if d.per_stage]
        for i in range(len(self.split)):
            flat |= {f"{d.name}_{i}": getattr(self, d.name)[i] for d in staged}
        return flat

    def schedule(self, target: float, training: Training, sparse_reg: float) -> Schedule:
        """The schedule this point stands for; its last stage lands exactly on `target`."""
        n = self.n_stages
        if n < 1:
            raise ValueError(f"n_stages={n} is invalid: it must be >= 1")
        speedups = split_speedups(target, list(self.split[:n]))
        epochs = split_epochs(self.total_epochs, list(self.epochs[:n]))
        stages = tuple(
            Stage(s, e, lr, self.lr_schedule)
            for s, e, lr in zip(speedups, epochs, self.lr[:n], strict=True)
        )
        return Schedule(
            target_speedup=target,
            stages=stages,
            importance=self.importance,
            ranking=self.ranking,
            min_channels=min_channels_for(self.min_channel_ratio),
            min_channel_ratio=self.min_channel_ratio,
            sparse=SparseTraining(self.sparse_epochs, sparse_reg) if self.sparse_epochs else None,
            training=training,
            distill=self.distill(),
            round_to=self.round_to,
        )

    def distill(self) -> Distill | None:
        """Distillation as the schedule states it: an alpha of 0 is none at all (no teacher)."""
        if self.distill_alpha == 0:
            return None
        return Distill(self.distill_alpha, self.distill_temperature)


DIMENSIONS: tuple[Dimension, ...] = tuple(
    dataclasses.replace(f.metadata["dimension"], name=f.name)
    for f in dataclasses.fields(TrialPoint)
)


def _count_stages(config: Mapping[str, Any], name: str) -> int:
    n = 0
    while f"{name}_{n}" in config:
        n += 1
    return n


def keyed_dimensions(max_stages: int) -> Iterator[tuple[str, Dimension]]:
    """(key, dimension) for every key of the flat trial config, in the order Tune draws them:
    the scalar dimensions, then split_i, epochs_i, lr_i stage by stage."""
    for dim in DIMENSIONS:
        if not dim.per_stage:
            yield dim.name, dim
    for i in range(max_stages):
        for dim in DIMENSIONS:
            if dim.per_stage:
                yield f"{dim.name}_{i}", dim


def reference_point(space: Any) -> TrialPoint:
    """Torch-Pruning's recipe as a point of the space: one shot, global group-norm, no floor,
    then fine-tune for the largest epoch budget with step LR (x0.1 at 60% and 80%) from 0.01."""
    values = {
        d.name: (d.reference_value(space),) * space.max_stages
        if d.per_stage
        else d.reference_value(space)
        for d in DIMENSIONS
    }
    return TrialPoint(**values)


def point_from_user(raw: object, base: TrialPoint, space: Any, where: str) -> TrialPoint:
    """An experiment file's partial point: every key a known one, every value of the right type
    and in the space; the keys it leaves out come from `base` (the reference recipe)."""
    require(isinstance(raw, dict), where, raw, "it must be a mapping of trial-config keys")
    assert isinstance(raw, dict)
    dims = dict(keyed_dimensions(space.max_stages))
    staged = {d.name for d in DIMENSIONS if d.per_stage}
    last = space.max_stages - 1
    for key in raw:
        if key in staged:  # a per-stage name on its own: which stage?
            hint = f"{key} is per stage: give {key}_0 .. {key}_{last}. "
        else:
            hint = did_you_mean(key, dims)
        if key not in dims:
            raise ValueError(f"{where}: unknown key {key!r}; {hint}valid keys: {', '.join(dims)}")
    config = base.to_config() | raw
    for key, dim in dims.items():
        problem = dim.problem(config[key], space)
        given = "" if key in raw else " (the reference recipe's value: give one in the point)"
        require(problem is None, f"{where}.{key}", config[key], f"{problem}{given}")
    return TrialPoint.from_config(config)


def split_speedups(target: float, shares: list[float]) -> list[float]:
    """Cumulative speed-ups: stage i takes a share of log(target); the last lands exactly."""
    total, acc, speedups = sum(shares), 0.0, []
    for share in shares:
        acc += share
        speedups.append(math.exp(math.log(target) * acc / total))
    speedups[-1] = target
    return speedups


def split_epochs(total: int, shares: list[float]) -> list[int]:
    """Integer epochs per stage summing exactly to `total` (largest-remainder rounding)."""
    raw = [total * s / sum(shares) for s in shares]
    epochs = [math.floor(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: raw[i] - epochs[i], reverse=True)
    for i in by_remainder[: total - sum(epochs)]:
        epochs[i] += 1
    return epochs


def flat_params(schedule: Schedule, point: TrialPoint) -> dict[str, Any]:
    """A trial's MLflow params: the schedule it ran (stage_1.speedup, training.batch_size, ...,
    n_stages, total_epochs: every epoch spent) and the point drawn (point.split_0, ...)."""
    flat: dict[str, Any] = {}
    for key, value in schedule_to_dict(schedule).items():
        if key == "stages":
            for i, stage in enumerate(value):
                flat |= {f"stage_{i + 1}.{k}": v for k, v in stage.items()}
        elif isinstance(value, dict):
            flat |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            flat[key] = value
    flat |= {"n_stages": len(schedule.stages), "total_epochs": schedule.total_epochs}
    return flat | {f"point.{k}": v for k, v in point.to_config().items()}
