"""Choosing the torch device: CUDA only when asked for or when one is visible and allowed."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was requested but no CUDA device is visible")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ValueError(f"device={name!r} is invalid: use auto, cpu, cuda or cuda:N")
    return torch.device(name)
