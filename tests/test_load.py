"""The load test (issue 15, item 15): experiments/bench/load_test.py with a few trials (the lead
runs the 200-trial version), and the retry accounting it relies on."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest
from support.procs import ROOT, subprocess_env

from trainables import tracking


def test_a_retried_mlflow_error_is_counted_and_said(monkeypatch, capsys) -> None:
    monkeypatch.setenv("PRUNETUNE_MLFLOW_RETRY_DELAYS", "0,0")
    before = tracking.RETRIED["database is locked"]
    calls = iter([sqlite3.OperationalError("database is locked"), None])

    def call() -> str:
        error = next(calls)
        if error:
            raise error
        return "logged"

    assert tracking._retry(call, "logging metrics") == "logged"
    assert tracking.RETRIED["database is locked"] == before + 1
    assert "MLflow logging metrics failed (database is locked); retry in 0 s" in (
        capsys.readouterr().err
    )


@pytest.mark.slow
def test_a_search_of_many_tiny_trials_holds(tmp_path) -> None:
    script = ROOT / "experiments" / "bench" / "load_test.py"
    done = subprocess.run(
        [sys.executable, str(script), "--trials", "20", "--out", str(tmp_path)],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["trials_seen"] == 20 and result["one_finished_run_per_trial"]
    assert result["driver_rss_mb_growth_2nd_half"] < 300  # MB: no per-trial leak to speak of
    assert result["pareto_s"] < 60 and result["report_s"] < 120
