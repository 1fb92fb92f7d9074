"""The objectives a search ranks its trials by: a registry (name -> the metric every trial
reports, its direction, its unit). The config's `objectives` names them; Optuna's metrics, the
Pareto front, the --pick rules, the plots and the export all read them from here.

Pure: no Ray, no MLflow (search/pareto.py ranks rows with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pruning.compute import COSTS, DEFAULT_COST, CostObjective
from pruning.registry import Registry
from pruning.validate import require

DIRECTIONS = ("maximize", "minimize")


@dataclass(frozen=True)
class Objective:
    """One objective: `metric` is what a trial reports per stage (Tune, Optuna, MLflow) and the
    TrialRow field it is read back into."""

    name: str
    metric: str
    direction: str  # one of DIRECTIONS
    unit: str  # "" for cost: the search's cost objective (TMACs or epochs) says it
    label: str  # axis / column title, without the unit

    @property
    def mode(self) -> str:
        """Tune's and Optuna's word for the direction."""
        return "max" if self.direction == "maximize" else "min"

    def axis(self, cost: CostObjective = COSTS[DEFAULT_COST]) -> str:
        """An axis label with the unit: 'fine-tune compute (TMACs)', 'latency (ms per batch)'."""
        return cost.axis() if self.name == "cost" else f"{self.label} ({self.unit})"

    def format(self, value: float, cost: CostObjective = COSTS[DEFAULT_COST]) -> str:
        """'91.20%', '12.5 TMACs', '3.41 ms'."""
        if self.name == "val_acc":
            return f"{value:.2%}"
        return cost.format(value) if self.name == "cost" else f"{value:.4g} {self.unit}"


OBJECTIVES: Registry[Objective] = Registry(
    "objective",
    {
        # the last stage's validation accuracy
        "val_acc": Objective("val_acc", "val_acc", "maximize", "%", "validation accuracy"),
        # the config's `cost` (pruning.compute.COSTS), which a trial reports as "cost"
        "cost": Objective("cost", "cost", "minimize", "", "cost"),
        # measured latency of the pruned model at the primary (first) of latency.batches
        "latency": Objective("latency", "latency_ms", "minimize", "ms per batch", "latency"),
    },
)
DEFAULT_OBJECTIVES: tuple[str, ...] = ("val_acc", "cost")
ACCURACY = "val_acc"  # every search keeps it: max-acc picks, ASHA stops by it


def check_objectives(names: object, latency_enabled: bool) -> tuple[Objective, ...]:
    """The config's `objectives`, validated: known names (did-you-mean), each once, accuracy
    among them and one more, latency only when latency is measured."""
    field = "objectives"
    allowed = f"a list of two or more of {', '.join(OBJECTIVES.names())}, e.g. [val_acc, cost]"
    require(isinstance(names, (tuple, list)) and len(names) >= 2, field, names, allowed)
    assert isinstance(names, (tuple, list))
    for name in names:
        OBJECTIVES.check(f"{field}[]", name)
    require(len(set(names)) == len(names), field, names, "each objective once")
    require(ACCURACY in names, field, names, f"it must include {ACCURACY}: {allowed}")
    require(
        "latency" not in names or latency_enabled,
        field,
        names,
        "the latency objective needs the latency measured: remove `latency: null` or set "
        "latency.enabled: true, or drop latency from objectives",
    )
    return tuple(OBJECTIVES[n] for n in names)


def resolve(names: Sequence[str]) -> tuple[Objective, ...]:
    return tuple(OBJECTIVES[n] for n in names)
