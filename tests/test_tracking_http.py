"""The tracking code against a real `mlflow server` over HTTP (proxied artifact storage)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from trainables import tracking


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'db.sqlite'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_parent_child_metrics_and_artifacts_over_http(server: str, tmp_path: Path) -> None:
    experiment = tracking.ensure_experiment(server, "http-check")
    assert tracking.ensure_experiment(server, "http-check") == experiment  # idempotent
    note = tmp_path / "config.yaml"
    note.write_text("name: x\n")
    parent = tracking.start_parent(server, experiment, "search", {"a": 1}, {"git": "x"}, [note])
    with tracking.trial_run(server, experiment, parent, "t1", "trial_1", {"node": "n"}) as run:
        tracking.log_metrics(server, run.run_id, {"val_acc": 0.5}, step=1)
        tracking.log_metrics(server, run.run_id, {"val_acc": 0.7}, step=2)
        (tmp_path / "final").mkdir()
        (tmp_path / "final" / "schedule.yaml").write_text("format: x\n")
        tracking.log_artifacts(server, run.run_id, tmp_path / "final", "final")
        run.completed = True
    runs = tracking.trial_runs(server, "http-check", parent)
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.metrics["val_acc"] == 0.7
    got = tracking.download(server, runs[0].info.run_id, "final", tmp_path / "dl")
    assert (got / "schedule.yaml").read_text() == "format: x\n"
    assert tracking.latest_parent(server, "http-check") == parent


def test_a_raising_trial_is_failed_with_its_error(server: str) -> None:
    experiment = tracking.ensure_experiment(server, "http-fail")
    parent = tracking.start_parent(server, experiment, "search", {}, {}, [])
    with (
        pytest.raises(ZeroDivisionError),
        tracking.trial_run(server, experiment, parent, "t1", "trial_1", {}),
    ):
        1 / 0  # noqa: B018
    (run,) = tracking.trial_runs(server, "http-fail", parent)
    assert run.info.status == "FAILED" and "ZeroDivisionError" in run.data.tags["error"]


def test_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(RuntimeError, match="unreachable"):
        tracking.check_reachable(f"http://127.0.0.1:{free_port()}")
