"""What mattered: PED-ANOVA on a search's finished trials, on a synthetic set of trials whose
accuracy one parameter drives."""

from __future__ import annotations

import random

import optuna
import pytest

from search.config import config_from_dict
from search.importance import MIN_TRIALS, WhatMattered, distributions, what_mattered

CONFIG = config_from_dict({"name": "t", "data": {"name": "synthetic"}})


def _draw(rng: random.Random, dist: optuna.distributions.BaseDistribution):
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return rng.choice(dist.choices)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return rng.randint(dist.low, dist.high)
    return rng.uniform(dist.low, dist.high)


def _trials(n: int, seed: int = 0) -> list[tuple[dict, float]]:
    """Accuracy peaks at lr_0 = 0.015 and barely moves with anything else."""
    rng, dists = random.Random(seed), distributions(CONFIG.space)
    points = []
    for _ in range(n):
        config = {k: _draw(rng, d) for k, d in dists.items()}
        points.append((config, 0.8 - 10 * abs(config["lr_0"] - 0.015) + rng.gauss(0, 1e-3)))
    return points


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_parameter_that_drives_accuracy_ranks_first(seed: int) -> None:
    result = what_mattered(_trials(30, seed), distributions(CONFIG.space))
    assert result.trials == 30 and len(result.top) == 3
    first = result.top[0]
    assert first.name == "lr_0" and first.share > 0.3
    assert all(first.share > other.share for other in result.top[1:])
    low, high = (float(x) for x in first.best.split("-"))
    assert low <= 0.015 <= high and high - low < 0.025  # the best sat around the peak (of 0.049)
    assert result.lines()[0].startswith(f"lr_0: {first.share:.0%} of the importance; the best")
    again = WhatMattered.from_json(result.to_json())
    assert again == result


def test_too_few_trials_say_so_instead_of_ranking() -> None:
    result = what_mattered(_trials(MIN_TRIALS - 1), distributions(CONFIG.space))
    assert result.top == ()
    assert result.lines() == [
        f"too few finished trials to tell ({MIN_TRIALS - 1}; the importance needs at least "
        f"{MIN_TRIALS})"
    ]


def test_a_pbt_lineage_counts_with_the_stages_it_ran_not_its_last_perturbation() -> None:
    """Accuracy follows the lr stage 1 RAN with (inherited from a donor), while the trial's
    final config (its last perturbation) says lr_0 = 0.04 for every trial."""
    from pruning.schedule import Schedule, Stage
    from search.importance import finished_points, lineage_distributions
    from trainables.lineage import Lineage

    space = config_from_dict(
        {"name": "t", "data": {"name": "synthetic"}, "space": {"max_stages": 2}}
    ).space
    dists = lineage_distributions(space, 8.84)
    assert "lr_0" not in dists and "split_0" not in dists and "n_stages" not in dists
    assert {"stage_1.speedup", "stage_1.lr", "stage_2.epochs", "stage_2.importance"} <= set(dists)
    assert "importance" not in dists  # perturbed: the stages' importances as they ran
    assert "stage_2.speedup" not in dists  # the target, always
    rng, results = random.Random(0), []
    for i in range(30):
        ran = rng.uniform(space.lr_min, space.lr_max)
        stages = (Stage(rng.uniform(1.5, 6.0), 2, ran), Stage(8.84, 2, rng.uniform(0.002, 0.04)))
        config = {k: _draw(rng, d) for k, d in distributions(space).items()} | {"lr_0": 0.04}
        results.append(
            {
                "config": config,
                "metrics": {"completed": 1.0, "val_acc": 0.8 - 10 * abs(ran - 0.015)},
                "error": None,
                "lineage": Lineage(f"t{i}", Schedule(8.84, stages)),
            }
        )
    results.append(results[0] | {"lineage": None})  # no checkpoint to read: left out
    points = finished_points(results, dists)
    assert (
        len(points) == 30
        and points[0][0]["stage_1.lr"] == results[0]["lineage"].schedule.stages[0].lr
    )
    result = what_mattered(points, dists)
    assert result.top[0].name == "stage_1.lr"


def test_a_pbt_lineage_reads_each_stages_importance_and_distillation_as_it_ran() -> None:
    from pruning.schedule import Distill, Schedule, Stage
    from search.importance import lineage_distributions, ran_params

    space = config_from_dict(
        {
            "name": "t",
            "data": {"name": "synthetic"},
            "space": {"max_stages": 2, "distill_alphas": [0.0, 0.5]},
        }
    ).space
    dists = lineage_distributions(space, 4.0)
    stages = (Stage(2.0, 1, distill_alpha=0.0), Stage(4.0, 1, importance="lamp"))
    ran = ran_params(Schedule(4.0, stages, distill=Distill(0.5)), dists)
    assert (ran["stage_1.importance"], ran["stage_2.importance"]) == ("group_norm", "lamp")
    assert (ran["stage_1.distill_alpha"], ran["stage_2.distill_alpha"]) == (0.0, 0.5)
