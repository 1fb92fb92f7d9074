"""Per-trial resources on a CPU-only cluster that declares one logical GPU: concurrency follows
the GPU fraction, trials get the GPU Ray assigns them, and a trial given none never sees or
initialises CUDA."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from mlflow.tracking import MlflowClient
from test_cluster import BIN, EXPERIMENT, cluster_env, wait_for_nodes

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def gpu_head():
    port = free_port()
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=1",
            "--include-dashboard=false",
            "--block",
            "--disable-usage-stats",
        ],
        env=cluster_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(5)
        wait_for_nodes(f"127.0.0.1:{port}", 1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def search(address: str, uri: str, tmp_path: Path, name: str, gpu: float) -> list:
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            EXPERIMENT
            | {
                "name": name,
                "num_trials": 2,
                "max_concurrent": 2,
                "out": str(tmp_path / name),
                "resources": {"cpu": 1, "gpu": gpu},
            }
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "search.cli",
            "search",
            str(config),
            "--address",
            address,
            "--mlflow-uri",
            uri,
        ],
        cwd=tmp_path,
        env=cluster_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("prunetune.role") == "trial"
    ]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    return runs


def overlapped(runs: list) -> bool:
    a, b = sorted(runs, key=lambda r: r.info.start_time)
    return b.info.start_time < a.info.end_time


def test_half_a_gpu_each_runs_two_trials_at_once(gpu_head, mlflow_server, tmp_path) -> None:
    runs = search(gpu_head, mlflow_server, tmp_path, "half-gpu", 0.5)
    assert overlapped(runs)
    assert all(r.data.tags["gpu_ids"] == "0" for r in runs)
    assert all(r.data.tags["cuda_visible_devices"] == "0" for r in runs)


def test_a_whole_gpu_each_runs_one_trial_at_a_time(gpu_head, mlflow_server, tmp_path) -> None:
    runs = search(gpu_head, mlflow_server, tmp_path, "whole-gpu", 1.0)
    assert not overlapped(runs)


def test_a_trial_without_a_gpu_never_touches_cuda(gpu_head, mlflow_server, tmp_path) -> None:
    runs = search(gpu_head, mlflow_server, tmp_path, "no-gpu", 0.0)
    for r in runs:
        assert r.data.tags["gpu_ids"] == "" and r.data.tags["device"] == "cpu"
        assert r.data.tags["cuda_visible_devices"] in ("", "<unset>")
        assert r.data.tags["cuda_initialized"] == "false"
