"""MLflow, fenced in: this module and mlflow_models.py (MLflow Models and the Model Registry)
are the only ones that import it.

Runs are addressed through MlflowClient (no global active run), so the same code works in the
driver and inside Ray workers, against sqlite and against an HTTP tracking server. Calls that
talk to the server retry with back-off, because a tracking server blip must not kill hours of
training.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

T = TypeVar("T")
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "prunetune.trial_id"
ROLE_TAG = "prunetune.role"
ATTEMPT_TAG = "prunetune.attempt"  # 1, 2, ... : one run per attempt of a trial
RETRY_OF_TAG = "prunetune.retry_of"  # the run of the attempt this one replaces
RETRIED_AS_TAG = "prunetune.retried_as"  # on a dead attempt: the run that replaced it
# On a run Tune ended before its last stage; "false" again once a later run of the trial went
# on from its checkpoint (a PBT pause at a stage boundary, a resumed search).
STOPPED_EARLY_TAG = "stopped_early"
RETRIES = (1.0, 2.0, 4.0)  # seconds between attempts; PRUNETUNE_MLFLOW_RETRY_DELAYS="1,2,4"


def _delays() -> tuple[float, ...]:
    text = os.environ.get("PRUNETUNE_MLFLOW_RETRY_DELAYS")
    return tuple(float(d) for d in text.split(",") if d.strip()) if text else RETRIES


# Errors this process retried, by their first line (sqlite's "database is locked", a refused
# connection, ...): counted and said, never swallowed. A trial's run gets its count as a tag.
RETRIED: Counter[str] = Counter()
RETRIES_TAG = "prunetune.mlflow_retries"


def _retry(call: Callable[[], T], what: str) -> T:
    delays = _delays()
    for delay in (*delays, None):
        try:
            return call()
        except Exception as err:
            if delay is None:
                raise RuntimeError(
                    f"MLflow: {what} failed after {len(delays) + 1} attempts: {err}"
                ) from err
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            RETRIED[first] += 1
            print(
                f"prunetune: MLflow {what} failed ({first}); retry in {delay:g} s",
                file=sys.stderr,
                flush=True,
            )
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
    # MLflow 3's UI opens untagged experiments in its GenAI view; ours are model training.
    kind = {"mlflow.experimentKind": "custom_model_development"}
    return c.create_experiment(name, artifact_location=artifact_location, tags=kind)


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


def _attempts(uri: str, experiment_id: str, parent_id: str, trial_id: str) -> list[Any]:
    """Every run one trial has had, oldest first: one per attempt."""
    return client(uri).search_runs(
        [experiment_id],
        filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`{PARENT_TAG}` = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=1000,
    )


def _close_dead_attempts(uri: str, earlier: list[Any], new_id: str) -> None:
    """Earlier attempts point at the run that replaces them. One still RUNNING died with its
    worker (or the driver): FAILED. One FINISHED had closed its run but Tune never got its last
    report (the driver died in between), so Tune runs it again: KILLED, so that only the new
    run counts."""
    for run in earlier:
        tags = {RETRIED_AS_TAG: new_id}
        if run.data.tags.get(STOPPED_EARLY_TAG) == "true":  # it was paused (PBT), not stopped
            tags[STOPPED_EARLY_TAG] = "false"
        status = run.info.status
        if status in ("RUNNING", "FINISHED"):
            why = "attempt left its run open" if status == "RUNNING" else "finished attempt"
            tags["error"] = (
                f"{why}, but Ray ran the trial again (its worker, the driver or the tracking "
                f"connection was lost); continued as run {new_id}"
            )
        set_tags(uri, run.info.run_id, tags)
        if status in ("RUNNING", "FINISHED"):
            finish_run(uri, run.info.run_id, "FAILED" if status == "RUNNING" else "KILLED")


def _copy_history(uri: str, src: str, dst: str, until_step: int) -> None:
    """The stages an earlier attempt finished (restored from its checkpoint) into the new run,
    so the finished run holds the whole schedule's curves."""
    c = client(uri)
    for key in c.get_run(src).data.metrics:
        history = [m for m in c.get_metric_history(src, key) if m.step <= until_step]
        for i in range(0, len(history), 1000):
            chunk = history[i : i + 1000]
            _retry(lambda b=chunk: c.log_batch(dst, metrics=b), "copying metric history")


