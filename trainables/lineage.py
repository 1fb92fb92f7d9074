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
- each fine-tunes at its `lr_<i>`;
- each prunes with the config's `importance` and distills with its `distill_alpha` (PBT
  perturbs both where the space offers more than one choice): written as the stage's own
  overrides (pruning.schedule.Stage) where they differ from the schedule's, which stay the
  lineage's first stage's, so the inherited stages keep theirs. A lineage that did not distill
  and now does takes the config's distill_temperature as the schedule's, and its inherited
  stages say distill_alpha 0.

Ranking, floors, round_to, sparse training, the distillation temperature and lr_schedule stay
fixed per lineage at its first stage (a schedule file has one of each, and a floor or round_to
changed midway would not describe one pruned structure), so the exported lineage replays as one
schedule file. PBT perturbs only PERTURBED (search.pbt.mutations).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from pruning.schedule import Schedule, Stage, schedule_from_dict, schedule_to_dict
from trainables.point import TrialPoint, split_epochs, split_speedups

LINEAGE_FILE = "lineage.json"
# The dimensions PBT perturbs (search.pbt.mutations) and continue_schedule re-plans: the
# per-stage shares and lr, and the choices a stage may override (pruning.schedule.Stage).
PERTURBED = ("split", "epochs", "lr", "importance", "distill_alpha")
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
    where they left off, with point's importance and distill_alpha (module docstring); the
    lineage's other settings are `ran`'s."""
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
    ran, inherited = _with_distill(ran, inherited, point)
    importance = point.importance if point.importance != ran.importance else None
    alpha = point.distill_alpha if point.distill_alpha != _alpha(ran) else None
    rest = tuple(
        Stage(s, e, lr, schedule_of, importance, alpha)
        for s, e, lr in zip(speedups, epochs, point.lr[done:n], strict=True)
    )
    return dataclasses.replace(ran, stages=inherited + rest)


def _alpha(schedule: Schedule) -> float:
    return schedule.distill.alpha if schedule.distill else 0.0


def _with_distill(
    ran: Schedule, inherited: tuple[Stage, ...], point: TrialPoint
) -> tuple[Schedule, tuple[Stage, ...]]:
    """A lineage that did not distill, continued by a point that does: the point's
    distillation becomes the schedule's (its temperature is needed), and the inherited stages,
    which ran on plain cross-entropy, say distill_alpha 0 where they set nothing."""
    if ran.distill is not None or point.distill() is None:
        return ran, inherited
    plain = tuple(
        s if s.distill_alpha is not None else dataclasses.replace(s, distill_alpha=0.0)
        for s in inherited
    )
    return dataclasses.replace(ran, distill=point.distill()), plain
