"""asha.rungs: the kinds of early stopping a search with an Optuna strategy can run with (the
experiment's `asha` section; search/stage_rungs.py explains `stages`). Apart from the schedulers
themselves so that search.config, `prunetune search --dry-run` and a config's errors read the
registry without importing Ray: each `build` imports its scheduler when a search starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pruning.registry import Registry
from search.objectives import ACCURACY

if TYPE_CHECKING:  # search.config imports RUNGS from here
    from ray.tune.schedulers import TrialScheduler

    from search.config import AshaConfig


@dataclass(frozen=True)
class Rungs:
    """One kind of early stopping: `build(asha, max_t)` makes Tune's scheduler, max_t the
    most a trial can spend in dense epochs (search.tuner.asha_max_t)."""

    summary: str
    build: Callable[[AshaConfig, float], TrialScheduler]


def _epoch_rungs(asha: AshaConfig, max_t: float) -> TrialScheduler:
    from ray.tune.schedulers import ASHAScheduler

    from trainables.trial import ASHA_TIME

    return ASHAScheduler(
        time_attr=ASHA_TIME,  # the chosen cost objective in epochs, cumulative over stages
        metric=ACCURACY,
        mode="max",
        max_t=max_t,
        grace_period=asha.grace_epochs,
        reduction_factor=asha.reduction_factor,
    )


def _stage_rungs(asha: AshaConfig, _: float) -> TrialScheduler:
    from search.stage_rungs import StageRungs

    return StageRungs(asha.reduction_factor)


RUNGS: Registry[Rungs] = Registry(
    "asha.rungs",
    {
        "epochs": Rungs(
            "ASHA on val_acc alone, rungs at grace_epochs x reduction_factor^k dense epochs of "
            "cost (Ray Tune's ASHAScheduler)",
            _epoch_rungs,
        ),
        "stages": Rungs(
            "a rung at every stage but the last, promoting the top 1/reduction_factor by "
            "non-dominated rank on (val_acc, cost so far), as MOASHA does",
            _stage_rungs,
        ),
    },
)
DEFAULT_RUNGS = "epochs"


def describe(asha: AshaConfig) -> str:
    """One line for --dry-run: the early stopping a search runs with."""
    if not asha.enabled:
        return "off (asha.enabled: false)"
    return f"asha.rungs {asha.rungs}: {RUNGS[asha.rungs].summary}"
