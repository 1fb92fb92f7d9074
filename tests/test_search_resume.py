"""An interrupted search (Ctrl-C in the driver) continues with --resume: nothing re-run or lost."""

from __future__ import annotations

import pytest
import yaml
from mlflow.tracking import MlflowClient
from support.experiment import tiny_experiment
from support.mlflow_server import runs_by_role
from support.procs import interrupt_search_at
from support.run_checks import assert_one_finished_run_per_trial

from search.cli import main

EXPERIMENT = tiny_experiment("resume", num_trials=3, max_concurrent=1)


@pytest.mark.usefixtures("ray_cluster")
def test_resume_finishes_the_search_without_repeating_or_losing_trials(tmp_path) -> None:
    config = tmp_path / "resume.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT | {"out": str(tmp_path / "run")}))
    interrupt_search_at(config, "finished | done 1/3", tmp_path)

    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    client = MlflowClient(uri)
    trials = runs_by_role(uri, "resume", "trial")
    before = {r.info.run_id: r for r in trials if r.info.status == "FINISHED"}
    assert 1 <= len(before) < 3

    assert main(["search", str(config), "--resume"]) == 0

    parents = runs_by_role(uri, "resume", "search")
    trials = runs_by_role(uri, "resume", "trial")
    assert len(parents) == 1 and parents[0].data.tags.get("resumed") == "true"
    # A trial the interruption stopped ran again as a new attempt, linked to the old one.
    trials = assert_one_finished_run_per_trial(trials, 3)
    for run_id, run in before.items():  # finished before the interruption: not run again
        again = client.get_run(run_id)
        assert again.info.end_time == run.info.end_time
        history = client.get_metric_history(run_id, "val_acc")
        assert len(history) == int(run.data.params["n_stages"])
