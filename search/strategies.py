"""How a search chooses its trials: the experiment's `strategy`, one registry.

- `tpe`: Optuna's multivariate TPE on both objectives (accuracy up, cost down). It draws its
  first `n_startup_trials` at random, then models the trials so far.
- `nsga2`: Optuna's NSGA-II; its first generation (random) is `n_startup_trials` trials, so it
  evolves within a 10-20 trial search instead of drawing its default 50 at random.
- `random`: every trial drawn at random; the honest baseline the others are measured against.
- `pbt`: Ray Tune's PopulationBasedTraining with prune -> fine-tune stages as its intervals
  (search/pbt.py): the population (num_trials, all running at once) is drawn at random with
  space.max_stages stages each; at each stage boundary a trial in the bottom `pbt.quantile_fraction`
  continues from a top trial's stage checkpoint with perturbed stage parameters
  (trainables/lineage.py). It has no Optuna sampler (kind "pbt").

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

from pruning.registry import Registry
from pruning.validate import number_in, positive_int, require

if TYPE_CHECKING:  # search.config imports STRATEGIES from here
    import optuna

    from search.config import ExperimentConfig

# Optuna is imported by the sampler factories, not here: search.config (and so `prunetune
# search --dry-run` and its config errors) reads this registry, and need not pay for Optuna.

DEFAULT_STRATEGY = "tpe"


@dataclass(frozen=True)
class Strategy:
    """One way to choose trials. kind "sampler": `sampler(seed, n_startup)` builds Optuna's
    sampler for the searcher; kind "pbt": no searcher, a Ray Tune scheduler (search/pbt.py)
    evolves a population. A strategy with no random start-up phase (`random`, `pbt`) refuses a
    configured n_startup_trials."""

    summary: str
    sampler: Callable[[int, int], optuna.samplers.BaseSampler] | None = None
    startup: bool = True
    kind: str = "sampler"  # "sampler" | "pbt"


def _tpe(seed: int, n_startup: int) -> optuna.samplers.BaseSampler:
    # The space is static (per-stage keys always drawn), so multivariate TPE models the
    # interactions between stages without falling back to random sampling.
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=n_startup)


def _nsga2(seed: int, n_startup: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, n_startup))


def _random(seed: int, _: int) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


STRATEGIES: Registry[Strategy] = Registry(
    "strategy",
    {
        "tpe": Strategy("multi-objective TPE (Optuna)", _tpe),
        "nsga2": Strategy("NSGA-II (Optuna), a first generation of the start-up size", _nsga2),
        "random": Strategy(
            "every trial at random (the baseline)",
            _random,
            startup=False,
        ),
        "pbt": Strategy(
            "Population Based Training (Ray Tune): stages as intervals, exploit + explore",
            startup=False,
            kind="pbt",
        ),
    },
)


@dataclass(frozen=True)
class PbtConfig:
    """The experiment's `pbt` section (read only with strategy: pbt). Defaults are Ray Tune's
    own, except the resampling (a quarter of the perturbed values drawn anew from the space)."""

    quantile_fraction: float = 0.25  # bottom/top share of the population at each boundary
    perturbation_factors: tuple[float, float] = (0.8, 1.2)  # a stage share or lr times one
    resample_probability: float = 0.25  # chance a perturbed value is drawn anew instead

    def __post_init__(self) -> None:
        number_in("pbt.quantile_fraction", self.quantile_fraction, 0.0, 0.5)
        factors = self.perturbation_factors
        require(
            isinstance(factors, tuple)
            and len(factors) == 2
            and all(isinstance(f, (int, float)) and f > 0 for f in factors),
            "pbt.perturbation_factors",
            factors,
            "two positive numbers, e.g. [0.8, 1.2]",
        )
        number_in("pbt.resample_probability", self.resample_probability, 0.0, 1.0, low_open=False)


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
    if strategy.sampler is None:
        raise ValueError(
            f"strategy={config.strategy!r} has no Optuna sampler (kind {strategy.kind})"
        )
    return strategy.sampler(config.seed, startup_trials(config) or 0)


def is_pbt(config: ExperimentConfig) -> bool:
    return STRATEGIES[config.strategy].kind == "pbt"


def describe(config: ExperimentConfig) -> str:
    """One line for --dry-run and the parent run: the strategy and its start-up count."""
    n = startup_trials(config)
    text = f"{config.strategy}: {STRATEGIES[config.strategy].summary}"
    if is_pbt(config):
        pbt = config.pbt
        return (
            f"{text}; a population of {config.num_trials} with {config.space.max_stages} stages "
            f"each, bottom {pbt.quantile_fraction:g} exploit the top at every stage boundary, "
            f"perturbed x{pbt.perturbation_factors[0]:g}/x{pbt.perturbation_factors[1]:g} "
            f"(resampled with p={pbt.resample_probability:g})"
        )
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
            f"n_startup_trials={n!r} is invalid with strategy={config.strategy!r}: it has no "
            f"start-up phase; remove n_startup_trials or choose {' or '.join(with_startup)}"
        )


def check_pbt(config: ExperimentConfig) -> None:
    """What PBT needs of the rest of the config (called once the whole config is built):
    stage boundaries to exploit at, a population that runs at once (synchronous PBT compares
    every trial at the same boundary: a trial waiting for a slot would stall the others), no
    second scheduler, and only trials of space.max_stages stages."""
    if not is_pbt(config):
        return
    require(
        config.space.max_stages >= 2,
        "space.max_stages",
        config.space.max_stages,
        "strategy pbt exploits at stage boundaries: it needs at least 2 stages",
    )
    require(
        config.num_trials >= 2,
        "num_trials",
        config.num_trials,
        "strategy pbt needs a population of at least 2 trials",
    )
    require(
        config.max_concurrent == config.num_trials,
        "max_concurrent",
        config.max_concurrent,
        f"strategy pbt runs its whole population at once (synchronous PBT compares all trials "
        f"at each stage boundary): set max_concurrent to num_trials={config.num_trials}",
    )
    require(
        not config.asha.enabled,
        "asha.enabled",
        config.asha.enabled,
        "strategy pbt is itself the search's scheduler; ASHA cannot run beside it (set "
        "asha.enabled: false)",
    )
    require(
        not config.reference_trial,
        "reference_trial",
        config.reference_trial,
        "strategy pbt runs every trial with space.max_stages stages, and the reference recipe "
        "is one stage: set reference_trial: false",
    )
    require(
        config.target is None,
        "target.latency_speedup",
        getattr(config.target, "latency_speedup", None),
        "strategy pbt continues lineages on MACs speed-ups: give target_speedup instead",
    )
    for i, point in enumerate(config.points):
        stages = point.get("n_stages") if isinstance(point, dict) else None
        require(
            stages == config.space.max_stages,
            f"points[{i}].n_stages",
            stages,
            f"strategy pbt runs every trial with space.max_stages={config.space.max_stages} stages",
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
