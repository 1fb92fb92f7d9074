"""The tracking code against a real `mlflow server` over HTTP (proxied artifact storage)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.procs import free_port

from trainables import tracking


def test_parent_child_metrics_and_artifacts_over_http(mlflow_server: str, tmp_path: Path) -> None:
    experiment = tracking.ensure_experiment(mlflow_server, "http-check")
    assert tracking.ensure_experiment(mlflow_server, "http-check") == experiment  # idempotent
    note = tmp_path / "config.yaml"
    note.write_text("name: x\n")
    parent = tracking.start_parent(
        mlflow_server, experiment, "search", {"a": 1}, {"git": "x"}, [note]
    )
    with tracking.trial_run(
        mlflow_server, experiment, parent, "t1", "trial_1", {"node": "n"}
    ) as run:
        tracking.log_metrics(mlflow_server, run.run_id, {"val_acc": 0.5}, step=1)
        tracking.log_metrics(mlflow_server, run.run_id, {"val_acc": 0.7}, step=2)
        (tmp_path / "final").mkdir()
        (tmp_path / "final" / "schedule.yaml").write_text("format: x\n")
        tracking.log_artifacts(mlflow_server, run.run_id, tmp_path / "final", "final")
        run.completed = True
    runs = tracking.trial_runs(mlflow_server, "http-check", parent)
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.metrics["val_acc"] == 0.7
    got = tracking.download(mlflow_server, runs[0].info.run_id, "final", tmp_path / "dl")
    assert (got / "schedule.yaml").read_text() == "format: x\n"
    assert tracking.latest_parent(mlflow_server, "http-check") == parent


def test_a_raising_trial_is_failed_with_its_error(mlflow_server: str) -> None:
    experiment = tracking.ensure_experiment(mlflow_server, "http-fail")
    parent = tracking.start_parent(mlflow_server, experiment, "search", {}, {}, [])
    with (
        pytest.raises(ZeroDivisionError),
        tracking.trial_run(mlflow_server, experiment, parent, "t1", "trial_1", {}),
    ):
        1 / 0  # noqa: B018
    (run,) = tracking.trial_runs(mlflow_server, "http-fail", parent)
    assert run.info.status == "FAILED" and "ZeroDivisionError" in run.data.tags["error"]


def test_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(RuntimeError, match="unreachable"):
        tracking.check_reachable(f"http://127.0.0.1:{free_port()}")


def test_search_refuses_to_start_when_the_server_is_down(tmp_path, capsys) -> None:
    from search.cli import main

    config = tmp_path / "e.yaml"
    config.write_text(f"name: down\ndata: {{name: synthetic}}\nout: {tmp_path / 'run'}\n")
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["search", str(config), "--mlflow-uri", url]) == 2
    err = capsys.readouterr().err
    assert "unreachable" in err and url in err
    assert not (tmp_path / "run" / "baseline").exists()  # refused before any compute
