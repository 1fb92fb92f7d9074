"""Registry of channel-importance criteria: name -> Torch-Pruning importance factory."""

from __future__ import annotations

from collections.abc import Callable

import torch_pruning as tp

IMPORTANCE_FACTORIES: dict[str, Callable[[], tp.importance.Importance]] = {
    # The DepGraph paper's criterion: L2 magnitude over the whole group, mean-normalised per
    # group so that scores compare across layers under global ranking.
    "group_norm": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "lamp": lambda: tp.importance.LAMPImportance(p=2),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    # The control a paper would show: a schedule that only beats this is not ranking anything.
    "random": lambda: tp.importance.RandomImportance(),
}


def make_importance(name: str) -> tp.importance.Importance:
    try:
        return IMPORTANCE_FACTORIES[name]()
    except KeyError:
        valid = ", ".join(sorted(IMPORTANCE_FACTORIES))
        raise ValueError(f"importance={name!r} is unknown; valid names: {valid}") from None
