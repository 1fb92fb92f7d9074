"""One MLflow run per attempt of a trial, dead attempts closed and linked, and logging that never
fails a trial (real MLflow: sqlite, and a closed HTTP port for the unreachable case)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.procs import free_port

from trainables import tracking


@pytest.fixture
def where(tmp_path: Path) -> tuple[str, str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.ensure_experiment(uri, "attempts", str(tmp_path / "artifacts"))
    parent = tracking.start_parent(uri, experiment, "search", {}, {}, [])
    return uri, experiment, parent


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in tracking.client(uri).get_metric_history(run_id, key)]


def test_a_retried_trial_gets_a_new_run_and_the_dead_attempt_is_failed_and_linked(
    where: tuple[str, str, str],
) -> None:
    uri, experiment, parent = where
    # Attempt 1 dies after stage 1: its context is entered and never left (its worker is gone).
    dead = tracking.trial_run(uri, experiment, parent, "t1", "trial_1", {"node": "a"})
    first = dead.__enter__()
    first.log_metrics({"val_acc": 0.3, "cost": 2.0}, step=1)
    with tracking.trial_run(
        uri, experiment, parent, "t1", "trial_1", {"node": "b"}, resumed_from_stage=1
    ) as second:
        second.log_metrics({"val_acc": 0.6, "cost": 4.0}, step=2)
        second.completed = True
    runs = {r.info.run_id: r for r in tracking.trial_runs(uri, "attempts", parent)}
    assert set(runs) == {first.run_id, second.run_id}
    old, new = runs[first.run_id], runs[second.run_id]
    assert old.info.status == "FAILED" and new.info.status == "FINISHED"
    assert old.data.tags[tracking.RETRIED_AS_TAG] == second.run_id
    assert "continued as run" in old.data.tags["error"]
    assert new.data.tags[tracking.RETRY_OF_TAG] == first.run_id
    assert (old.data.tags[tracking.ATTEMPT_TAG], new.data.tags[tracking.ATTEMPT_TAG]) == ("1", "2")
    assert new.data.tags["node"] == "b"
    # The finished run holds the whole curve: stage 1 copied from the dead attempt.
    assert _history(uri, second.run_id, "val_acc") == [(1, 0.3), (2, 0.6)]


def test_a_restart_from_scratch_copies_nothing(where: tuple[str, str, str]) -> None:
    uri, experiment, parent = where
    dead = tracking.trial_run(uri, experiment, parent, "t2", "trial_2", {})  # kept referenced:
    first = dead.__enter__()  # a collected generator would close its run itself
    first.log_metrics({"val_acc": 0.3}, step=1)
    with tracking.trial_run(uri, experiment, parent, "t2", "trial_2", {}) as second:
        second.log_metrics({"val_acc": 0.5}, step=1)
        second.completed = True
    assert _history(uri, second.run_id, "val_acc") == [(1, 0.5)]
    statuses = sorted(r.info.status for r in tracking.trial_runs(uri, "attempts", parent))
    assert statuses == ["FAILED", "FINISHED"]


def test_stopped_runs_are_closed_whichever_attempt_is_open(where: tuple[str, str, str]) -> None:
    uri, experiment, parent = where
    with tracking.trial_run(uri, experiment, parent, "t3", "trial_3", {}):
        pass
    stopped = tracking.trial_run(uri, experiment, parent, "t3", "trial_3", {})
    open_run = stopped.__enter__()
    tracking.close_if_running(uri, experiment, parent, "t3", {"stopped_early": "true"})
    run = tracking.client(uri).get_run(open_run.run_id)
    assert run.info.status == "KILLED" and run.data.tags["stopped_early"] == "true"


def test_logging_to_an_unreachable_server_never_fails_the_trial(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PRUNETUNE_MLFLOW_RETRY_DELAYS", "0.1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    trained = []
    with tracking.trial_run(uri, "0", "parent", "t4", "trial_4", {"node": "a"}) as run:
        run.log_metrics({"val_acc": 0.5}, step=1)
        run.log_artifacts(Path("."), "final")
        trained.append("stage 1")  # the body ran to the end
        run.completed = True
    assert trained == ["stage 1"]
    assert run.run_id is None and run.lost and "failed after 2 attempts" in run.lost
    assert "no MLflow run for trial t4" in capsys.readouterr().err


def test_retry_delays_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNETUNE_MLFLOW_RETRY_DELAYS", "0,0,0")
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionError("blip")
        return "ok"

    assert tracking._retry(flaky, "a call") == "ok" and len(calls) == 4
    monkeypatch.setenv("PRUNETUNE_MLFLOW_RETRY_DELAYS", "0")
    calls.clear()
    with pytest.raises(RuntimeError, match="a call failed after 2 attempts: blip"):
        tracking._retry(flaky, "a call")


def test_a_finished_attempt_that_tune_runs_again_is_superseded(where: tuple[str, str, str]) -> None:
    """The trial closed its run, then the driver died before Tune registered the last report:
    on resume Tune runs the trial again, and only the new run may count."""
    uri, experiment, parent = where
    with tracking.trial_run(uri, experiment, parent, "t5", "trial_5", {}) as first:
        first.completed = True
        first.finish("FINISHED")  # as a trial does just before its last report
    with tracking.trial_run(
        uri, experiment, parent, "t5", "trial_5", {}, resumed_from_stage=1
    ) as second:
        second.completed = True
    old = tracking.client(uri).get_run(first.run_id)
    assert old.info.status == "KILLED" and old.data.tags[tracking.RETRIED_AS_TAG] == second.run_id
    statuses = sorted(r.info.status for r in tracking.trial_runs(uri, "attempts", parent))
    assert statuses == ["FINISHED", "KILLED"]
