"""Strategy `pbt`: Ray Tune's PopulationBasedTraining with prune -> fine-tune stages as its
intervals.

- Every trial runs space.max_stages stages (n_stages is not drawn), so the population's stage
  boundaries line up. Trials report their stage as PBT's time (trainables.trial.PBT_TIME) at
  every boundary but the last; the interval is 1 stage.
- Synchronous PBT: at each boundary all trials pause; those in the bottom
  `pbt.quantile_fraction` by val acc take a top trial's stage checkpoint (pruned structure,
  weights, run state and lineage) and a perturbed copy of its config, then every trial goes on.
- PBT perturbs only the per-stage keys split_<i>, epochs_<i>, lr_<i> (by a factor of
  `pbt.perturbation_factors`, or resampled with `pbt.resample_probability`), each clamped back
  into its range in the space. What they mean after stage k, so that every trial still lands
  on the target within its budget, is trainables/lineage.py's continue_schedule. The other
  keys (importance, distillation, total_epochs, ...) stay the donor's: fixed per lineage.
- The initial population is drawn at random (Ray's BasicVariantGenerator, seeded), the
  config's `points` first; PBT's own choices use Python's `random`, seeded once per search.

PBT compares val acc at equal stage index, which may be at different speed-ups (each trial
splits the target its own way); the front is still built from finished lineages only, on
the target.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from ray import tune
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.search.basic_variant import BasicVariantGenerator

from search.space import known_points, param_space
from trainables.lineage import PERTURBED
from trainables.point import keyed_dimensions
from trainables.trial import PBT_TIME

if TYPE_CHECKING:
    from search.config import ExperimentConfig, SpaceConfig


def population_space(config: ExperimentConfig) -> dict[str, Any]:
    """The Tune space with n_stages fixed to space.max_stages."""
    return param_space(config.space) | {"n_stages": config.space.max_stages}


def mutations(space: SpaceConfig) -> dict[str, Any]:
    """PBT's hyperparam_mutations: the per-stage keys, as Tune domains of their range."""
    domains = param_space(space)
    return {
        key: domains[key]
        for key, dim in keyed_dimensions(space.max_stages)
        if dim.name in PERTURBED
    }


def clamp(space: SpaceConfig):  # -> Callable[[dict], dict]
    """PBT's custom_explore_fn: each perturbed value back into its range (a factor of 1.2 on
    a share of 1.0, or on the largest lr, would leave the space)."""
    ranges = {
        key: dim.domain(space)
        for key, dim in keyed_dimensions(space.max_stages)
        if dim.name in PERTURBED
    }

    def explore(config: dict[str, Any]) -> dict[str, Any]:
        return config | {k: min(max(float(config[k]), lo), hi) for k, (lo, hi) in ranges.items()}

    return explore


def scheduler(config: ExperimentConfig) -> PopulationBasedTraining:
    random.seed(config.seed)  # PBT draws its donors and perturbations from `random`
    pbt = config.pbt
    return PopulationBasedTraining(
        time_attr=PBT_TIME,
        metric="val_acc",
        mode="max",
        perturbation_interval=1,
        hyperparam_mutations=mutations(config.space),
        custom_explore_fn=clamp(config.space),
        quantile_fraction=pbt.quantile_fraction,
        resample_probability=pbt.resample_probability,
        perturbation_factors=pbt.perturbation_factors,
        synch=True,
        # the last stage reports no PBT_TIME: a finished trial is never restarted
        require_attrs=False,
    )


def searcher(config: ExperimentConfig) -> BasicVariantGenerator:
    """The initial population: the config's points (checked to have max_stages stages), then
    random draws from the space."""
    return BasicVariantGenerator(
        points_to_evaluate=known_points(config) or None,
        max_concurrent=config.num_trials,
        random_state=config.seed,
    )


def tune_config(config: ExperimentConfig) -> tune.TuneConfig:
    return tune.TuneConfig(
        search_alg=searcher(config),
        scheduler=scheduler(config),
        num_samples=config.num_trials,
    )
