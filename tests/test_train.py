from __future__ import annotations

import math

import pytest
import torch

from pruning.data import BatchLoader, DataSpec, load_dataset
from pruning.models import vgg19
from pruning.prune import prune_to_speedup
from pruning.schedule import Training
from pruning.train import LR_SCHEDULES, NonFiniteLossError, evaluate, fit

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataSpec(name="synthetic", samples=900, num_classes=4, val_size=0.2))


def loader(data, seed: int = 0, batch: int = 64) -> BatchLoader:
    return BatchLoader(
        data.train, batch, data.mean, data.std, augment=True, shuffle=True, seed=seed
    )


def train(
    model,
    data,
    *,
    epochs: int = 1,
    lr: float = 0.01,
    lr_schedule: str = "constant",
    seed: int = 0,
    batch: int = 64,
    **kwargs,
):
    """fit() on `data`'s training split with the default Training, on the CPU."""
    return fit(
        model,
        loader(data, seed=seed, batch=batch),
        epochs=epochs,
        lr=lr,
        lr_schedule=lr_schedule,
        training=Training(),
        device=CPU,
        **kwargs,
    )


@pytest.mark.parametrize(
    "schedule, progress, expected",
    [
        ("constant", 0.9, 1.0),
        ("cosine", 0.0, 1.0),
        ("cosine", 0.5, 0.5),
        ("cosine", 1.0, 0.0),
        ("step", 0.59, 1.0),
        ("step", 0.6, 0.1),
        ("step", 0.8, 0.01),
    ],
)
def test_lr_factor(schedule: str, progress: float, expected: float) -> None:
    assert LR_SCHEDULES[schedule](progress) == pytest.approx(expected, abs=1e-12)


def test_unknown_lr_schedule() -> None:
    with pytest.raises(ValueError, match="lr_schedule"):
        _ = LR_SCHEDULES["linear"]


def test_fit_learns_and_evaluate_reports(data) -> None:
    torch.manual_seed(0)
    model = vgg19(data.num_classes, 0.125)
    before, _ = evaluate(model, data.val, data.mean, data.std, CPU)
    result = train(model, data, epochs=3, lr=0.05, lr_schedule="cosine")
    after, loss = evaluate(model, data.val, data.mean, data.std, CPU)
    assert len(result.history) == 3 and result.images == 3 * len(data.train.labels)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert after > max(before, 1.5 / data.num_classes)
    assert 0.0 <= after <= 1.0 and math.isfinite(loss)


def test_fit_is_reproducible_on_cpu(data) -> None:
    def run() -> dict[str, torch.Tensor]:
        torch.manual_seed(1)
        model = vgg19(data.num_classes, 0.125)
        train(model, data, lr=0.05, lr_schedule="step", seed=5)
        return model.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_the_run(data) -> None:
    model = vgg19(data.num_classes, 0.125)
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="loss became nan"):
        train(model, data, epochs=2)


def test_regulariser_runs_between_backward_and_step(data) -> None:
    model = vgg19(data.num_classes, 0.125)
    seen: list[bool] = []

    def regularize(m: torch.nn.Module) -> None:
        seen.append(m.classifier.weight.grad is not None)

    train(model, data, batch=300, regularize=regularize)
    assert seen == [True] * len(loader(data, batch=300))


def test_fine_tune_after_pruning_updates_the_new_tensors(data) -> None:
    model = vgg19(data.num_classes, 0.25)
    prune_to_speedup(model, torch.zeros(1, 3, 32, 32), 4.0)
    before = model.block2[0].weight.detach().clone()
    train(model, data, lr=0.05)
    assert not torch.equal(before, model.block2[0].weight)
