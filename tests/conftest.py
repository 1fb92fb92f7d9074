"""Shared fixtures: tiny models and generated data, all under tmp_path."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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
    # address="local": a new cluster even if a `ray start` from another test left its address behind
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(folder: Path, port: int) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on 127.0.0.1:port (sqlite and proxied artifacts in `folder`),
    returned once /health answers."""
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'db.sqlite'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("mlflow server did not start")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with sqlite and proxied artifact storage."""
    proc, uri = start_mlflow_server(tmp_path_factory.mktemp("mlflow_server"), free_port())
    try:
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)