def _new_attempt(
    uri: str,
    experiment_id: str,
    parent_id: str,
    trial_id: str,
    name: str,
    resumed_from_stage: int,
    history_of: str | None = None,
) -> str:
    c = client(uri)
    earlier = _retry(
        lambda: _attempts(uri, experiment_id, parent_id, trial_id), "looking up the trial's runs"
    )
    tags = {PARENT_TAG: parent_id, TRIAL_TAG: trial_id, ROLE_TAG: "trial"}
    tags[ATTEMPT_TAG] = str(len(earlier) + 1)
    if earlier:
        tags[RETRY_OF_TAG] = earlier[-1].info.run_id
    run_id = _retry(
        lambda: c.create_run(experiment_id, run_name=name, tags=tags).info.run_id,
        "creating the trial's run",
    )
    if earlier:
        _close_dead_attempts(uri, earlier, run_id)
    # the restored stages' curves: from the donor's latest run after a PBT exploit
    source = earlier
    if history_of:
        source = _retry(
            lambda: _attempts(uri, experiment_id, parent_id, history_of),
            "looking up the donor's runs",
        )
    if source and resumed_from_stage:
        _copy_history(uri, source[-1].info.run_id, run_id, resumed_from_stage)
    return run_id


@dataclass
class TrialRun:
    """One attempt's run. Logging through it never fails the trial: once a call fails past its
    retries the attempt stops logging (reason in `lost`) and trains on, because its results
    also go to Ray's storage, from which `prunetune pareto` copies them into MLflow later."""

    uri: str
    run_id: str | None
    completed: bool = False  # set once the schedule's last stage is logged
    lost: str | None = None
    closed: bool = False  # ended by the trial itself, before its last report
    retries_before: int = field(default_factory=lambda: RETRIED.total())

    def _safe(self, call: Callable[..., None], *args: Any) -> None:
        if self.run_id is None or self.lost:
            return
        try:
            call(self.uri, self.run_id, *args)
        except RuntimeError as err:
            self.lost = str(err)
            print(
                f"prunetune: MLflow logging stopped for run {self.run_id}: {err}. The trial "
                "goes on; its results stay in Ray's storage.",
                file=sys.stderr,
                flush=True,
            )

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._safe(log_metrics, metrics, step)

    def log_params(self, params: dict[str, Any]) -> None:
        self._safe(log_params, params)

    def set_tags(self, tags: dict[str, str]) -> None:
        self._safe(set_tags, tags)

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self._safe(log_artifacts, folder, artifact_path)

    def log_model(
        self, model: Any, inputs: Any, step: int, speedup: float | None, flavours: tuple[str, ...]
    ) -> None:
        """The trial's pruned model as MLflow models under its run, one per flavour
        (trainables.mlflow_models; `inputs`: its CheckInputs, the example and normalisation).
        Never fails the trial: an upload that fails past its retries stops the run's logging,
        as any call does; a model that cannot be saved as one (torch.export cannot trace it)
        is said on the run (tag prunetune.model_error) and `export --register` tries again
        from pruned.pt, where that error is raised."""
        if self.run_id is None or self.lost or not flavours:
            return
        from trainables import mlflow_models  # torch.export's machinery: only when logging

        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            folders: dict[str, Path] = {}
            for flavour in flavours:  # one that fails leaves the others logged
                try:
                    folders |= mlflow_models.build(Path(tmp), model, inputs, speedup, (flavour,))
                except mlflow_models.ModelBuildError as err:
                    print(f"prunetune: run {self.run_id}: {err}", file=sys.stderr)
                    self.set_tags({mlflow_models.MODEL_ERROR_TAG: str(err)[:5000]})
            tags = mlflow_models.model_tags(model.prunetune_spec)
            if folders:
                self._safe(mlflow_models.upload, folders, step, tags)
        self._safe(log_metrics, {"model_log_seconds": time.perf_counter() - start}, step)

    def finish(self, status: str) -> None:
        if not self.closed:
            self.closed = True
            retried = RETRIED.total() - self.retries_before
            if retried:  # calls of this attempt that failed and were retried
                self._safe(set_tags, {RETRIES_TAG: str(retried)})
            self._safe(finish_run, status)


