"""Shared fixtures: tiny models and generated data, all under tmp_path."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def example() -> torch.Tensor:
    return torch.zeros(1, 3, 32, 32)  # (N, C, H, W): only shapes matter for tracing


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole test session (starting one takes 5-18 s)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
