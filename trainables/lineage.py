"""A PBT trial's lineage: the stages that actually ran to reach its checkpoint, and the exploits
that copied it from trial to trial.

Population Based Training (strategy `pbt`, search/pbt.py) restarts a bottom trial from a top
trial's stage checkpoint with a perturbed config. The checkpoint carries `lineage.json`: the
schedule run so far (its first `done` stages are what ran, with the parameters they ran with)
and the exploits on the way. The trial then runs the rest with `continue_schedule`:

- the stages already run are kept as they ran;
- the remaining stages split the log speed-up still to go, from the last stage's speed-up to the
  target, by the config's shares `split_<i>` of those stages: every next speed-up lies between
  the done stage's and the target, and the last lands exactly on the target;
- they split the epochs still in the budget (the config's `total_epochs`, which PBT copies from
  the donor and never perturbs, minus the epochs the lineage spent) by `epochs_<i>`;
- each fine-tunes at its `lr_<i>`.

Importance, ranking, floors, round_to, sparse training and distillation are fixed per lineage
at its first stage: a schedule has one of each, so the exported lineage replays as one schedule
file. PBT perturbs only the per-stage keys (search.pbt.mutations).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from pruning.schedule import Schedule, Stage, schedule_from_dict, schedule_to_dict
from trainables.point import TrialPoint, split_epochs, split_speedups

LINEAGE_FILE = "lineage.json"
# The per-stage dimensions PBT perturbs (search.pbt.mutations) and continue_schedule re-plans.
PERTURBED = ("split", "epochs", "lr")
# Every trial run reports (for search.accounting, which imports no Ray): the cost (the cost
# objective's metric) of the checkpoint it started from, counted where it was computed, and an
# id of the run (one attempt of a trial). They are the same for every strategy.
COST_RESTORED = "cost_restored"
ATTEMPT = "attempt"


@dataclass(frozen=True)
class Exploit:
    """Trial `trial` continued from trial `from_trial`'s checkpoint after its stage `stage`."""

    trial: str
    from_trial: str
    stage: int


@dataclass(frozen=True)
class Lineage:
    owner: str  # the trial whose checkpoint this is
    schedule: Schedule  # its first `done` stages (RunState.done) ran as written
    exploits: tuple[Exploit, ...] = ()

    def exploited(self, trial: str, done: int) -> Lineage:
        """This lineage continued by `trial`: a new exploit when the checkpoint is another's."""
        if trial == self.owner:
            return self
        return Lineage(trial, self.schedule, (*self.exploits, Exploit(trial, self.owner, done)))

    def tags(self) -> dict[str, str]:
        """MLflow tags: pbt.exploits and, per exploit n (1-based, oldest first),
        pbt.exploit.<n>.trial / .from_trial / .stage."""
        tags = {"pbt.exploits": str(len(self.exploits))}
        for n, e in enumerate(self.exploits, start=1):
            tags |= {
                f"pbt.exploit.{n}.trial": e.trial,
                f"pbt.exploit.{n}.from_trial": e.from_trial,
                f"pbt.exploit.{n}.stage": str(e.stage),
            }
        return tags


def save_lineage(folder: Path, lineage: Lineage) -> None:
    doc = {
        "owner": lineage.owner,
        "schedule": schedule_to_dict(lineage.schedule),
        "exploits": [dataclasses.asdict(e) for e in lineage.exploits],
    }
    (folder / LINEAGE_FILE).write_text(json.dumps(doc, indent=2))


def load_lineage(folder: Path) -> Lineage | None:
    """The checkpoint's lineage; None for a checkpoint of a trial that was not a PBT trial."""
    path = folder / LINEAGE_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    exploits = tuple(Exploit(**e) for e in doc["exploits"])
    return Lineage(doc["owner"], schedule_from_dict(doc["schedule"]), exploits)


def continue_schedule(point: TrialPoint, ran: Schedule, done: int) -> Schedule:
    """`ran`'s first `done` stages, then the rest of `point`'s n_stages stages re-planned from
    where they left off (module docstring); the lineage's settings are `ran`'s."""
    n = point.n_stages
    if not 0 < done < n:
        raise ValueError(f"a lineage continues after stage 1..{n - 1} of {n}; done={done}")
    inherited = ran.stages[:done]
    start, target = inherited[-1].speedup, ran.target_speedup
    # cumulative speed-ups from `start`: each a share of log(target / start)
    speedups = [start * s for s in split_speedups(target / start, list(point.split[done:n]))]
    speedups[-1] = target
    spent = sum(s.epochs for s in inherited)
    left = point.total_epochs - spent
    if left < 0:
        raise ValueError(
            f"total_epochs={point.total_epochs} is below the {spent} epochs the lineage spent"
        )
    epochs = split_epochs(left, list(point.epochs[done:n]))
    schedule_of = inherited[0].lr_schedule
    rest = tuple(
        Stage(s, e, lr, schedule_of)
        for s, e, lr in zip(speedups, epochs, point.lr[done:n], strict=True)
    )
    return dataclasses.replace(ran, stages=inherited + rest)
