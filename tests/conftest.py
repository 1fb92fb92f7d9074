"""Shared fixtures: tiny models and generated data, all under tmp_path."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def example() -> torch.Tensor:
    return torch.zeros(1, 3, 32, 32)  # (N, C, H, W): only shapes matter for tracing
