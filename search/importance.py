"""What mattered: which schedule parameters drove validation accuracy across a search's trials.

Optuna's PED-ANOVA (its default evaluator, numpy only) on the trials that finished their
schedule (on the target; ASHA-stopped and failed trials are left out, since their accuracy is
that of an earlier, smaller speed-up), with validation accuracy as the one value. PED-ANOVA
asks how differently a parameter is distributed in the best trials (the top TOP_QUANTILE)
than in all of them; the shares below are its importances normalised to sum to 1 (a share of
the importance, not of the variance, as fANOVA's would be). Below MIN_TRIALS finished trials
the top holds too few trials for that to be more than noise, and the result says so instead.

The parameters are the search's flat trial-config keys (`lr_0`, `split_1`, `importance`, ...;
per-stage keys a trial with fewer stages ignores are drawn all the same, and rank low).

Under strategy pbt a finished trial's config is only its last perturbation: the stages it
inherited ran with its donors' parameters. There the perturbed parameters are the lineage's
stages as they ran (`stage_1.speedup`, `stage_1.epochs`, `stage_1.lr`, `stage_1.importance`,
`stage_1.distill_alpha`, ...; the last stage's speed-up is the target, so not a parameter),
read from the trial's last checkpoint, beside the keys that stay fixed per lineage (ranking,
floor, round_to, distill_temperature, ...).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from search.strategies import is_pbt
from trainables import tracking
from trainables.lineage import PERTURBED
from trainables.point import keyed_dimensions

if TYPE_CHECKING:
    from pruning.schedule import Schedule
    from search.config import ExperimentConfig, SpaceConfig

MIN_TRIALS = 10  # finished trials needed: the top TOP_QUANTILE then holds at least 3
TOP_QUANTILE = 0.3
TOP_PARAMS = 3
FILE = "importance.json"  # the parent run's artifact
TAG = "what_mattered"  # the parent run's tag: the sentences, "; "-joined


@dataclass(frozen=True)
class ParamImportance:
    name: str  # the trial-config key
    share: float  # of the normalised PED-ANOVA importance, 0..1
    best: str  # what the best trials used: "0.011-0.019", "cosine (3 of 3)"

    def sentence(self) -> str:
        return f"{self.name}: {self.share:.0%} of the importance; the best trials used {self.best}"


@dataclass(frozen=True)
class WhatMattered:
    trials: int  # finished trials it was computed on
    top: tuple[ParamImportance, ...]  # most important first; empty with a note
    note: str = ""  # why there is no ranking

    def lines(self) -> list[str]:
        return [p.sentence() for p in self.top] or [self.note]

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"lines": self.lines()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> WhatMattered | None:
        """None for a search that logged none (older than this module)."""
        if not text.strip():
            return None
        raw = json.loads(text)
        top = tuple(ParamImportance(**p) for p in raw.get("top", ()))
        return cls(int(raw.get("trials", 0)), top, str(raw.get("note", "")))


def distributions(space: SpaceConfig) -> dict[str, BaseDistribution]:
    """The search's dimensions as Optuna distributions, converted as Ray's OptunaSearch
    converts them for the real study (Ray imported here: the report reads this module)."""
    from ray.tune.search.optuna import OptunaSearch

    from search.space import param_space

    return OptunaSearch.convert_search_space(param_space(space))


def lineage_distributions(space: SpaceConfig, target: float) -> dict[str, BaseDistribution]:
    """A PBT search's dimensions: the keys fixed per lineage as drawn, and each stage as it ran
    (module docstring) in place of the draws PBT perturbs (a choice with one value is no
    dimension: what_mattered leaves it out)."""
    perturbed = {k for k, dim in keyed_dimensions(space.max_stages) if dim.name in PERTURBED}
    fixed = {
        k: d for k, d in distributions(space).items() if k != "n_stages" and k not in perturbed
    }
    epochs = FloatDistribution(0.0, float(max(space.total_epochs)))
    lr = FloatDistribution(space.lr_min, space.lr_max, log=True)
    importance = CategoricalDistribution(tuple(space.importances))
    alpha = CategoricalDistribution(tuple(space.distill_alphas))
    stages: dict[str, BaseDistribution] = {}
    for i in range(1, space.max_stages + 1):
        if i < space.max_stages:
            stages[f"stage_{i}.speedup"] = FloatDistribution(1.0, target, log=True)
        stages |= {f"stage_{i}.epochs": epochs, f"stage_{i}.lr": lr}
        stages |= {f"stage_{i}.importance": importance, f"stage_{i}.distill_alpha": alpha}
    return fixed | stages


def ran_params(schedule: Schedule, dists: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """A lineage's stages as they ran, as lineage_distributions' keys (numbers clamped into
    their ranges: a speed-up landed a hair past the target, an lr at the range's float edge;
    a stage's importance and distillation weight its own override, else the schedule's)."""
    params: dict[str, Any] = {}
    for i, stage in enumerate(schedule.stages, start=1):
        kd = schedule.distill_at(i - 1)
        ran = {
            "speedup": stage.speedup,
            "epochs": stage.epochs,
            "lr": stage.lr,
            "importance": schedule.importance_at(i - 1),
            "distill_alpha": kd.alpha if kd else 0.0,
        }
        for name, value in ran.items():
            dist = dists.get(f"stage_{i}.{name}")
            if isinstance(dist, FloatDistribution):
                params[f"stage_{i}.{name}"] = min(max(float(value), dist.low), dist.high)
            elif isinstance(dist, CategoricalDistribution) and value in dist.choices:
                params[f"stage_{i}.{name}"] = value
    return params


def what_mattered(
    points: Sequence[tuple[Mapping[str, Any], float]], dists: Mapping[str, BaseDistribution]
) -> WhatMattered:
    """points: (trial config, val acc) of each finished trial; dists: the search's dimensions.
    Dimensions with one value (nothing drawn) are left out."""
    points = [(c, v) for c, v in points if math.isfinite(v)]
    if len(points) < MIN_TRIALS:
        return WhatMattered(
            len(points),
            (),
            f"too few finished trials to tell ({len(points)}; the importance needs at least "
            f"{MIN_TRIALS})",
        )
    drawn = {k: d for k, d in dists.items() if not d.single()}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "a new study created in memory"
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={k: config[k] for k in drawn}, distributions=drawn, value=value
            )
            for config, value in points
        ]
    )
    evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=TOP_QUANTILE)
    shares = optuna.importance.get_param_importances(study, evaluator=evaluator)
    best = sorted(points, key=lambda p: p[1], reverse=True)
    best = best[: math.ceil(TOP_QUANTILE * len(points))]
    top = [
        ParamImportance(name, share, _used([c[name] for c, _ in best], drawn[name]))
        for name, share in list(shares.items())[:TOP_PARAMS]
    ]
    return WhatMattered(len(points), tuple(top))


def _used(values: list[Any], dist: BaseDistribution) -> str:
    if isinstance(dist, CategoricalDistribution):
        value, count = Counter(values).most_common(1)[0]
        return f"{value} ({count} of {len(values)})"
    low, high = min(values), max(values)
    return f"{low:.2g}" if f"{low:.2g}" == f"{high:.2g}" else f"{low:.2g}-{high:.2g}"


def finished_points(
    results: list[dict[str, Any]], dists: Mapping[str, BaseDistribution] | None = None
) -> list[tuple[dict[str, Any], float]]:
    """(config, val acc) of each trial of a search (tuner.SearchOutcome.results) that finished
    its schedule. With a PBT search's `dists` (lineage_distributions), its config's per-stage
    keys are the stages its lineage ran (the result's `lineage`); one without is left out."""
    points = []
    for r in results:
        if r["error"] or not r["metrics"].get("completed") or not r["config"]:
            continue
        config = r["config"]
        if dists is not None:
            if r.get("lineage") is None:
                continue
            config = config | ran_params(r["lineage"].schedule, dists)
        points.append((config, float(r["metrics"]["val_acc"])))
    return points


def log_what_mattered(
    config: ExperimentConfig, parent_id: str, results: list[dict[str, Any]]
) -> WhatMattered:
    """Computes it for a finished search and logs it on the parent run (artifact FILE, tag
    TAG), where the report reads it."""
    if is_pbt(config):
        dists = lineage_distributions(config.space, config.target_speedup)
        points = finished_points(results, dists)
    else:
        dists, points = distributions(config.space), finished_points(results)
    result = what_mattered(points, dists)
    uri = config.tracking_uri
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / FILE).write_text(result.to_json())
        tracking.log_artifacts(uri, parent_id, Path(tmp))
    tracking.set_tags(uri, parent_id, {TAG: "; ".join(result.lines())})
    return result
