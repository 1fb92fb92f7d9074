"""The experiment config: one validated YAML file per search (`experiments/*.yaml`).

Everything is checked before Ray starts: unknown keys (with the closest valid key suggested),
wrong types and impossible values are errors that name the key. `resolve()` makes every path
absolute and fills the embedded defaults (local Ray, sqlite MLflow under the output folder).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pruning.compute import COSTS, DEFAULT_COST, CostObjective
from pruning.data import DataSpec
from pruning.importance import IMPORTANCES
from pruning.latency import LatencySettings
from pruning.latency_target import LatencyTarget, check_measured
from pruning.models import ModelSpec, build_model, example_input
from pruning.pretrain import apply_overrides
from pruning.prune import RANKINGS, ROUND_TO, floor_speedup
from pruning.run_info import ModelInfo, with_model_section
from pruning.schedule import DEFAULT_TEMPERATURE, MAX_SPEEDUP, MAX_TEMPERATURE, Training
from pruning.train import LR_SCHEDULES
from pruning.validate import build_dataclass, did_you_mean, number_in, positive_int, require
from search.objectives import DEFAULT_OBJECTIVES, Objective, check_objectives
from search.rungs import DEFAULT_RUNGS, RUNGS
from search.space import checked_points
from search.strategies import DEFAULT_STRATEGY, PbtConfig, check_pbt, check_strategy, migrate
from trainables.mlflow_models import LOG_MODELS, flavours
from trainables.point import DIMENSIONS, Dimension, min_channels_for

# MLflow tracking stores by URI scheme (a database's may name a driver: postgresql+psycopg2).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def _choices(name: str, values: Any, allowed: tuple[str, ...] | None = None) -> None:
    require(isinstance(values, tuple) and len(values) > 0, name, values, "a non-empty list")
    if allowed is not None:
        bad = [v for v in values if v not in allowed]
        require(not bad, name, values, f"unknown {bad}; valid: {', '.join(allowed)}")


@dataclass(frozen=True)
class SpaceConfig:
    """The schedules a search may draw. Every point ends exactly on the target speed-up."""

    max_stages: int = 3
    total_epochs: tuple[int, ...] = (2, 4, 6)  # the cost axis: fine-tune epochs per trial
    lr_min: float = 1e-3
    lr_max: float = 0.05
    lr_schedules: tuple[str, ...] = ("cosine", "step")
    importances: tuple[str, ...] = ("group_norm", "lamp")
    rankings: tuple[str, ...] = ("global",)
    min_channel_ratios: tuple[float, ...] = (0.0, 0.05, 0.1)
    sparse_epochs: tuple[int, ...] = (0,)  # 0: no sparse-training phase
    sparse_reg: float = 5e-4
    # Distillation from the unpruned model: 0 is none; one choice each fixes it.
    distill_alphas: tuple[float, ...] = (0.0,)
    distill_temperatures: tuple[float, ...] = (DEFAULT_TEMPERATURE,)
    round_tos: tuple[int, ...] = (ROUND_TO,)  # pruned widths' multiple; 1: any width

    def __post_init__(self) -> None:
        positive_int("space.max_stages", self.max_stages, minimum=1)
        _choices("space.total_epochs", self.total_epochs)
        for e in self.total_epochs:
            positive_int("space.total_epochs[]", e, minimum=0)  # 0: prune-only trials
        number_in("space.lr_min", self.lr_min, 0.0, 10.0)
        number_in("space.lr_max", self.lr_max, self.lr_min, 10.0, low_open=False)
        _choices("space.lr_schedules", self.lr_schedules, LR_SCHEDULES.names())
        _choices("space.importances", self.importances, IMPORTANCES.names())
        _choices("space.rankings", self.rankings, RANKINGS.names())
        _choices("space.min_channel_ratios", self.min_channel_ratios)
        for r in self.min_channel_ratios:
            number_in("space.min_channel_ratios[]", r, 0.0, 1.0, low_open=False)
        _choices("space.sparse_epochs", self.sparse_epochs)
        for e in self.sparse_epochs:
            positive_int("space.sparse_epochs[]", e)
        number_in("space.sparse_reg", self.sparse_reg, 0.0, 1.0)
        _choices("space.distill_alphas", self.distill_alphas)
        for a in self.distill_alphas:
            number_in("space.distill_alphas[]", a, 0.0, 1.0, low_open=False)
        _choices("space.distill_temperatures", self.distill_temperatures)
        for t in self.distill_temperatures:
            number_in("space.distill_temperatures[]", t, 0.0, MAX_TEMPERATURE)
        _choices("space.round_tos", self.round_tos)
        for r in self.round_tos:
            positive_int("space.round_tos[]", r, minimum=1)

    @property
    def budget(self) -> int:
        """Most epochs a trial can spend (sparse training included): ASHA's max_t."""
        return max(self.total_epochs) + max(self.sparse_epochs)


