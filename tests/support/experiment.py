"""The tiny search experiment: VGG19 at 1/8 width on 500 generated 4-class images, trials of
one or two stages and at most two epochs, on the CPU. Each test varies what it checks."""

from __future__ import annotations

import copy
from typing import Any

TINY: dict[str, Any] = {
    "target_speedup": 3.0,
    "width": 0.125,
    "data": {"name": "synthetic", "samples": 500, "num_classes": 4, "val_size": 0.2},
    "baseline": {"pretrain_epochs": 1},
    "space": {"max_stages": 2, "total_epochs": [1, 2]},
    "training": {"batch_size": 64},
    "num_trials": 4,
    "max_concurrent": 2,
    "device": "cpu",
    # No MLflow models: logging them costs a trial 2-5 s (pytorch) and 3-10 s more (onnx) on
    # this 2-core machine; the tests of model logging turn it on.
    "mlflow": {"log_models": False},
}


def tiny_experiment(name: str, **changes: Any) -> dict[str, Any]:
    """The tiny experiment named `name`, with `changes` on top. A change to a section that is a
    mapping (data, space, ...) updates only the keys it gives; anything else replaces the value."""
    experiment = copy.deepcopy(TINY) | {"name": name}
    for key, value in changes.items():
        old = experiment.get(key)
        experiment[key] = (
            old | value if isinstance(old, dict) and isinstance(value, dict) else value
        )
    return experiment
