"""What fine-tuning costs in compute, and the cost objectives a search can rank schedules by.

Units: MACs are multiply-accumulates per image (what pruning.prune.count_macs_params reports
for a batch of one); compute is reported in TMACs, 10^12 MACs. One training step costs about
3 forward passes (forward, plus a backward that computes both the input and the weight
gradients), so a training image costs 3 x the student's MACs; a teacher (distillation) only runs
forward, so it adds 1 x its own MACs per training image; a forward-only pass over training data
(BN recalibration) costs 1 x the student's MACs per image. Validation passes are not counted:
every schedule pays them alike and they are not training.

Why not epochs: the early stages of a multi-stage schedule train a bigger model, and a distilled
epoch also pays for the teacher's forward pass, so "epochs" undercounts exactly the schedules a
search must weigh against each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from pruning.registry import Registry

TERA = 1e12  # MACs per TMAC
TRAIN_PASSES = 3  # forward + backward (input and weight gradients) ~ 3 forward passes


def finetune_tmacs(
    student_macs: float, images_seen: int, teacher_macs: float = 0, extra_images: int = 0
) -> float:
    """Compute of a training phase in TMACs.

    student_macs, teacher_macs: MACs per image (teacher 0 without distillation);
    images_seen: training images the student was trained on (forward + backward, plus the
    teacher's forward); extra_images: images the student only ran forward on (BN recalibration).
    """
    if min(student_macs, images_seen, teacher_macs, extra_images) < 0:
        raise ValueError(
            f"finetune_tmacs needs non-negative counts, got student_macs={student_macs}, "
            f"images_seen={images_seen}, teacher_macs={teacher_macs}, extra_images={extra_images}"
        )
    per_image = TRAIN_PASSES * student_macs + teacher_macs
    return (per_image * images_seen + student_macs * extra_images) / TERA


def epoch_tmacs(student_macs: float, images_per_epoch: int, teacher_macs: float = 0) -> float:
    """One training epoch of a model of `student_macs` MACs per image, in TMACs."""
    return finetune_tmacs(student_macs, images_per_epoch, teacher_macs)


def dense_epochs(tmacs: float, dense_macs: float, train_images: int) -> float:
    """A compute cost in epochs of the unpruned model on the training split. ASHA's budgets are
    set in epochs; a trial knows its data and the unpruned MACs, so it reports its compute in
    this unit and the driver never has to read the data to convert the budgets."""
    return tmacs / epoch_tmacs(dense_macs, train_images)


@dataclass(frozen=True)
class CostObjective:
    """What a search minimises beside accuracy: a metric every trial logs per stage (cumulative
    over the schedule; ASHA's time is the same cost in epochs, see `dense_epochs`), and how to
    say it."""

    name: str
    metric: str  # the StageResult field a trial logs
    unit: str  # printed after a value: "12.5 TMACs"
    label: str  # axis / column title, without the unit

    def axis(self) -> str:
        """An axis label with the unit: 'fine-tune compute (TMACs)'."""
        return f"{self.label} ({self.unit})"

    def format(self, value: float) -> str:
        """'12.5 TMACs', '6 epochs'."""
        return f"{value:.4g} {self.unit}"


COSTS: Registry[CostObjective] = Registry(
    "cost",
    {
        "compute": CostObjective("compute", "train_tmacs", "TMACs", "fine-tune compute"),
        "epochs": CostObjective("epochs", "epochs_used", "epochs", "fine-tune epochs"),
    },
)
DEFAULT_COST = "compute"