@dataclass(frozen=True)
class BaselineConfig:
    """A baseline checkpoint, or (when none) pretraining settings used once before the search."""

    checkpoint: str | None = None
    pretrain_epochs: int = 6
    pretrain_lr: float = 0.05

    def __post_init__(self) -> None:
        positive_int("baseline.pretrain_epochs", self.pretrain_epochs, minimum=1)
        number_in("baseline.pretrain_lr", self.pretrain_lr, 0.0, 10.0)


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0  # fractions share one card with no memory isolation

    def __post_init__(self) -> None:
        number_in("resources.cpu", self.cpu, 0.0, 1024.0)
        number_in("resources.gpu", self.gpu, 0.0, 64.0, low_open=False)


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str | None = None  # None: sqlite database under the output folder
    experiment: str | None = None  # None: the experiment's name
    # The MLflow model flavours each finished trial logs its model in (trainables.mlflow_models.
    # FLAVOURS): true, every one whose packages are installed; false, none; or a list of names.
    log_models: bool | tuple[str, ...] = LOG_MODELS

    def __post_init__(self) -> None:
        if self.tracking_uri is not None:
            _check_tracking_uri(self.tracking_uri)
        if isinstance(self.log_models, list):  # from YAML
            object.__setattr__(self, "log_models", tuple(self.log_models))
        if not isinstance(self.log_models, bool):
            flavours(self.log_models)  # checks the names, and that their extras are installed
        require(
            self.experiment is None
            or (isinstance(self.experiment, str) and self.experiment.strip() != ""),
            "mlflow.experiment",
            self.experiment,
            "a non-empty name, or null for the experiment's name",
        )

    @property
    def model_flavours(self) -> tuple[str, ...]:
        return flavours(self.log_models)


def _check_tracking_uri(uri: object) -> None:
    field_ = "mlflow.tracking_uri"
    schemes = ", ".join(TRACKING_SCHEMES)
    allowed = f"a URI such as sqlite:///path/mlflow.db or http://host:5000 ({schemes})"
    require(isinstance(uri, str) and "://" in uri, field_, uri, allowed)
    assert isinstance(uri, str)
    scheme, _, rest = uri.partition("://")
    base = scheme.split("+")[0].lower()
    hint = did_you_mean(base, TRACKING_SCHEMES)
    require(base in TRACKING_SCHEMES, field_, uri, f"unknown scheme {scheme!r}; {hint}{allowed}")
    if base in ("http", "https"):
        require(
            rest.split("/")[0] != "", field_, uri, "an http(s) URI needs a host: http://host:5000"
        )
    if base == "sqlite":
        require(rest.startswith("/") and rest != "/", field_, uri, "sqlite:///path/to/mlflow.db")


