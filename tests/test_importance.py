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
