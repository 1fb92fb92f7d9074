"""Per-trial resources on a CPU-only cluster that declares one logical GPU: concurrency follows
the GPU fraction, trials get the GPU Ray assigns them, and a trial given none never sees or
initialises CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from support.experiment import tiny_experiment
from support.mlflow_server import runs_by_role
from support.procs import run_prunetune
from support.ray_nodes import cluster_env, head_node

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def gpu_head():
    with head_node("--num-cpus=2", "--num-gpus=1") as (address, _):
        yield address


def search(address: str, uri: str, tmp_path: Path, name: str, gpu: float) -> list:
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        yaml.safe_dump(
            tiny_experiment(
                name,
                num_trials=2,
                max_concurrent=2,
                out=str(tmp_path / name),
                resources={"cpu": 1, "gpu": gpu},
            )
        )
    )
    argv = ("search", str(config), "--address", address, "--mlflow-uri", uri)
    done = run_prunetune(*argv, cwd=tmp_path, env=cluster_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_by_role(uri, name, "trial")
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
