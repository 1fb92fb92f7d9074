"""One training loop for pretraining and fine-tuning, plus evaluation.

SGD with momentum (the DepGraph paper's recipe), an LR schedule from LR_SCHEDULES evaluated
per iteration, optional label smoothing, optional distillation from a frozen teacher
(pruning.schedule.Distill), an optional sparsity regulariser called between backward() and
step(), and bf16 autocast + channels_last on CUDA. Build a fresh optimiser for
every call: pruning replaces parameter tensors, so an old optimiser would update dead tensors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from pruning.data import BatchLoader, Dataset, Split
from pruning.registry import Registry

if TYPE_CHECKING:  # pruning.schedule imports LR_SCHEDULES from here
    from pruning.schedule import Distill, Training

# Fractions of the run: the paper decays x0.1 at epochs 60 and 80 of 100.
STEP_MILESTONES = (0.6, 0.8)


class NonFiniteLossError(FloatingPointError):
    """Training diverged: the loss became NaN or infinite."""


@dataclass
class FitResult:
    epochs: int
    seconds: float
    images: int
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def _step(progress: float) -> float:
    return 0.1 ** sum(progress >= m for m in STEP_MILESTONES)


def _cosine(progress: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _constant(progress: float) -> float:
    return 1.0


# LR schedules: name -> LR multiplier at `progress` in [0, 1) of the run.
LR_SCHEDULES: Registry[Callable[[float], float]] = Registry(
    "lr_schedule", {"step": _step, "cosine": _cosine, "constant": _constant}
)


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def _autocast(device: torch.device) -> torch.autocast:
    # bf16 needs no loss scaling; on CPU autocast stays off (it slows small convs down here).
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    y: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)),
    batch mean. Logits are (N, classes), taken in fp32 (under autocast they arrive in bf16)."""
    student, teacher = student.float(), teacher.float()
    ce = F.cross_entropy(student, y, label_smoothing=label_smoothing)
    t = temperature
    kl = F.kl_div(
        F.log_softmax(student / t, dim=1),
        F.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - alpha) * ce + alpha * t * t * kl


def _freeze(teacher: nn.Module, device: torch.device) -> nn.Module:
    """The teacher on the trial's device with training's memory format, in eval mode (BN uses its
    running statistics), with no gradients."""
    teacher = _prepare(teacher, device).eval()
    teacher.requires_grad_(False)
    return teacher


def make_optimizer(model: nn.Module, lr: float, training: Training) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
        nesterov=training.nesterov,
    )


@dataclass
class _EpochSums:
    """One epoch's running sums, kept on the device: one host sync per epoch, not per step
    (a NaN anywhere makes the loss sum NaN)."""

    loss: torch.Tensor  # sum over images of the batch-mean loss x batch size
    correct: torch.Tensor  # top-1 hits
    teacher_finite: torch.Tensor  # False once a teacher logit was NaN or infinite
    seen: int = 0  # images

    @classmethod
    def zeros(cls, device: torch.device) -> _EpochSums:
        return cls(
            torch.zeros((), device=device),
            torch.zeros((), device=device, dtype=torch.long),
            torch.ones((), device=device, dtype=torch.bool),
        )

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += loss.detach() * len(y)
        self.correct += (logits.argmax(1) == y).sum()
        self.seen += len(y)


# (logits, x, y, sums) -> the batch's loss; a teacher's non-finite logits are noted in sums.
_LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, _EpochSums], torch.Tensor]


def _loss_fn(training: Training, distill: Distill | None, teacher: nn.Module | None) -> _LossFn:
    """Plain cross-entropy, or with a teacher distillation_loss against its logits (taken
    without gradients)."""

    def loss_of(
        logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, sums: _EpochSums
    ) -> torch.Tensor:
        if teacher is None:
            return F.cross_entropy(logits, y, label_smoothing=training.label_smoothing)
        assert distill is not None
        with torch.no_grad():
            soft = teacher(x)
        sums.teacher_finite &= torch.isfinite(soft).all()
        return distillation_loss(
            logits,
            soft,
            y,
            alpha=distill.alpha,
            temperature=distill.temperature,
            label_smoothing=training.label_smoothing,
        )

    return loss_of


