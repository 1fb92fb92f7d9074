"""Strategy `pbt`: Ray Tune's PopulationBasedTraining with prune -> fine-tune stages as its
intervals.

- Every trial runs space.max_stages stages (n_stages is not drawn), so the population's stage
  boundaries line up. Trials report their stage as PBT's time (trainables.trial.PBT_TIME) at
  every boundary but the last; the interval is 1 stage.
- Synchronous PBT: at each boundary all trials pause; those in the bottom
  `pbt.quantile_fraction` by val acc take a top trial's stage checkpoint (pruned structure,
  weights, run state and lineage) and a perturbed copy of its config, then every trial goes on.
- PBT perturbs the per-stage keys split_<i>, epochs_<i>, lr_<i> (by a factor of
  `pbt.perturbation_factors`, or resampled with `pbt.resample_probability`), each clamped back
  into its range in the space, and `importance` and `distill_alpha` where the space offers
  more than one choice (Ray's PBT shifts a list's value to a neighbour, or resamples it with
  the same probability). What they mean after stage k, so that every trial still lands on the
  target within its budget, is trainables/lineage.py's continue_schedule: the stages still to
  run take the perturbed importance and distillation weight as their own. The other keys
  (ranking, floors, round_to, distill_temperature, total_epochs, ...) stay the donor's: fixed
  per lineage.
- The initial population is drawn at random (Ray's BasicVariantGenerator, seeded), the
  config's `points` first; PBT's own choices (donors, perturbations) come from a random
  stream of the scheduler's own, seeded by the search's seed (SeededPBT).

PBT compares val acc at equal stage index, which may be at different speed-ups (each trial
splits the target its own way); the front is still built from finished lineages only, on
the target.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
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
    """PBT's hyperparam_mutations: the per-stage keys, as Tune domains of their range, and
    the choices with more than one value, as the list of them (a list, not a Tune choice:
    Ray's PBT would multiply a choice's value by a factor)."""
    domains = param_space(space)
    perturbed: dict[str, Any] = {}
    for key, dim in keyed_dimensions(space.max_stages):
        if dim.name not in PERTURBED:
            continue
        if dim.kind != "choice":
            perturbed[key] = domains[key]
        elif len(choices := list(dim.domain(space))) > 1:
            perturbed[key] = choices
    return perturbed


def clamp(space: SpaceConfig):  # -> Callable[[dict], dict]
    """PBT's custom_explore_fn: each perturbed number back into its range (a factor of 1.2 on
    a share of 1.0, or on the largest lr, would leave the space); a choice is always one."""
    ranges = {
        key: dim.domain(space)
        for key, dim in keyed_dimensions(space.max_stages)
        if dim.name in PERTURBED and dim.kind != "choice"
    }

    def explore(config: dict[str, Any]) -> dict[str, Any]:
        return config | {k: min(max(float(config[k]), lo), hi) for k, (lo, hi) in ranges.items()}

    return explore


class SeededPBT(PopulationBasedTraining):
    """Ray's PBT with random streams of its own. Ray's PBT draws its donors and perturbations
    from the module-level `random` (and resamples from numpy's global RNG), which the driver's
    other code (Ray, MLflow's clients, Tune's callbacks) also draws from, by amounts that vary
    run to run; so seeding `random` once did not make a search's exploits reproducible.
    Synchronous PBT makes every draw inside on_trial_result (the call that completes a
    boundary), so that call runs on this scheduler's own state, which is pickled with the
    scheduler (its state is plain data)."""

    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._random_state = random.Random(seed).getstate()
        self._numpy_state = np.random.RandomState(seed).get_state()

    @contextmanager
    def own_random(self) -> Iterator[None]:
        """`random` and numpy's global RNG (a resampled value is a Tune domain's sample, drawn
        from numpy's) on this scheduler's streams for the block; the caller's untouched."""
        outer, outer_numpy = random.getstate(), np.random.get_state()
        random.setstate(self._random_state)
        np.random.set_state(self._numpy_state)
        try:
            yield
        finally:
            self._random_state, self._numpy_state = random.getstate(), np.random.get_state()
            random.setstate(outer)
            np.random.set_state(outer_numpy)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        with self.own_random():
            return super().on_trial_result(tune_controller, trial, result)


def scheduler(config: ExperimentConfig) -> SeededPBT:
    pbt = config.pbt
    return SeededPBT(
        config.seed,
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