@dataclass(frozen=True)
class AshaConfig:
    enabled: bool = False
    grace_epochs: int = 1  # the first rung of rungs: epochs (unused by stages)
    reduction_factor: int = 3
    # Where trials are judged (search.stage_rungs.RUNGS): epochs (Ray's ASHA on val_acc) or
    # stages (every stage but the last, by non-dominated rank on val_acc and cost so far).
    rungs: str = DEFAULT_RUNGS

    def __post_init__(self) -> None:
        require(isinstance(self.enabled, bool), "asha.enabled", self.enabled, "true or false")
        positive_int("asha.grace_epochs", self.grace_epochs, minimum=1)
        positive_int("asha.reduction_factor", self.reduction_factor, minimum=2)
        RUNGS.check("asha.rungs", self.rungs)


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    target_speedup: float = 8.84
    # Or `target: {latency_speedup: S}`: the last stage lands on a measured latency speed-up
    # (pruning.latency_target), its MACs speed-up found in each trial; not both.
    target: LatencyTarget | None = None
    data: DataSpec = field(default_factory=DataSpec)
    # The model registry's architecture, width, classes (null: the data's) and kwargs. Files
    # written before the registry gave a top-level `width` (VGG19's): read as model.width.
    model: ModelInfo = field(default_factory=ModelInfo)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    training: Training = field(default_factory=Training)
    reference_trial: bool = True  # Torch-Pruning's recipe as the first trial
    # The cost objective beside accuracy (pruning.compute.COSTS): compute (TMACs) or epochs.
    # Budgets (space.total_epochs, asha.grace_epochs) stay in epochs either way.
    cost: str = DEFAULT_COST
    # What the search ranks by (search.objectives.OBJECTIVES): val_acc and cost, latency, or all
    # three; the front, the --pick rules and the plots follow.
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    # Each trial times the unpruned model and every stage's (pruning.latency.LatencySettings);
    # `latency: null` or latency.enabled: false measures nothing.
    latency: LatencySettings = field(default_factory=LatencySettings)
    points: tuple[dict[str, Any], ...] = ()  # known schedules to try first (trial-config keys)
    # How trials are chosen (search.strategies.STRATEGIES); files that say `sampler` still read.
    strategy: str = DEFAULT_STRATEGY
    n_startup_trials: int | None = None  # None: max(2, min(10, num_trials // 4))
    pbt: PbtConfig = field(default_factory=PbtConfig)  # strategy: pbt's settings
    seed: int = 0
    num_trials: int = 8
    max_concurrent: int = 2
    resources: Resources = field(default_factory=Resources)
    max_failures: int = 0
    asha: AshaConfig = field(default_factory=AshaConfig)
    ray_address: str | None = None  # None: start a local Ray cluster
    storage_path: str | None = None  # None: <out>/ray
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    out: str | None = None  # None: runs/<name>
    device: str = "auto"

    def __post_init__(self) -> None:
        require(
            isinstance(self.name, str) and self.name.replace("-", "").replace("_", "").isalnum(),
            "name",
            self.name,
            "letters, digits, '-' and '_' only",
        )
        number_in("target_speedup", self.target_speedup, 1.0, MAX_SPEEDUP)
        require(
            isinstance(self.model, ModelInfo) and self.model.width is not None,
            "model.width",
            getattr(self.model, "width", self.model),
            "a number: the channel multiplier the search's model is built with",
        )
        check_strategy(self)
        COSTS.check("cost", self.cost)
        require(isinstance(self.latency, LatencySettings), "latency", self.latency, "a mapping")
        check_objectives(self.objectives, self.latency.enabled)
        positive_int("seed", self.seed)
        positive_int("num_trials", self.num_trials, minimum=1)
        positive_int("max_concurrent", self.max_concurrent, minimum=1)
        positive_int("max_failures", self.max_failures)
        _check_asha(self)
        require(
            self.target is None or isinstance(self.target, LatencyTarget),
            "target",
            self.target,
            "null, or a mapping {latency_speedup: S}",
        )
        check_measured(self.target, self.latency)
        if self.target is None:  # a latency target's reach is measured in the trial
            _check_reachable(self)
        require(
            isinstance(self.reference_trial, bool),
            "reference_trial",
            self.reference_trial,
            "true or false",
        )
        if self.reference_trial:
            _check_reference(self.space)
        require(isinstance(self.points, tuple), "points", self.points, "a list of mappings")
        checked_points(self)  # every key known, every value of its type and in the space
        check_pbt(self)

    @property
    def cost_objective(self) -> CostObjective:
        return COSTS[self.cost]

    @property
    def ranked_by(self) -> tuple[Objective, ...]:
        """The objectives, resolved (search.objectives)."""
        return check_objectives(self.objectives, self.latency.enabled)

    @property
    def model_spec(self) -> ModelSpec:
        """The registry's model the search prunes (classes: the data's, as far as the config
        knows them; an image folder's are counted when it is read)."""
        return self.model.spec(_num_classes(self.data), self.data.image_size)

    @property
    def out_dir(self) -> Path:
        return Path(self.out or f"runs/{self.name}").expanduser().resolve()

    @property
    def tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.out_dir / 'mlflow.db'}"

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.name

    @property
    def storage(self) -> Path:
        return Path(self.storage_path or self.out_dir / "ray").expanduser().resolve()

    def resolve(self) -> ExperimentConfig:
        """Every path absolute, so trials (which run in their own folders) find them."""

        def absolute(p: str | None) -> str | None:
            return str(Path(p).expanduser().resolve()) if p else p

        data = dataclasses.replace(self.data, root=absolute(self.data.root))
        baseline = dataclasses.replace(self.baseline, checkpoint=absolute(self.baseline.checkpoint))
        return dataclasses.replace(
            self,
            data=data,
            baseline=baseline,
            out=str(self.out_dir),
            storage_path=str(self.storage),
        )


