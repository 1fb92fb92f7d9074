"""The Tune search space and the searcher (Optuna, on the config's objectives; its sampler is
the config's strategy, search/strategies.py).

The dimensions themselves are one table, trainables.point.TrialPoint; this module turns them
into Tune domains, and names the points Optuna is told first (the reference recipe, `points`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pruning.schedule import Schedule
from search.strategies import make_sampler
from trainables.point import Dimension, TrialPoint, keyed_dimensions, point_from_user
from trainables.point import reference_point as reference_of_space

if TYPE_CHECKING:  # search.config imports checked_points from here
    from ray.tune.search import ConcurrencyLimiter

    from search.config import ExperimentConfig, SpaceConfig

# Ray and Optuna are imported by the functions that build Tune's space and searcher, not here:
# search.config (so `prunetune search --dry-run` and a config's errors) reads this module.


def _tune_domain(dim: Dimension, space: SpaceConfig) -> Any:
    from ray import tune

    domain = dim.domain(space)
    if dim.kind == "int":
        return tune.randint(domain[0], domain[1] + 1)  # upper bound exclusive
    if dim.kind == "choice":
        return tune.choice(list(domain))
    if dim.kind == "uniform":
        return tune.uniform(*domain)
    return tune.loguniform(*domain)


def param_space(space: SpaceConfig) -> dict[str, Any]:
    return {key: _tune_domain(dim, space) for key, dim in keyed_dimensions(space.max_stages)}


def describe_space(space: SpaceConfig) -> dict[str, str]:
    """Readable dimensions, for --dry-run and the parent run's artifact; a per-stage dimension
    is one line (`split_0..2`)."""
    k = space.max_stages
    return {
        (f"{dim.name}_0..{k - 1}" if dim.per_stage else key): dim.describe(space)
        for key, dim in keyed_dimensions(1)
    }


def reference_point(config: ExperimentConfig) -> dict[str, Any]:
    """Torch-Pruning's recipe as Tune's flat trial config."""
    return reference_of_space(config.space).to_config()


def is_reference(trial_config: dict[str, Any] | None, config: ExperimentConfig) -> bool:
    return bool(trial_config) and reference_point(config).items() <= trial_config.items()


def trial_schedule(trial_config: dict[str, Any], config: ExperimentConfig) -> Schedule:
    """The schedule a trial of this search ran, from Tune's flat trial config."""
    point = TrialPoint.from_config(trial_config)
    return point.schedule(config.target_speedup, config.training, config.space.sparse_reg)


def checked_points(config: ExperimentConfig) -> list[TrialPoint]:
    """The experiment's `points`, each completed from the reference recipe and checked against
    the space (errors name points[i].key)."""
    base = reference_of_space(config.space)
    return [
        point_from_user(raw, base, config.space, f"points[{i}]")
        for i, raw in enumerate(config.points)
    ]


def known_points(config: ExperimentConfig) -> list[dict[str, Any]]:
    """What Optuna is told to try first: the reference recipe and the config's `points`."""
    points = [reference_point(config)] if config.reference_trial else []
    return points + [p.to_config() for p in checked_points(config)]


def make_searcher(config: ExperimentConfig, storage_url: str) -> ConcurrencyLimiter:
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from search.optuna_searcher import FinishedOnlyOptunaSearch

    points = known_points(config) or None
    searcher = FinishedOnlyOptunaSearch(
        metric=[o.metric for o in config.ranked_by],  # the config's objectives
        mode=[o.mode for o in config.ranked_by],
        points_to_evaluate=points,
        sampler=make_sampler(config),
        storage=optuna.storages.RDBStorage(storage_url),
        study_name=config.name,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=config.max_concurrent)
