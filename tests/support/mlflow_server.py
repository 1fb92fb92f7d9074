"""A real `mlflow server` (sqlite, proxied artifacts), and a search's runs read back by role,
straight from MLflow rather than through the code under test."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from .polling import wait_for
from .procs import BIN


def start_mlflow_server(folder: Path, port: int) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on 127.0.0.1:port (sqlite and proxied artifacts in `folder`),
    returned with its URI once /health answers."""
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
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

    def healthy() -> bool:
        assert proc.poll() is None, f"mlflow server exited with code {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, f"the mlflow server at {uri} to answer /health", timeout=90)
    except BaseException:
        proc.kill()
        raise
    return proc, uri


def runs_by_role(uri: str, experiment: str, role: str) -> list[Any]:
    """The runs tagged prunetune.role=`role` ("search" or "trial") in an experiment; none while
    the experiment does not exist yet."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("prunetune.role") == role
    ]
