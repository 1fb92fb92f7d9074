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

from pruning.data import BatchLoader, Split
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
    def images_seen(self) -> int:
        """Training images the model took a step on, all epochs together (each image once per
        epoch it was drawn in): what pruning.compute.finetune_tmacs counts."""
        return self.images

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


def lr_factor(schedule: str, progress: float) -> float:
    """LR multiplier at `progress` in [0, 1) of the run."""
    return LR_SCHEDULES[schedule](progress)


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
    if teacher is not None:
        teacher = _freeze(teacher, device)
    optimizer = make_optimizer(model, lr, training)
    steps_per_epoch = max(1, len(loader))
    result = FitResult(epochs=epochs, seconds=0.0, images=0)
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        teacher_finite = torch.ones((), device=device, dtype=torch.bool)
        seen = 0
        for i, (x, y) in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = lr * factor((epoch + i / steps_per_epoch) / epochs)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device):
                logits = model(x)
                if teacher is None:
                    loss = F.cross_entropy(logits, y, label_smoothing=training.label_smoothing)
                else:
                    assert distill is not None
                    with torch.no_grad():
                        soft = teacher(x)
                    teacher_finite &= torch.isfinite(soft).all()
                    loss = distillation_loss(
                        logits,
                        soft,
                        y,
                        alpha=distill.alpha,
                        temperature=distill.temperature,
                        label_smoothing=training.label_smoothing,
                    )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if regularize is not None:
                regularize(model)
            optimizer.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        # One host sync per epoch, not per step: a NaN anywhere makes the epoch's sum NaN.
        mean_loss = (loss_sum / max(seen, 1)).item()
        if not math.isfinite(mean_loss):
            culprit = "" if teacher_finite.item() else " (the teacher's logits were not finite)"
            raise NonFiniteLossError(
                f"training loss became {mean_loss} in epoch {epoch + 1}/{epochs} at lr={lr:g}"
                f"{culprit}; the run was stopped. Lower the learning rate or check the data"
                f"{' and the baseline checkpoint' if culprit else ''}."
            )
        seconds = time.perf_counter() - start
        result.seconds += seconds
        result.images += seen
        stats = {
            "epoch": epoch + 1,
            "train_loss": mean_loss,
            "train_acc": correct.item() / max(seen, 1),
            "seconds": seconds,
        }
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
