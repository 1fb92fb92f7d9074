"""Train the unpruned baseline: `prunetune pretrain CONFIG.yaml`.

The model is the registry's (`model: {arch, width, num_classes, kwargs}`, pruning.models). The
defaults train VGG19 with lr 0.1 for 200 epochs on the "step" schedule of pruning.train,
which decays the LR x0.1 at 60% and 80% of the run (train.STEP_MILESTONES): at epochs 120 and
160 of 200. A config shortens the run for CPUs; the decays stay at the same fractions of it.
The best epoch is chosen on validation, never on test.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from pruning.data import Dataset, DataSpec, load_dataset
from pruning.devices import resolve_device
from pruning.models import build_model
from pruning.run_info import ModelInfo, with_model_section
from pruning.schedule import Training
from pruning.train import LR_SCHEDULES, FitResult, fit, train_loader, validate
from pruning.validate import build_dataclass, number_in, positive_int, require


@dataclass(frozen=True)
class PretrainConfig:
    data: DataSpec = field(default_factory=DataSpec)
    # The registry's model (a top-level `width`, the form before the registry, is model.width).
    model: ModelInfo = field(default_factory=ModelInfo)
    epochs: int = 200
    lr: float = 0.1
    lr_schedule: str = "step"
    training: Training = field(default_factory=Training)
    seed: int = 0
    device: str = "auto"
    out: str = "runs/pretrain"

    def __post_init__(self) -> None:
        require(
            isinstance(self.model, ModelInfo) and self.model.width is not None,
            "model.width",
            getattr(self.model, "width", self.model),
            "a number: the channel multiplier of the model to train",
        )
        positive_int("epochs", self.epochs, minimum=1)
        number_in("lr", self.lr, 0.0, 10.0)
        LR_SCHEDULES.check("lr_schedule", self.lr_schedule)
        positive_int("seed", self.seed)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'data.train_subset=500' -> (['data', 'train_subset'], 500), the value read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override {text!r} is invalid: write KEY=VALUE, e.g. epochs=5")
    return key.split("."), yaml.safe_load(value)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return raw


def load_pretrain_config(path: str | Path, overrides: list[str] = ()) -> PretrainConfig:  # type: ignore[assignment]
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    raw = apply_overrides(raw, list(overrides))
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping of settings")
    try:
        raw = with_model_section(raw)
        raw["data"] = build_dataclass(DataSpec, raw.get("data", {}), "data")
        raw["training"] = build_dataclass(Training, raw.get("training", {}), "training")
        return build_dataclass(PretrainConfig, raw, "pretrain config")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


class _BestEpoch:
    """The on_epoch hook of pretraining: evaluates on val after every epoch and keeps a CPU copy
    of the best weights (evaluating costs a pass over val, 10% of train: worth it to keep the
    best)."""

    def __init__(
        self,
        model: torch.nn.Module,
        data: Dataset,
        device: torch.device,
        on_epoch: Callable[[int, dict[str, float]], None] | None,
    ) -> None:
        self.model, self.data, self.device, self.on_epoch = model, data, device, on_epoch
        self.val_acc, self.epoch = -1.0, 0
        self.state: dict[str, torch.Tensor] = {}

    def __call__(self, epoch: int, stats: dict[str, float]) -> None:
        stats["val_acc"], stats["val_loss"] = validate(self.model, self.data, self.device)
        if stats["val_acc"] > self.val_acc:
            self.val_acc, self.epoch = stats["val_acc"], epoch
            self.state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        if self.on_epoch is not None:
            self.on_epoch(epoch, stats)


def _write_outputs(
    config: PretrainConfig, data: Dataset, best: _BestEpoch, fitted: FitResult, start: float
) -> dict[str, Any]:
    """baseline.pt (the best epoch's state dict) and metrics.json in config.out; the metrics."""
    out = Path(config.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(best.state, out / "baseline.pt")
    metrics = {
        "val_acc": best.val_acc,
        "best_epoch": best.epoch,
        "epochs": config.epochs,
        "model": config.model.to_dict() | {"num_classes": data.num_classes},
        "width": config.model.width,
        "num_classes": data.num_classes,
        "data": data.description,
        "train_seconds": fitted.seconds,
        "wall_seconds": time.perf_counter() - start,
        "images_per_second": fitted.images_per_second,
        "history": fitted.history,
        "config": asdict(config) | {"model": config.model.to_dict()},
        "checkpoint": str(out / "baseline.pt"),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def pretrain(
    config: PretrainConfig, on_epoch: Callable[[int, dict[str, float]], None] | None = None
) -> dict[str, Any]:
    """Train, keep the best-on-validation weights, write baseline.pt and metrics.json to `out`."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    data = load_dataset(config.data, device)
    h = data.train.images.shape[2]  # (N, 3, H, W): the model sees the data's size
    model = build_model(config.model.spec(data.num_classes, h))
    best = _BestEpoch(model, data, device, on_epoch)
    start = time.perf_counter()
    fitted = fit(
        model,
        train_loader(data, config.training.batch_size, config.seed),
        epochs=config.epochs,
        lr=config.lr,
        lr_schedule=config.lr_schedule,
        training=config.training,
        device=device,
        on_epoch=best,
    )
    return _write_outputs(config, data, best, fitted, start)
