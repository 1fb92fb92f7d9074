"""Beyond one machine, on loopback: a real Ray head and worker node (separate `ray start`
processes, token authentication on), a real `mlflow server`, a shared storage folder, and
`prunetune search --address ... --mlflow-uri http://...` run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from conftest import free_port
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.cluster

EXPERIMENT = {
    "name": "cluster",
    "target_speedup": 3.0,
    "width": 0.125,
    "data": {"name": "synthetic", "samples": 500, "num_classes": 4, "val_size": 0.2},
    "baseline": {"pretrain_epochs": 1},
    "space": {"max_stages": 2, "total_epochs": [1, 2]},
    "training": {"batch_size": 64},
    "num_trials": 4,
    "max_concurrent": 2,
    "resources": {"cpu": 1},
    "device": "cpu",
}


def cluster_env() -> dict[str, str]:
    return os.environ | {
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "RAY_AUTH_MODE": "token",  # Ray's token authentication stays on
        "RAY_USAGE_STATS_ENABLED": "0",
    }


@pytest.fixture(scope="module")
def ray_nodes():
    with start_nodes() as (address, _):
        yield address


@contextmanager
def start_nodes() -> Iterator[tuple[str, list[subprocess.Popen]]]:
    """Head + one worker, each `ray start --block` so stopping our process stops its node."""
    port = free_port()
    common = ["--num-cpus=1", "--block", "--disable-usage-stats"]
    procs = [
        subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                f"--port={port}",
                "--include-dashboard=false",
                *common,
            ],
            env=cluster_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    address = f"127.0.0.1:{port}"
    try:
        time.sleep(8)
        procs.append(
            subprocess.Popen(
                [str(BIN / "ray"), "start", f"--address={address}", *common],
                env=cluster_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for_nodes(address, 2)
        yield address, procs
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for_nodes(address: str, count: int) -> None:
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(n['Alive'] for n in ray.nodes()))"
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        out = subprocess.run(
            [sys.executable, "-c", probe, address],
            env=cluster_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise AssertionError(f"the Ray cluster at {address} never had {count} nodes")


def prunetune(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search.cli", *argv],
        cwd=cwd,
        env=cluster_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_search_across_two_nodes_tracked_on_a_server(ray_nodes, mlflow_server, tmp_path):
    config = tmp_path / "cluster.yaml"
    shared = tmp_path / "shared"  # what NFS/S3 would be on a real cluster
    config.write_text(
        yaml.safe_dump(EXPERIMENT | {"out": str(tmp_path / "run"), "storage_path": str(shared)})
    )
    done = prunetune(
        "search", str(config), "--address", ray_nodes, "--mlflow-uri", mlflow_server, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(mlflow_server)  # everything read back over HTTP
    exp = client.get_experiment_by_name("cluster")
    trials = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("prunetune.role") == "trial"
    ]
    assert len(trials) == 4 and all(t.info.status == "FINISHED" for t in trials)
    nodes = {t.data.tags["ray_node_id"] for t in trials}
    assert len(nodes) >= 2, nodes
    for t in trials:
        assert t.data.metrics["completed"] == 1.0
        files = {f.path for f in client.list_artifacts(t.info.run_id, "final")}
        assert "final/pruned.pt" in files

    front = prunetune("pareto", "cluster", "--mlflow-uri", mlflow_server, "--json", cwd=tmp_path)
    assert front.returncode == 0, front.stderr[-2000:]
    assert json.loads(front.stdout)["front"]
    out = tmp_path / "export"
    exported = prunetune(
        "export",
        "cluster",
        "--mlflow-uri",
        mlflow_server,
        "--pick",
        "knee",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (out / "pruned.pt").is_file() and (out / "schedule.yaml").is_file()
    per_node = {n: sum(t.data.tags["ray_node_id"] == n for t in trials) for n in nodes}
    print(f"trials per node: {per_node}")
