"""Shared fixtures: a seed for every test, one local Ray cluster and one real `mlflow server`
per session. The helpers behind them, and those the tests call themselves, are in tests/support/."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from support.procs import free_port

torch.set_num_threads(2)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked gpu need CUDA: skipped, with the reason, where torch sees none.
    PRUNETUNE_REQUIRE_GPU=1 (experiments/gpu/check.sh) makes a missing GPU an error instead, so
    a GPU check never passes by skipping its tests."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_tests or torch.cuda.is_available():
        return
    if os.environ.get("PRUNETUNE_REQUIRE_GPU") == "1":
        raise pytest.UsageError(
            "PRUNETUNE_REQUIRE_GPU=1, but torch.cuda.is_available() is False: no CUDA device "
            f"for the {len(gpu_tests)} tests marked gpu (torch {torch.__version__})"
        )
    skip = pytest.mark.skip(
        reason="marked gpu: needs a CUDA device, and torch.cuda.is_available() is False here"
    )
    for item in gpu_tests:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every test starts from the same seed, so a random weight or sample is the same each run
    (tests that compare seeds still set their own)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole test session (starting one takes 5-18 s)."""
    ray = pytest.importorskip("ray")
    # address="local": a new cluster even if a `ray start` from another test left its address behind
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with sqlite and proxied artifact storage."""
    from support.mlflow_server import start_mlflow_server  # imports mlflow: only when used

    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"), free_port())
    try:
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)
