"""The demo search's Optuna draws with and without some dimensions: a dimension with one choice
must draw nothing, so adding it leaves every existing search's points as they were."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from search.config import load_config
from search.space import param_space
from search.strategies import make_sampler

DEMO = Path(__file__).parents[2] / "experiments" / "demo_search.yaml"


def demo_draws(
    dropped: Callable[[str], bool], trials: int = 14
) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """(keys dropped, the points drawn with the dimensions, the points drawn without them);
    both lists leave the dropped keys out. 14 trials: past TPE's random start-up trials."""
    config = load_config(DEMO)
    full = param_space(config.space)
    without = {k: v for k, v in full.items() if not dropped(k)}
    draws = []
    for space in (full, without):
        searcher = OptunaSearch(
            space=space,
            metric=["val_acc", "cost"],
            mode=["max", "min"],
            sampler=make_sampler(config),
        )
        points = []
        for i in range(trials):
            point = searcher.suggest(str(i))
            searcher.on_trial_complete(str(i), {"val_acc": point["lr_0"], "cost": i % 3})
            points.append({k: v for k, v in point.items() if not dropped(k)})
        draws.append(points)
    return len(full) - len(without), draws[0], draws[1]
