"""MLflow, fenced in: the only module that imports it.

Runs are addressed through MlflowClient (no global active run), so the same code works in the
driver and inside Ray workers, against sqlite and against an HTTP tracking server. Calls that
talk to the server retry with back-off, because a tracking server blip must not kill hours of
training.
"""

from __future__ import annotations

import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

T = TypeVar("T")
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "prunetune.trial_id"
ROLE_TAG = "prunetune.role"
RETRIES = (1.0, 2.0, 4.0)  # seconds between attempts


def _retry(call: Callable[[], T], what: str) -> T:
    for delay in (*RETRIES, None):
        try:
            return call()
        except Exception as err:
            if delay is None:
                raise RuntimeError(
                    f"MLflow: {what} failed after {len(RETRIES) + 1} attempts: {err}"
                ) from err
            time.sleep(delay)
    raise AssertionError("unreachable")


def client(uri: str) -> MlflowClient:
    # The plain file store raises in MLflow 3; sqlite/http are the supported backends.
    return MlflowClient(tracking_uri=uri)


def check_reachable(uri: str) -> None:
    """Fail fast, before any trial, when the tracking server cannot be reached."""
    try:
        if uri.startswith(("http://", "https://")):
            # MLflow's client retries for minutes; a health check answers in seconds.
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as reply:
                reply.read()
        else:
            client(uri).search_experiments(max_results=1)
    except Exception as err:
        raise RuntimeError(
            f"the MLflow tracking server at {uri} is unreachable ({err}); start it or pass "
            "another --mlflow-uri"
        ) from None


def ensure_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    c = client(uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return c.create_experiment(name, artifact_location=artifact_location)


def start_parent(
    uri: str,
    experiment_id: str,
    name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    files: list[Path],
) -> str:
    c = client(uri)
    run = c.create_run(experiment_id, run_name=name, tags={ROLE_TAG: "search", **tags})
    log_params(uri, run.info.run_id, params)
    for f in files:
        c.log_artifact(run.info.run_id, str(f))
    return run.info.run_id


def finish_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _retry(lambda: client(uri).set_terminated(run_id, status), "ending a run")


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow's batch limit is 100 params
        chunk = items[i : i + 100]
        _retry(lambda c=chunk: client(uri).log_batch(run_id, params=c), "logging params")


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    _retry(lambda: client(uri).log_batch(run_id, metrics=batch), "logging metrics")


def log_artifacts(uri: str, run_id: str, folder: Path, artifact_path: str | None = None) -> None:
    _retry(
        lambda: client(uri).log_artifacts(run_id, str(folder), artifact_path), "uploading artifacts"
    )


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    batch = [RunTag(k, str(v)) for k, v in tags.items()]
    _retry(lambda: client(uri).log_batch(run_id, tags=batch), "setting tags")


def _existing_trial_run(uri: str, experiment_id: str, parent_id: str, trial_id: str) -> str | None:
    runs = client(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{parent_id}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


@dataclass
class TrialRun:
    run_id: str
    completed: bool = False  # set once the schedule's last stage is logged


@contextmanager
def trial_run(
    uri: str, experiment_id: str, parent_id: str, trial_id: str, name: str, tags: dict[str, str]
) -> Iterator[TrialRun]:
    """The child run of one trial; a restarted trial reopens its own run instead of adding one.

    An exception marks the run FAILED with the error text (tag `error`) and propagates, so Ray
    fails the trial too.
    """
    c = client(uri)
    run_id = _retry(
        lambda: _existing_trial_run(uri, experiment_id, parent_id, trial_id),
        "looking up the trial's run",
    )
    if run_id is None:
        run_id = _retry(
            lambda: (
                c.create_run(
                    experiment_id,
                    run_name=name,
                    tags={PARENT_TAG: parent_id, TRIAL_TAG: trial_id, ROLE_TAG: "trial"},
                ).info.run_id
            ),
            "creating the trial's run",
        )
    else:
        _retry(lambda: c.update_run(run_id, status="RUNNING"), "reopening the trial's run")
    set_tags(uri, run_id, tags)
    handle = TrialRun(run_id)
    try:
        yield handle
    except SystemExit:
        # Tune ends a trial by raising SystemExit inside tune.report: after the last stage that
        # is a normal end (ASHA saying STOP at max_t); before it, the trial was stopped early.
        if handle.completed:
            finish_run(uri, run_id, "FINISHED")
        else:
            set_tags(uri, run_id, {"stopped_early": "true"})
            finish_run(uri, run_id, "KILLED")
        raise
    except BaseException as err:
        text = "".join(traceback.format_exception_only(type(err), err)).strip()
        set_tags(uri, run_id, {"error": text[:5000]})
        finish_run(uri, run_id, "FAILED")
        raise
    finish_run(uri, run_id, "FINISHED")


def close_if_running(
    uri: str, experiment_id: str, parent_id: str, trial_id: str, tags: dict[str, str]
) -> None:
    run_id = _existing_trial_run(uri, experiment_id, parent_id, trial_id)
    if run_id and client(uri).get_run(run_id).info.status == "RUNNING":
        set_tags(uri, run_id, tags)
        finish_run(uri, run_id, "KILLED")


def trial_runs(uri: str, experiment: str, parent_id: str | None = None) -> list[Any]:
    """All trial runs of an experiment (of one search when parent_id is given)."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"MLflow at {uri} has no experiment named {experiment!r}")
    where = f"tags.`{ROLE_TAG}` = 'trial'"
    if parent_id:
        where += f" and tags.`{PARENT_TAG}` = '{parent_id}'"
    return c.search_runs([exp.experiment_id], filter_string=where, max_results=50000)


def latest_parent(uri: str, experiment: str) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"MLflow at {uri} has no experiment named {experiment!r}")
    runs = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'search'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise ValueError(f"experiment {experiment!r} has no search run yet")
    return runs[0].info.run_id


def download(uri: str, run_id: str, path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    local = _retry(
        lambda: mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=uri
        ),
        "downloading artifacts",
    )
    return Path(local)


def ui_command(uri: str) -> str:
    if uri.startswith("http"):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
