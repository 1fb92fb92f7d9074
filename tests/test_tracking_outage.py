"""The tracking server dies mid-search: the trials train on, their results stay in Ray's storage,
`prunetune pareto` and `export` read them from there, and once the server is back `pareto`
copies them into MLflow (real `mlflow server` processes, a real local Ray cluster)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from support.experiment import tiny_experiment
from support.mlflow_server import runs_by_role, start_mlflow_server
from support.polling import wait_for
from support.procs import ROOT, free_port, kill_tree, run_prunetune, start_prunetune, subprocess_env
from support.run_checks import assert_one_finished_run_per_trial

from trainables import tracking

EXPERIMENT = tiny_experiment(
    "outage",
    data={"samples": 1500},
    # Two stages, 1 + 5 epochs: the server dies while the first trial is in its second stage.
    points=[{"n_stages": 2, "total_epochs": 6, "epochs_0": 0.2, "epochs_1": 1.0}],
    space={"total_epochs": [6]},
    num_trials=2,
    max_concurrent=1,
    resources={"cpu": 1},
)


def env() -> dict[str, str]:
    return subprocess_env(
        # Give up on a dead server in about a second instead of MLflow's minutes of retries.
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
        PRUNETUNE_MLFLOW_RETRY_DELAYS="0.2,0.5",
        RAY_USAGE_STATS_ENABLED="0",
    )


def prunetune(*args: str) -> subprocess.CompletedProcess:
    return run_prunetune(*args, cwd=ROOT, env=env(), timeout=300)


def wait_for_stage_1(uri: str, search: subprocess.Popen) -> None:
    def stage_1_logged() -> bool:
        assert search.poll() is None, search.stderr.read()[-3000:]
        runs = runs_by_role(uri, "outage", "trial")
        return any(r.data.metrics.get("stage") == 1.0 for r in runs)

    wait_for(stage_1_logged, "a trial to log its first stage", timeout=240, every=0.2)


@pytest.mark.cluster
def test_server_dies_mid_search_and_nothing_is_lost(tmp_path: Path) -> None:
    store, port = tmp_path / "mlflow", free_port()
    config = tmp_path / "outage.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT | {"out": str(tmp_path / "run")}))
    server, uri = start_mlflow_server(store, port)
    search = start_prunetune("search", str(config), "--mlflow-uri", uri, cwd=ROOT, env=env())
    try:
        wait_for_stage_1(uri, search)
        kill_tree(server.pid)  # the tracking server is gone for the rest of the search
        server.wait(timeout=30)
        _, err = search.communicate(timeout=600)
        assert search.returncode == 0, err[-3000:]
        assert "results are kept in Ray's storage" in err

        # Server still down: the front and an export come from Ray's storage.
        down = prunetune("pareto", str(config), "--mlflow-uri", uri, "--json")
        assert down.returncode == 0, down.stderr[-3000:]
        assert "Reading the 2 trials from Ray's storage" in down.stderr
        assert json.loads(down.stdout)["trials"] == 2
        out = tmp_path / "export"
        exported = prunetune("export", str(config), "--mlflow-uri", uri, "--out", str(out))
        assert exported.returncode == 0, exported.stderr[-3000:]
        assert (out / "pruned.pt").stat().st_size > 0
        assert "stages:" in (out / "schedule.yaml").read_text()

        # Server back on the same store: pareto copies what MLflow missed, once.
        server, uri = start_mlflow_server(store, port)
        up = prunetune("pareto", str(config), "--mlflow-uri", uri, "--json")
        assert up.returncode == 0, up.stderr[-3000:]
        assert "copied from Ray's storage into MLflow" in up.stderr
        runs = tracking.trial_runs(uri, "outage")
        finished = assert_one_finished_run_per_trial(runs, 2)
        copied = [r for r in finished if r.data.tags.get("source") == "ray-storage"]
        assert copied, "the trial that ran while the server was down is missing"
        client = MlflowClient(uri)
        for run in copied:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
            assert sorted(steps) == list(range(1, int(run.data.params["n_stages"]) + 1))
            got = tracking.download(uri, run.info.run_id, "final", tmp_path / run.info.run_id)
            assert (got / "pruned.pt").stat().st_size > 0
        again = prunetune("pareto", str(config), "--mlflow-uri", uri)
        assert again.returncode == 0 and "copied" not in again.stderr
        assert len(tracking.trial_runs(uri, "outage")) == len(runs)
    finally:
        if search.poll() is None:
            kill_tree(search.pid)
        kill_tree(server.pid)