@contextmanager
def trial_run(
    uri: str,
    experiment_id: str,
    parent_id: str,
    trial_id: str,
    name: str,
    tags: dict[str, str],
    resumed_from_stage: int = 0,
    history_of: str | None = None,
) -> Iterator[TrialRun]:
    """The child run of one attempt of a trial. A retried trial gets a new run tagged with the
    attempt number and `retry_of`; the attempt before it is closed (FAILED when it died) and
    tagged `retried_as`, so exactly one run per trial ends FINISHED.

    An exception marks the run FAILED with the error text (tag `error`) and propagates, so Ray
    fails the trial too.
    """
    handle = TrialRun(uri, None)
    try:
        handle.run_id = _new_attempt(
            uri, experiment_id, parent_id, trial_id, name, resumed_from_stage, history_of
        )
    except RuntimeError as err:
        handle.lost = str(err)
        print(f"prunetune: no MLflow run for trial {trial_id}: {err}", file=sys.stderr)
    handle.set_tags(tags)
    try:
        yield handle
    except SystemExit:
        # Tune ends a trial by raising SystemExit inside tune.report: after the last stage that
        # is a normal end (ASHA saying STOP at max_t); before it, the trial was stopped early.
        if handle.completed:
            handle.finish("FINISHED")
        else:
            handle.set_tags({STOPPED_EARLY_TAG: "true"})
            handle.finish("KILLED")
        raise
    except BaseException as err:
        text = "".join(traceback.format_exception_only(type(err), err)).strip()
        handle.set_tags({"error": text[:5000]})
        handle.finish("FAILED")
        raise
    handle.finish("FINISHED")


def close_if_running(
    uri: str, experiment_id: str, parent_id: str, trial_id: str, tags: dict[str, str]
) -> None:
    for run in _attempts(uri, experiment_id, parent_id, trial_id):
        if run.info.status == "RUNNING":
            set_tags(uri, run.info.run_id, tags)
            finish_run(uri, run.info.run_id, "KILLED")


def trial_runs(uri: str, experiment: str, parent_id: str | None = None) -> list[Any]:
    """All trial runs of an experiment (of one search when parent_id is given)."""
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise _no_experiment(uri, experiment)
    where = f"tags.`{ROLE_TAG}` = 'trial'"
    if parent_id:
        where += f" and tags.`{PARENT_TAG}` = '{parent_id}'"
    return c.search_runs([exp.experiment_id], filter_string=where, max_results=50000)


def _no_experiment(uri: str, experiment: str) -> ValueError:
    names = sorted(e.name for e in client(uri).search_experiments())
    return ValueError(
        f"MLflow at {uri} has no experiment named {experiment!r} (it has: "
        f"{', '.join(names) or 'none'}); pass the experiment's name (the config's mlflow."
        "experiment, else its name) or the config file, and check --mlflow-uri"
    )


def latest_parent(uri: str, experiment: str) -> str:
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        raise _no_experiment(uri, experiment)
    runs = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'search'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise ValueError(
            f"experiment {experiment!r} at {uri} has no search run yet; run `prunetune search` "
            "first, or check the experiment name and --mlflow-uri"
        )
    return runs[0].info.run_id


def download(uri: str, run_id: str, path: str, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    # a few small files per command: MLflow's progress bar per download only clutters stderr
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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


def experiment_id(uri: str, experiment: str) -> str:
    found = client(uri).get_experiment_by_name(experiment)
    if found is None:
        raise _no_experiment(uri, experiment)
    return found.experiment_id


def run_metrics(uri: str, run_id: str) -> dict[str, float]:
    """The latest value of each metric of a run."""
    return dict(_retry(lambda: client(uri).get_run(run_id), "reading a run").data.metrics)


# Calls in flight at once when reading or tagging many runs: each is one HTTP round trip (about
# 50 ms to a local server), so a search's 200 trials read back in parallel, not one by one.
READ_WORKERS = 8


def concurrently(calls: Sequence[Callable[[], T]], workers: int = READ_WORKERS) -> list[T]:
    """Each call's result, in order; the calls run on a thread pool (they wait on the server)."""
    if len(calls) <= 1:
        return [c() for c in calls]
    with ThreadPoolExecutor(max_workers=min(workers, len(calls))) as pool:
        return list(pool.map(lambda c: c(), calls))


def metric_history(uri: str, run_id: str, keys: list[str]) -> dict[str, dict[int, float]]:
    """step -> value for each metric. A trial restarted mid-stage logs that stage again; the
    value logged last for a step wins, as it does in MLflow's own latest-value view."""
    c = client(uri)  # sequential: callers reading many runs put the runs on one thread pool
    history: dict[str, dict[int, float]] = {}
    for key in keys:
        points = _retry(lambda k=key: c.get_metric_history(run_id, k), "reading metric history")
        history[key] = {m.step: m.value for m in sorted(points, key=lambda m: m.timestamp)}
    return history
