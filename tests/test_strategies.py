"""The experiment's `strategy`: one registry, the start-up rule and what reaches Optuna."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from search.config import config_from_dict, load_config
from search.space import make_searcher
from search.strategies import STRATEGIES, default_startup, startup_trials

BASE = {"name": "t", "data": {"name": "synthetic"}}
DEMO = Path(__file__).parents[1] / "experiments" / "demo_search.yaml"


def _sampler(config, tmp_path: Path) -> optuna.samplers.BaseSampler:
    limiter = make_searcher(config, f"sqlite:///{tmp_path / 'optuna.db'}")
    return limiter.searcher._sampler


def test_unknown_strategy_suggests_the_closest() -> None:
    assert STRATEGIES.names() == ("tpe", "nsga2", "random", "pbt")
    with pytest.raises(ValueError, match="strategy='nsga' is invalid: did you mean 'nsga2'"):
        config_from_dict(BASE | {"strategy": "nsga"})


@pytest.mark.parametrize("trials, startup", [(1, 2), (8, 2), (12, 3), (20, 5), (40, 10), (400, 10)])
def test_the_default_start_up_scales_with_the_trials(trials: int, startup: int) -> None:
    assert default_startup(trials) == startup
    assert startup_trials(config_from_dict(BASE | {"num_trials": trials})) == startup


def test_start_up_count_reaches_optunas_sampler(tmp_path: Path) -> None:
    default = config_from_dict(BASE | {"num_trials": 16, "name": "a"})
    sampler = _sampler(default, tmp_path)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 4
    chosen = config_from_dict(BASE | {"num_trials": 16, "n_startup_trials": 7, "name": "b"})
    assert _sampler(chosen, tmp_path)._n_startup_trials == 7
    nsga = config_from_dict(BASE | {"strategy": "nsga2", "num_trials": 16, "name": "c"})
    assert _sampler(nsga, tmp_path)._population_size == 4
    rand = config_from_dict(BASE | {"strategy": "random", "name": "d"})
    assert isinstance(_sampler(rand, tmp_path), optuna.samplers.RandomSampler)
    assert startup_trials(rand) is None


def _draws(n_startup: int, n: int) -> list[float]:
    """x drawn by TPE (seed 0) on y = (x - 0.3)^2 for n trials."""
    sampler = STRATEGIES["tpe"].sampler(0, n_startup)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1) - 0.3) ** 2, n_trials=n)
    return [t.params["x"] for t in study.trials]


def test_tpe_models_the_trials_right_after_its_start_up() -> None:
    """Same seed: the start-up draws are the same random ones; from then on a short start-up
    draws from the model, a long one still at random, and the model closes in on the optimum."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    short, long = _draws(3, 12), _draws(10, 12)
    assert short[:3] == long[:3]
    assert short[3:10] != long[3:10]
    best_short = min(abs(x - 0.3) for x in short[:10])
    best_long = min(abs(x - 0.3) for x in long[:10])
    assert best_short < best_long


def test_old_sampler_key_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(BASE | {"sampler": "random"}))
    assert load_config(path).strategy == "random"


def test_dry_run_shows_the_strategy_and_its_start_up(capsys) -> None:
    from search.cli import main

    assert main(["search", str(DEMO), "--dry-run", "num_trials=12"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)["strategy"]
    assert shown.startswith("tpe: multi-objective TPE")
    assert "model-based after 3 start-up trials" in shown and "reference and points (1)" in shown


def test_optuna_is_told_only_finished_trials_values(tmp_path: Path) -> None:
    """A trial stopped at an earlier stage (its smaller speed-up's accuracy and compute) is
    PRUNED, a failed one FAIL; only a completed last stage is a COMPLETE trial with values."""
    from ray.tune.search import ConcurrencyLimiter

    from search.space import param_space

    config = config_from_dict(BASE | {"num_trials": 8})
    limiter = make_searcher(config, f"sqlite:///{tmp_path / 'optuna.db'}")
    assert isinstance(limiter, ConcurrencyLimiter)
    searcher = limiter.searcher
    searcher.set_search_properties(None, None, param_space(config.space))
    stage = {"val_acc": 0.9, "cost": 0.1, "train_tmacs": 0.1}
    outcomes = {
        "stopped": ({**stage, "completed": 0.0}, False),
        "failed": ({**stage, "completed": 0.0}, True),
        "failed_last": ({**stage, "completed": 1.0}, True),
        "done": ({"val_acc": 0.55, "cost": 0.4, "train_tmacs": 0.4, "completed": 1.0}, False),
    }
    for trial_id, (result, error) in outcomes.items():
        assert searcher.suggest(trial_id) is not None
        searcher.on_trial_complete(trial_id, result, error)
    told = {t.number: t for t in searcher._ot_study.get_trials()}
    states = [told[i].state.name for i in range(4)]
    assert states == ["PRUNED", "FAIL", "FAIL", "COMPLETE"]
    assert told[3].values == [0.55, 0.4]
