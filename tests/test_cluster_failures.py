"""Failures on a real two-node loopback cluster: a worker node dies mid-trial, the driver is
SIGKILLed mid-search. Nothing is lost or counted twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from procs import kill_tree
from run_checks import assert_one_finished_run_per_trial
from test_cluster import EXPERIMENT, ROOT, cluster_env, start_nodes

pytestmark = pytest.mark.cluster
SLOW_TRIALS = EXPERIMENT | {
    "data": {"name": "synthetic", "samples": 1500, "num_classes": 4, "val_size": 0.2},
    # Two stages, 1 + 3 epochs: a trial spends a while between its stage-1 checkpoint and the end.
    "points": [{"n_stages": 2, "total_epochs": 4, "epochs_0": 0.25, "epochs_1": 1.0}],
    "space": {"max_stages": 2, "total_epochs": [4]},
    "max_failures": 2,
}


def start_search(config: Path, address: str, uri: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
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
            *extra,
        ],
        cwd=config.parent,
        env=cluster_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def trial_runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return []
    return [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("prunetune.role") == "trial"
    ]


def wait_for(predicate, what: str, timeout: float = 300) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def worker_node_id(address: str) -> str:
    probe = (
        "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print([n['NodeID'] for n in ray.nodes() if n['Alive'] and "
        "'node:__internal_head__' not in n['Resources']][0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, address],
        env=cluster_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


class StderrLines:
    """The driver's stderr, read as it comes (so the pipe never fills up)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)

    def tail(self) -> str:
        return "".join(self.lines[-40:])


def test_worker_node_dies_mid_trial_and_the_trial_continues(mlflow_server, tmp_path) -> None:
    name = "worker-dies"
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            SLOW_TRIALS
            | {"name": name, "out": str(tmp_path / "run"), "storage_path": str(tmp_path / "shared")}
        )
    )
    with start_nodes() as (address, procs):
        worker = worker_node_id(address)
        search = start_search(config, address, mlflow_server)
        stderr = StderrLines(search)
        try:

            def saved_stage_1(run) -> bool:
                # The driver says "stage 1 saved" once it has registered the stage's
                # checkpoint; a node that dies before that restarts its trial from scratch
                # (Tune reports a result first and registers its checkpoint a moment later).
                trial_id = run.data.tags["prunetune.trial_id"]
                return any(f"{trial_id} stage 1 saved" in line for line in stderr.lines)

            def mid_schedule_on_worker():
                return [
                    r
                    for r in trial_runs(mlflow_server, name)
                    if r.data.tags.get("ray_node_id") == worker
                    and r.info.status == "RUNNING"
                    and saved_stage_1(r)
                ]

            victim = wait_for(mid_schedule_on_worker, "a trial past stage 1 on the worker")[0]
            kill_tree(procs[1].pid)  # the worker node dies: raylet and its workers, at once
            procs[1].wait(timeout=60)
            assert search.wait(timeout=600) == 0, stderr.tail()
        finally:
            if search.poll() is None:
                search.kill()
    runs = trial_runs(mlflow_server, name)
    assert_one_finished_run_per_trial(runs, 4)  # none lost, none counted twice
    client = MlflowClient(mlflow_server)
    dead = client.get_run(victim.info.run_id)  # the attempt that died with the worker
    assert dead.info.status == "FAILED" and "continued as run" in dead.data.tags["error"]
    retry = client.get_run(dead.data.tags["prunetune.retried_as"])
    assert retry.info.status == "FINISHED"
    assert retry.data.tags["prunetune.retry_of"] == dead.info.run_id
    assert retry.data.tags["ray_node_id"] != worker  # retried on the surviving node
    assert retry.data.tags["resumed_from_stage"] == "1"  # continued from its checkpoint
    history = client.get_metric_history(retry.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == [1, 2]  # stage 1 copied from the dead attempt


def test_driver_killed_mid_search_then_resumed(mlflow_server, tmp_path) -> None:
    name = "driver-dies"
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            SLOW_TRIALS
            | {"name": name, "out": str(tmp_path / "run"), "storage_path": str(tmp_path / "shared")}
        )
    )
    with start_nodes() as (address, _):
        search = start_search(config, address, mlflow_server)
        try:
            wait_for(
                lambda: any(r.info.status == "FINISHED" for r in trial_runs(mlflow_server, name)),
                "a finished trial",
            )
            search.send_signal(signal.SIGKILL)
            search.wait(timeout=60)
        finally:
            if search.poll() is None:
                search.kill()
        parent_before = (tmp_path / "run" / "search.json").read_text()
        resumed = start_search(config, address, mlflow_server, "--resume")
        assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    # Trials running when the driver died ran again as new attempts, linked to the dead ones.
    assert_one_finished_run_per_trial(trial_runs(mlflow_server, name), 4)
    assert (tmp_path / "run" / "search.json").read_text() == parent_before  # same parent run
    assert ROOT.is_dir()
