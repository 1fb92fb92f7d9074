"""The deploy artefacts parse, and carry the fields Ray and KubeRay read."""

from __future__ import annotations

from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "experiments" / "cluster"


def test_cluster_launcher_config() -> None:
    c = yaml.safe_load((CLUSTER / "ray-cluster-aws.yaml").read_text())
    for key in (
        "cluster_name",
        "max_workers",
        "provider",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    ):
        assert key in c, key
    assert c["provider"]["type"] == "aws" and c["head_node_type"] in c["available_node_types"]
    for name, node in c["available_node_types"].items():
        assert {"node_config", "resources"} <= set(node), name
    gpu = c["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["max_workers"] <= c["max_workers"]
    assert any("prunetune" in cmd for cmd in c["setup_commands"])
    assert any("/shared" in cmd for cmd in c["setup_commands"])
    assert all(
        "RAY_AUTH_MODE=token" in cmd
        for cmd in c["head_start_ray_commands"][1:] + c["worker_start_ray_commands"][1:]
    )
    assert "--address=$RAY_HEAD_IP:6379" in c["worker_start_ray_commands"][-1]


def test_kuberay_rayjob() -> None:
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("prunetune search")
    assert "--mlflow-uri http" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and "/shared" in {m["mountPath"] for m in head["volumeMounts"]}
    (workers,) = cluster["workerGroupSpecs"]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1" and workers["maxReplicas"] >= workers["minReplicas"]


def test_mlflow_server_script_binds_to_loopback() -> None:
    script = (CLUSTER / "mlflow-server.sh").read_text()
    exec_line = next(line for line in script.splitlines() if line.startswith("exec mlflow"))
    assert "--host 127.0.0.1" in script.split("exec mlflow", 1)[1]
    assert exec_line and "--artifacts-destination" in script