def _train_epoch(
    model: nn.Module,
    loader: BatchLoader,
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    loss_of: _LossFn,
    regularize: Callable[[nn.Module], None] | None,
    device: torch.device,
) -> _EpochSums:
    """One pass over `loader`, a step per batch; `lr_at(i)` is batch i's learning rate."""
    model.train()
    sums = _EpochSums.zeros(device)
    for i, (x, y) in enumerate(loader):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(i)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device):
            logits = model(x)
            loss = loss_of(logits, x, y, sums)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if regularize is not None:
            regularize(model)
        optimizer.step()
        sums.add(loss, logits, y)
    return sums


def _finite_mean_loss(sums: _EpochSums, epoch: int, epochs: int, lr: float) -> float:
    """The epoch's mean loss; NonFiniteLossError (naming the teacher when its logits were the
    cause) when it is NaN or infinite."""
    mean_loss = (sums.loss / max(sums.seen, 1)).item()
    if not math.isfinite(mean_loss):
        culprit = "" if sums.teacher_finite.item() else " (the teacher's logits were not finite)"
        raise NonFiniteLossError(
            f"training loss became {mean_loss} in epoch {epoch + 1}/{epochs} at lr={lr:g}"
            f"{culprit}; the run was stopped. Lower the learning rate or check the data"
            f"{' and the baseline checkpoint' if culprit else ''}."
        )
    return mean_loss


def _epoch_stats(
    sums: _EpochSums, epoch: int, epochs: int, lr: float, start: float
) -> dict[str, float]:
    """History entry of 0-based `epoch`, begun at perf_counter() `start`."""
    mean_loss = _finite_mean_loss(sums, epoch, epochs, lr)
    return {
        "epoch": epoch + 1,
        "train_loss": mean_loss,
        "train_acc": sums.correct.item() / max(sums.seen, 1),
        "seconds": time.perf_counter() - start,
    }


def fit(
    model: nn.Module,
    loader: BatchLoader,
    *,
    epochs: int,
    lr: float,
    lr_schedule: str,
    training: Training,
    device: torch.device,
    regularize: Callable[[nn.Module], None] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    distill: Distill | None = None,
    teacher: nn.Module | None = None,
) -> FitResult:
    """Train `model` in place for `epochs` epochs; returns timing and per-epoch loss/accuracy.

    With `distill`, the loss is distillation_loss against `teacher`'s logits (computed without
    gradients); without it, plain cross-entropy."""
    if (distill is None) != (teacher is None):
        raise ValueError("fit: distill and teacher go together (both given or neither)")
    factor = LR_SCHEDULES[lr_schedule]
    model = _prepare(model, device)
    loss_of = _loss_fn(training, distill, None if teacher is None else _freeze(teacher, device))
    optimizer = make_optimizer(model, lr, training)
    steps_per_epoch = max(1, len(loader))
    result = FitResult(epochs=epochs, seconds=0.0, images=0)
    for epoch in range(epochs):
        start = time.perf_counter()

        def lr_at(i: int, epoch: int = epoch) -> float:  # the schedule, evaluated per batch
            return lr * factor((epoch + i / steps_per_epoch) / epochs)

        sums = _train_epoch(model, loader, optimizer, lr_at, loss_of, regularize, device)
        stats = _epoch_stats(sums, epoch, epochs, lr, start)
        result.seconds += stats["seconds"]
        result.images += sums.seen
        result.history.append(stats)
        if on_epoch is not None:
            on_epoch(epoch + 1, stats)
    return result


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device,
    batch_size: int = 500,
) -> tuple[float, float]:
    """Top-1 accuracy in [0, 1] and mean cross-entropy over `split`."""
    model = _prepare(model, device)
    model.eval()
    loader = BatchLoader(split, batch_size, mean, std, augment=False, shuffle=False)
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y in loader:
        with _autocast(device):
            logits = model(x.to(device))
        y = y.to(device)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
    if seen == 0:
        raise ValueError("cannot evaluate on an empty split")
    return correct / seen, loss_sum / seen


def validate(model: nn.Module, data: Dataset, device: torch.device) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) on `data`'s val split."""
    return evaluate(model, data.val, data.mean, data.std, device)


def train_loader(data: Dataset, batch_size: int, seed: int) -> BatchLoader:
    """Augmented, shuffled training batches of `data`; `seed` fixes their order and crops."""
    return BatchLoader(
        data.train, batch_size, data.mean, data.std, augment=True, shuffle=True, seed=seed
    )
