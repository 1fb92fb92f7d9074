"""Channel-importance criteria: the IMPORTANCES registry, name -> Torch-Pruning factory."""

from __future__ import annotations

from collections.abc import Callable

import torch_pruning as tp

from pruning.registry import Registry

IMPORTANCES: Registry[Callable[[], tp.importance.Importance]] = Registry(
    "importance",
    {
        # The DepGraph paper's criterion: L2 magnitude over the whole group, mean-normalised per
        # group so that scores compare across layers under global ranking.
        "group_norm": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        # The control a paper would show: a schedule that only beats this is not ranking anything.
        "random": lambda: tp.importance.RandomImportance(),
    },
)


def make_importance(name: str) -> tp.importance.Importance:
    """A fresh importance object (some hold state between calls); unknown names raise ValueError."""
    return IMPORTANCES[name]()
