"""A search's lifecycle (issue 15): --resume with nothing to resume or under a changed config is
refused before any compute (items 6, 7); trials that can never be placed stop the search before
any trial (item 5); a search whose every trial failed exits non-zero saying why, and `pareto`
lists the failed trials with their errors, never `nan` (item 4)."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient
from support.experiment import tiny_experiment

import search.tuner
from search.accounting import Spent
from search.cli import main
from search.cluster import WAIT_ENV, check_resources
from search.config import config_from_dict, config_to_dict, load_config
from search.tuner import SearchOutcome, failure_summary
from trainables import tracking


class ComputeStarted(RuntimeError):
    pass


@pytest.fixture
def no_compute(monkeypatch):
    """run_search stands for the compute: reaching it raises ComputeStarted."""

    def run_search(config, resume=False):
        raise ComputeStarted(f"compute started (resume={resume})")

    monkeypatch.setattr(search.tuner, "run_search", run_search)


def _config_file(tmp_path, **changes):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment("life", out=str(tmp_path / "run"), **changes)))
    return path


def _stored_search(path):
    """The out folder a search leaves: its state and the config it started with."""
    config = load_config(path)
    config.out_dir.mkdir(parents=True)
    (config.out_dir / "search.json").write_text(json.dumps({"parent_run_id": "p"}))
    (config.out_dir / "experiment.yaml").write_text(yaml.safe_dump(config_to_dict(config)))


@pytest.mark.usefixtures("no_compute")
def test_resume_with_nothing_to_resume_is_refused_before_anything_is_made(tmp_path, capsys) -> None:
    assert main(["search", str(_config_file(tmp_path)), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "there is no search to resume in" in err and "drop --resume" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("no_compute")
def test_resume_under_a_changed_config_is_refused_listing_what_differs(tmp_path, capsys) -> None:
    path = _config_file(tmp_path)
    _stored_search(path)
    argv = ["search", str(path), "target_speedup=4.5", "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "target_speedup: 3.0 -> 4.5" in err and "--force" in err
    assert "compute started" not in err

    assert main([*argv, "--force"]) == 2  # resumes: reaches the (stubbed) compute
    err = capsys.readouterr().err
    assert "although the config changed (target_speedup: 3.0 -> 4.5)" in err
    assert "compute started (resume=True)" in err


@pytest.mark.usefixtures("no_compute")
def test_resume_under_the_same_config_goes_on(tmp_path, capsys) -> None:
    path = _config_file(tmp_path)
    _stored_search(path)
    main(["search", str(path), "--resume", "--address", "127.0.0.1:1"])  # the cluster may move
    assert "compute started (resume=True)" in capsys.readouterr().err


@pytest.mark.usefixtures("no_compute")
def test_a_search_stored_before_a_field_existed_resumes_without_force(tmp_path, capsys) -> None:
    path = _config_file(tmp_path)
    _stored_search(path)
    stored = tmp_path / "run" / "experiment.yaml"
    old = yaml.safe_load(stored.read_text())
    del old["asha"]["rungs"], old["latency"]  # fields this version added, at their defaults
    stored.write_text(yaml.safe_dump(old))
    main(["search", str(path), "--resume"])
    assert "compute started (resume=True)" in capsys.readouterr().err


@pytest.mark.usefixtures("ray_cluster")  # 2 CPUs, no GPU
def test_trials_that_no_node_can_run_stop_the_search_before_any_trial(
    tmp_path, monkeypatch, capsys
) -> None:
    config = config_from_dict(tiny_experiment("gpu", resources={"cpu": 1, "gpu": 0.5}))
    check_resources(
        dataclasses.replace(config, resources=dataclasses.replace(config.resources, gpu=0))
    )
    with pytest.raises(RuntimeError, match=r"resources.gpu=0.5, but no node .* GPU 0"):
        check_resources(config)

    # A cluster given by --address may autoscale: it is waited for, as long as the env var says.
    monkeypatch.setenv(WAIT_ENV, "1")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"waited 1 s \({WAIT_ENV}\)"):
        check_resources(dataclasses.replace(config, ray_address="auto"))
    assert 1 <= time.monotonic() - start < 30
    assert (
        "An autoscaling cluster may add such a node: waiting up to 1 s" in capsys.readouterr().err
    )


def test_the_failure_summary_names_the_most_common_error() -> None:
    trace = "Traceback (most recent call last):\n  File x\nValueError: target {} unreachable\n"
    results = [
        {"error": trace.format(8)},
        {"error": trace.format(8)},
        {"error": "RuntimeError: out of memory"},
    ]
    assert failure_summary(results) == (
        "all 3 trials failed; the most common error (2 of 3): ValueError: target 8 unreachable"
    )
    assert failure_summary([*results, {"error": None}]) is None
    assert failure_summary([]) is None


def _failed_search(config) -> SearchOutcome:
    """A real parent run and two real trial runs that failed, as the trials leave them."""
    uri = config.tracking_uri
    experiment = tracking.ensure_experiment(uri, config.experiment_name)
    parent = tracking.start_parent(uri, experiment, "search-life", {}, {}, [])
    for trial in ("t1", "t2"):
        with (
            pytest.raises(ValueError),
            tracking.trial_run(uri, experiment, parent, trial, trial, {}),
        ):
            raise ValueError("the floor caps the speed-up at 2.1x, below 3x")
    error = "Traceback ...\nValueError: the floor caps the speed-up at 2.1x, below 3x"
    results = [{"trial_id": t, "error": error, "reference": False} for t in ("t1", "t2")]
    nothing = Spent(cost=0.0, best_val_acc=None, trials=2)  # both failed before a report
    return SearchOutcome(parent, experiment, results, nothing, wall_s=1.0)


def test_a_search_whose_every_trial_failed_exits_non_zero_and_pareto_lists_the_errors(
    tmp_path, monkeypatch, capsys
) -> None:
    path = _config_file(tmp_path)
    outcome: list[SearchOutcome] = []

    def run_search(config, resume=False):
        outcome.append(_failed_search(config))
        return outcome[0]

    monkeypatch.setattr(search.tuner, "run_search", run_search)
    assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "all 2 trials failed; the most common error (2 of 2): ValueError: the floor caps" in err
    parent = MlflowClient(load_config(path).tracking_uri).get_run(outcome[0].parent_run_id)
    assert parent.info.status == "FAILED"

    assert main(["pareto", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 failed:" in out and out.count("FAILED: ValueError: the floor caps") == 2
    assert "nan" not in out
