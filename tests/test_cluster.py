"""Beyond one machine, on loopback: a real Ray head and worker node (separate `ray start`
processes, token authentication on), a real `mlflow server`, a shared storage folder, and
`prunetune search --address ... --mlflow-uri http://...` run as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from support.experiment import tiny_experiment
from support.mlflow_server import runs_by_role
from support.procs import run_prunetune
from support.ray_nodes import cluster_env, head_and_worker

pytestmark = pytest.mark.cluster
EXPERIMENT = tiny_experiment("cluster", resources={"cpu": 1})


@pytest.fixture(scope="module")
def ray_nodes():
    with head_and_worker() as (address, _):
        yield address


def prunetune(*argv: str, cwd: Path):
    return run_prunetune(*argv, cwd=cwd, env=cluster_env(), timeout=600)


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
    trials = runs_by_role(mlflow_server, "cluster", "trial")
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
