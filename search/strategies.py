"""How a search chooses its trials: the experiment's `strategy`, one registry.

- `tpe`: Optuna's multivariate TPE on both objectives (accuracy up, cost down). It draws its
  first `n_startup_trials` at random, then models the trials so far.
- `nsga2`: Optuna's NSGA-II; its first generation (random) is `n_startup_trials` trials, so it
  evolves within a 10-20 trial search instead of drawing its default 50 at random.
- `random`: every trial drawn at random; the honest baseline the others are measured against.

The start-up count, unless the config sets `n_startup_trials`, is `default_startup(num_trials)`
= max(2, min(10, num_trials // 4)): a 10-20 trial search is model-based after 2-5 trials
(Optuna's own default, 10, would leave such a search random throughout). The reference recipe
and the config's `points` are trials of the study, told to Optuna first, so they are the first
start-up trials: with 4 of them and a start-up of 4, the model draws the 5th trial.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

from pruning.registry import Registry
from pruning.validate import positive_int

if TYPE_CHECKING:  # search.config imports STRATEGIES from here
    from search.config import ExperimentConfig

DEFAULT_STRATEGY = "tpe"


@dataclass(frozen=True)
class Strategy:
    """One way to choose trials: `sampler(seed, n_startup)` builds Optuna's sampler; a strategy
    with no random start-up phase (`random`) ignores n_startup and refuses a configured one."""

    summary: str
    sampler: Callable[[int, int], optuna.samplers.BaseSampler]
    startup: bool = True


def _tpe(seed: int, n_startup: int) -> optuna.samplers.BaseSampler:
    # The space is static (per-stage keys always drawn), so multivariate TPE models the
    # interactions between stages without falling back to random sampling.
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=n_startup)


def _nsga2(seed: int, n_startup: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, n_startup))


STRATEGIES: Registry[Strategy] = Registry(
    "strategy",
    {
        "tpe": Strategy("multi-objective TPE (Optuna)", _tpe),
        "nsga2": Strategy("NSGA-II (Optuna), a first generation of the start-up size", _nsga2),
        "random": Strategy(
            "every trial at random (the baseline)",
            lambda seed, _: optuna.samplers.RandomSampler(seed=seed),
            startup=False,
        ),
    },
)


def default_startup(num_trials: int) -> int:
    """Random start-up trials (the reference and `points` among them) when the config sets
    none: a quarter of the search, at least 2 and at most Optuna's own default of 10."""
    return max(2, min(10, num_trials // 4))


def startup_trials(config: ExperimentConfig) -> int | None:
    """The start-up count the search runs with; None for a strategy without one."""
    if not STRATEGIES[config.strategy].startup:
        return None
    if config.n_startup_trials is not None:
        return config.n_startup_trials
    return default_startup(config.num_trials)


def make_sampler(config: ExperimentConfig) -> optuna.samplers.BaseSampler:
    strategy = STRATEGIES[config.strategy]
    return strategy.sampler(config.seed, startup_trials(config) or 0)


def describe(config: ExperimentConfig) -> str:
    """One line for --dry-run and the parent run: the strategy and its start-up count."""
    n = startup_trials(config)
    text = f"{config.strategy}: {STRATEGIES[config.strategy].summary}"
    if n is None:
        return text
    known = int(config.reference_trial) + len(config.points)
    first = f", the reference and points ({known}) first" if known else ""
    how = "set" if config.n_startup_trials is not None else "default max(2, min(10, trials // 4))"
    return f"{text}; model-based after {n} start-up trials ({how}{first})"


def check_strategy(config: ExperimentConfig) -> None:
    """`strategy` is a registered name; `n_startup_trials` is null or a count, and only for a
    strategy that has a start-up phase."""
    STRATEGIES.check("strategy", config.strategy)
    n = config.n_startup_trials
    if n is None:
        return
    positive_int("n_startup_trials", n, minimum=1)
    if not STRATEGIES[config.strategy].startup:
        with_startup = [s for s in STRATEGIES.names() if STRATEGIES[s].startup]
        raise ValueError(
            f"n_startup_trials={n!r} is invalid with strategy={config.strategy!r}: it draws "
            f"every trial at random; remove n_startup_trials or choose {' or '.join(with_startup)}"
        )


# Files written before `strategy` existed named it `sampler` (same names).
OLD_KEY = "sampler"


def migrate(raw: dict) -> dict:
    """An experiment mapping with the old `sampler` key read as `strategy`."""
    if OLD_KEY not in raw:
        return raw
    raw = dict(raw)
    old = raw.pop(OLD_KEY)
    if "strategy" in raw and raw["strategy"] != old:
        raise ValueError(
            f"sampler={old!r} and strategy={raw['strategy']!r}: `sampler` is the old name of "
            "`strategy`; keep only strategy"
        )
    raw["strategy"] = old
    return raw
