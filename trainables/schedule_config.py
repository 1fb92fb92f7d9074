"""A trial's flat config (what the searcher samples) -> a Schedule. Pure: tested without Ray.

Keys: n_stages, total_epochs, lr_schedule, importance, ranking, min_channel_ratio,
sparse_epochs, and per stage i < max_stages: split_i (share of the log speed-up), epochs_i (share
of total_epochs) and lr_i. The per-stage keys are always drawn for all max_stages stages and only
the first n_stages are used: the space stays static, so NSGA-II and GP samplers do not fall back
to random sampling on conditional parameters.
"""

from __future__ import annotations

import math
from typing import Any

from pruning.schedule import Schedule, SparseTraining, Stage, Training, schedule_to_dict


def split_speedups(target: float, shares: list[float]) -> list[float]:
    """Cumulative speed-ups: stage i takes a share of log(target); the last lands exactly."""
    total, acc, speedups = sum(shares), 0.0, []
    for share in shares:
        acc += share
        speedups.append(math.exp(math.log(target) * acc / total))
    speedups[-1] = target
    return speedups


def split_epochs(total: int, shares: list[float]) -> list[int]:
    """Integer epochs per stage summing exactly to `total` (largest-remainder rounding)."""
    raw = [total * s / sum(shares) for s in shares]
    epochs = [math.floor(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: raw[i] - epochs[i], reverse=True)
    for i in by_remainder[: total - sum(epochs)]:
        epochs[i] += 1
    return epochs


def schedule_from_config(
    config: dict[str, Any], target: float, training: Training, sparse_reg: float
) -> Schedule:
    n = int(config["n_stages"])
    if n < 1:
        raise ValueError(f"n_stages={n} is invalid: it must be >= 1")
    speedups = split_speedups(target, [float(config[f"split_{i}"]) for i in range(n)])
    epochs = split_epochs(
        int(config["total_epochs"]), [float(config[f"epochs_{i}"]) for i in range(n)]
    )
    stages = tuple(
        Stage(s, e, float(config[f"lr_{i}"]), config["lr_schedule"])
        for i, (s, e) in enumerate(zip(speedups, epochs, strict=True))
    )
    sparse_epochs = int(config.get("sparse_epochs", 0))
    ratio = float(config["min_channel_ratio"])
    return Schedule(
        target_speedup=target,
        stages=stages,
        importance=config["importance"],
        ranking=config["ranking"],
        min_channels=4 if ratio > 0 else 1,
        min_channel_ratio=ratio,
        sparse=SparseTraining(sparse_epochs, sparse_reg) if sparse_epochs else None,
        training=training,
    )


def reference_config(max_stages: int, total_epochs: int) -> dict[str, Any]:
    """Torch-Pruning's recipe as a point of the space: one shot, global group-norm, no floor,
    then fine-tune with step LR (x0.1 at 60% and 80%) from 0.01."""
    config: dict[str, Any] = {
        "n_stages": 1,
        "total_epochs": total_epochs,
        "lr_schedule": "step",
        "importance": "group_norm",
        "ranking": "global",
        "min_channel_ratio": 0.0,
        "sparse_epochs": 0,
    }
    for i in range(max_stages):
        config |= {f"split_{i}": 1.0, f"epochs_{i}": 1.0, f"lr_{i}": 0.01}
    return config


def flat_params(schedule: Schedule) -> dict[str, Any]:
    """The schedule as MLflow params: stage_1.speedup, training.batch_size, ..."""
    flat: dict[str, Any] = {}
    for key, value in schedule_to_dict(schedule).items():
        if key == "stages":
            for i, stage in enumerate(value):
                flat |= {f"stage_{i + 1}.{k}": v for k, v in stage.items()}
        elif isinstance(value, dict):
            flat |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            flat[key] = value
    return flat | {"n_stages": len(schedule.stages), "total_epochs": schedule.total_epochs}
