"""Failures on a real two-node loopback cluster: a worker node dies mid-trial, the driver is
SIGKILLed mid-search. Nothing is lost or counted twice."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from support.experiment import tiny_experiment
from support.mlflow_server import runs_by_role
from support.polling import wait_for
from support.procs import ROOT, kill_tree, start_prunetune
from support.ray_nodes import cluster_env, head_and_worker, worker_node_id
from support.run_checks import assert_one_finished_run_per_trial

pytestmark = pytest.mark.cluster
SLOW_TRIALS = tiny_experiment(
    "cluster",
    resources={"cpu": 1},
    data={"samples": 1500},
    # Two stages, 1 + 3 epochs: a trial spends a while between its stage-1 checkpoint and the end.
    points=[{"n_stages": 2, "total_epochs": 4, "epochs_0": 0.25, "epochs_1": 1.0}],
    space={"total_epochs": [4]},
    max_failures=2,
)


def write_config(folder: Path, name: str) -> Path:
    """The slow experiment as `name`, its run and Ray's shared storage (what NFS or S3 would be
    on a real cluster) in `folder`."""
    config = folder / "c.yaml"
    where = {"out": str(folder / "run"), "storage_path": str(folder / "shared")}
    config.write_text(yaml.safe_dump(SLOW_TRIALS | {"name": name} | where))
    return config


def start_search(config: Path, address: str, uri: str, *extra: str) -> subprocess.Popen:
    argv = ("search", str(config), "--address", address, "--mlflow-uri", uri, *extra)
    return start_prunetune(*argv, cwd=config.parent, env=cluster_env())


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
    config = write_config(tmp_path, name)
    with head_and_worker() as (address, procs):
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
                    for r in runs_by_role(mlflow_server, name, "trial")
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
    runs = runs_by_role(mlflow_server, name, "trial")
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
    config = write_config(tmp_path, name)
    with head_and_worker() as (address, _):
        search = start_search(config, address, mlflow_server)
        try:
            wait_for(
                lambda: any(
                    r.info.status == "FINISHED" for r in runs_by_role(mlflow_server, name, "trial")
                ),
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
    assert_one_finished_run_per_trial(runs_by_role(mlflow_server, name, "trial"), 4)
    assert (tmp_path / "run" / "search.json").read_text() == parent_before  # same parent run
    assert ROOT.is_dir()