def _space_field(dim: Dimension) -> str:
    """The space setting(s) a dimension is drawn from, as the config file names them."""
    source = dim.source
    names = [source] if isinstance(source, str) else [s for s in source if isinstance(s, str)]
    return "/".join(f"space.{n}" for n in names) or dim.name


def _check_reference(space: SpaceConfig) -> None:
    """The reference trial (Torch-Pruning's one-shot recipe) must be a point of the space, or
    Optuna cannot be told its result."""
    for dim in DIMENSIONS:
        value = dim.reference_value(space)
        require(
            dim.problem(value, space) is None,
            _space_field(dim),
            dim.domain(space),
            f"reference_trial needs {dim.name}={value!r} in it (or set reference_trial: false)",
        )


def _check_asha(config: ExperimentConfig) -> None:
    """ASHA on epochs stops trials at grace_epochs of the budget and later: the space must let
    a trial spend that much (a prune-only space, total_epochs [0], has nothing to stop early).
    On stages, a trial needs a stage before its last."""
    budget = config.space.budget
    if config.asha.enabled and config.asha.rungs == "stages":
        require(
            config.space.max_stages >= 2,
            "space.max_stages",
            config.space.max_stages,
            "asha.rungs: stages judges trials at every stage but their last: it needs at least "
            "2 stages (or set asha.rungs: epochs)",
        )
        return
    require(
        not config.asha.enabled or config.asha.grace_epochs <= budget,
        "asha.grace_epochs",
        config.asha.grace_epochs,
        f"ASHA needs it at most the most epochs a trial can spend (max of space.total_epochs "
        f"+ max of space.sparse_epochs = {budget}); lower it, widen the space, or set "
        "asha.enabled: false",
    )


def _check_reachable(config: ExperimentConfig) -> None:
    """The target must be reachable under the tightest floor of the space (its largest
    min_channel_ratio, at each of its round_tos: floors round up to their multiple) on this
    model, or every trial that draws it fails."""
    ratio = max(config.space.min_channel_ratios)
    spec = config.model_spec
    key = json.dumps(spec.to_dict(), sort_keys=True)
    cap, round_to = min((_floor_speedup(key, ratio, r), r) for r in config.space.round_tos)
    rounded = f", rounded up to a multiple of round_to={round_to}," if round_to > 1 else ""
    require(
        config.target_speedup <= cap,
        "target_speedup",
        config.target_speedup,
        f"the channel floor of min_channel_ratio={ratio} (and at least "
        f"{min_channels_for(ratio)} channels a layer{rounded}) lets {spec.describe()} reach at "
        f"most {cap:.3g}x; lower the target, or the largest of space.min_channel_ratios"
        f"{' or space.round_tos' if round_to > 1 else ''}",
    )


