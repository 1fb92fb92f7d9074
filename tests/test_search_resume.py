"""An interrupted search (Ctrl-C in the driver) continues with --resume: nothing re-run or lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from run_checks import assert_one_finished_run_per_trial

from search.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = {
    "name": "resume",
    "target_speedup": 3.0,
    "width": 0.125,
    "data": {"name": "synthetic", "samples": 500, "num_classes": 4, "val_size": 0.2},
    "baseline": {"pretrain_epochs": 1},
    "space": {"max_stages": 2, "total_epochs": [1, 2]},
    "training": {"batch_size": 64},
    "num_trials": 3,
    "max_concurrent": 1,
    "device": "cpu",
}


def interrupt_after_first_trial(config: Path, cwd: Path) -> None:
    env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "search", str(config)],
        cwd=cwd,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "finished | done 1/3" in line:
                proc.send_signal(signal.SIGINT)  # what Ctrl-C does
                break
            assert time.monotonic() < deadline, "the first trial did not finish in time"
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.usefixtures("ray_cluster")
def test_resume_finishes_the_search_without_repeating_or_losing_trials(tmp_path) -> None:
    config = tmp_path / "resume.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT | {"out": str(tmp_path / "run")}))
    interrupt_after_first_trial(config, tmp_path)

    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("resume")
    before = {
        r.info.run_id: r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("prunetune.role") == "trial" and r.info.status == "FINISHED"
    }
    assert 1 <= len(before) < 3

    assert main(["search", str(config), "--resume"]) == 0

    all_runs = client.search_runs([exp.experiment_id])
    parents = [r for r in all_runs if r.data.tags.get("prunetune.role") == "search"]
    trials = [r for r in all_runs if r.data.tags.get("prunetune.role") == "trial"]
    assert len(parents) == 1 and parents[0].data.tags.get("resumed") == "true"
    # A trial the interruption stopped ran again as a new attempt, linked to the old one.
    trials = assert_one_finished_run_per_trial(trials, 3)
    for run_id, run in before.items():  # finished before the interruption: not run again
        again = client.get_run(run_id)
        assert again.info.end_time == run.info.end_time
        history = client.get_metric_history(run_id, "val_acc")
        assert len(history) == int(run.data.params["n_stages"])
