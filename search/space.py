"""The Tune search space and the searcher (Optuna, two objectives)."""

from __future__ import annotations

from typing import Any

import optuna
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from search.config import ExperimentConfig, SpaceConfig
from trainables.schedule_config import reference_config

OBJECTIVES = {"val_acc": "max", "cost": "min"}  # accuracy after the last stage; epochs spent
SHARE_RANGE = (0.2, 1.0)  # a stage's share of log speed-up / epochs: at most 5x another's


def param_space(space: SpaceConfig) -> dict[str, Any]:
    params: dict[str, Any] = {
        "n_stages": tune.randint(1, space.max_stages + 1),  # upper bound exclusive
        "total_epochs": tune.choice(list(space.total_epochs)),
        "lr_schedule": tune.choice(list(space.lr_schedules)),
        "importance": tune.choice(list(space.importances)),
        "ranking": tune.choice(list(space.rankings)),
        "min_channel_ratio": tune.choice(list(space.min_channel_ratios)),
        "sparse_epochs": tune.choice(list(space.sparse_epochs)),
    }
    for i in range(space.max_stages):
        params[f"split_{i}"] = tune.uniform(*SHARE_RANGE)
        params[f"epochs_{i}"] = tune.uniform(*SHARE_RANGE)
        params[f"lr_{i}"] = tune.loguniform(space.lr_min, space.lr_max)
    return params


def describe_space(space: SpaceConfig) -> dict[str, str]:
    """Readable dimensions, for --dry-run and the parent run's artifact."""
    low, high = SHARE_RANGE
    k = space.max_stages
    return {
        "n_stages": f"integer in [1, {k}]",
        "total_epochs": f"one of {list(space.total_epochs)} (the cost objective)",
        "lr_schedule": f"one of {list(space.lr_schedules)}",
        "importance": f"one of {list(space.importances)}",
        "ranking": f"one of {list(space.rankings)}",
        "min_channel_ratio": f"one of {list(space.min_channel_ratios)}",
        "sparse_epochs": f"one of {list(space.sparse_epochs)}",
        f"split_0..{k - 1}": f"uniform in [{low}, {high}]: stage share of log(target speed-up)",
        f"epochs_0..{k - 1}": f"uniform in [{low}, {high}]: stage share of total_epochs",
        f"lr_0..{k - 1}": f"log-uniform in [{space.lr_min}, {space.lr_max}]",
    }


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # The space is static (per-stage keys always drawn), so multivariate TPE models the
        # interactions between stages without falling back to random sampling.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def reference_point(config: ExperimentConfig) -> dict[str, Any]:
    return reference_config(config.space.max_stages, max(config.space.total_epochs))


def known_points(config: ExperimentConfig) -> list[dict[str, Any]]:
    """The reference recipe and the config's `points`, each completed from the reference."""
    base = reference_point(config)
    valid = set(param_space(config.space))
    points = [base] if config.reference_trial else []
    for i, point in enumerate(config.points):
        if not isinstance(point, dict):
            raise ValueError(f"points[{i}] must be a mapping of trial-config keys")
        unknown = sorted(set(point) - valid)
        if unknown:
            raise ValueError(f"points[{i}]: unknown key(s) {unknown}; valid: {sorted(valid)}")
        _check_in_space(config.space, base | point, f"points[{i}]")
        points.append(base | point)
    return points


def _check_in_space(space: SpaceConfig, point: dict[str, Any], where: str) -> None:
    choices = {
        "total_epochs": space.total_epochs,
        "lr_schedule": space.lr_schedules,
        "importance": space.importances,
        "ranking": space.rankings,
        "min_channel_ratio": space.min_channel_ratios,
        "sparse_epochs": space.sparse_epochs,
    }
    for key, allowed in choices.items():
        if point[key] not in allowed:
            raise ValueError(f"{where}: {key}={point[key]!r} is not in the space {list(allowed)}")
    if not 1 <= point["n_stages"] <= space.max_stages:
        raise ValueError(f"{where}: n_stages={point['n_stages']} is outside 1..{space.max_stages}")


def make_searcher(config: ExperimentConfig, storage_url: str) -> ConcurrencyLimiter:
    points = known_points(config) or None
    searcher = OptunaSearch(
        metric=list(OBJECTIVES),
        mode=list(OBJECTIVES.values()),
        points_to_evaluate=points,
        sampler=make_sampler(config.sampler, config.seed),
        storage=optuna.storages.RDBStorage(storage_url),
        study_name=config.name,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=config.max_concurrent)