def _num_classes(data: DataSpec) -> int:
    # The classifier is never pruned and well under 1% of the MACs: its size barely moves the
    # cap, so an image folder's class count (unknown until it is read) is taken as data's.
    return {"cifar10": 10, "cifar100": 100}.get(data.name, data.num_classes)


@functools.lru_cache(maxsize=32)
def _floor_speedup(spec_json: str, ratio: float, round_to: int) -> float:
    """Builds the registry's unpruned model (a second at most for ResNet-50): cached by the
    spec (as JSON, since kwargs may hold lists), as a config is validated again on every
    dataclasses.replace."""
    spec = ModelSpec.from_dict(json.loads(spec_json))
    model = build_model(spec)
    return floor_speedup(model, example_input(spec), min_channels_for(ratio), ratio, round_to)


_SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "baseline": BaselineConfig,
    "space": SpaceConfig,
    "training": Training,
    "resources": Resources,
    "mlflow": MlflowConfig,
    "asha": AshaConfig,
    "latency": LatencySettings,
    "pbt": PbtConfig,
}
_LISTS = {f.name for f in dataclasses.fields(SpaceConfig) if "tuple" in str(f.type)}


def _latency_target(raw: dict[str, Any]) -> LatencyTarget | None:
    """The `target` section: absent or null (the MACs target_speedup), or {latency_speedup}."""
    section = raw.get("target")
    if section is None:
        return None
    require(
        "target_speedup" not in raw,
        "target_speedup",
        raw.get("target_speedup"),
        "give one target: target_speedup (a MACs speed-up) or target.latency_speedup (a "
        "measured latency speed-up), not both",
    )
    return build_dataclass(LatencyTarget, section, "target")


def config_from_dict(raw: Any, source: str = "<config>") -> ExperimentConfig:
    if not isinstance(raw, dict):
        raise ValueError(f"{source} must hold a mapping of settings")
    raw = dict(raw)
    try:
        raw = migrate(with_model_section(raw))
        raw["target"] = _latency_target(raw)
        if "latency" in raw and raw["latency"] is None:  # `latency: null`: not measured
            raw["latency"] = {"enabled": False}
        for key, cls in _SECTIONS.items():
            section = raw.get(key) or {}
            if key == "latency" and isinstance(section, dict):
                batches = section.get("batches")
                section = section | (
                    {"batches": tuple(batches)} if isinstance(batches, list) else {}
                )
            if key == "pbt" and isinstance(section, dict):
                factors = section.get("perturbation_factors")
                if isinstance(factors, list):
                    section = section | {"perturbation_factors": tuple(factors)}
            if key == "space" and isinstance(section, dict):
                section = {
                    k: tuple(v) if k in _LISTS and isinstance(v, list) else v
                    for k, v in section.items()
                }
            raw[key] = build_dataclass(cls, section, key)
        points = raw.get("points") or ()
        raw["points"] = tuple(points) if isinstance(points, list) else points
        if isinstance(raw.get("objectives"), list):
            raw["objectives"] = tuple(raw["objectives"])
        return build_dataclass(ExperimentConfig, raw, "experiment")
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    raw = apply_overrides(raw, list(overrides)) if isinstance(raw, dict) else raw
    return config_from_dict(raw, str(path)).resolve()


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """Plain data (lists, not tuples) for YAML, MLflow params and the parent run's artifact."""
    plain = _plain(dataclasses.asdict(config)) | {"model": config.model.to_dict()}
    if config.target is not None:  # one target, so the file reads back
        del plain["target_speedup"]
    return yaml.safe_load(yaml.safe_dump(plain))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
