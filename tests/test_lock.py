"""One search per out folder (issue 15, item 13): a second search is refused at once naming the
holder; a lock left by a search that died is taken over with a message."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml
from support.experiment import tiny_experiment
from support.procs import kill_tree, run_prunetune, subprocess_env

from search.lock import LOCK_FILE, search_lock

HOLD = """
import sys, time
from pathlib import Path
from search.lock import search_lock
with search_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock on tmp_path/run, as a running search does."""
    out = tmp_path / "run"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc, out
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=30)


def test_a_second_search_on_the_same_out_is_refused_at_once_naming_the_holder(
    holder, tmp_path
) -> None:
    proc, out = holder
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment("locked", out=str(out))))
    start = time.monotonic()
    done = run_prunetune("search", str(config), cwd=tmp_path, env=subprocess_env(), timeout=120)
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - start < 60  # no pretraining, no Ray
    assert f"another search is running in {out}" in done.stderr
    assert f"PID {proc.pid}" in done.stderr and "started 20" in done.stderr
    assert not (out / "mlflow.db").exists() and not (out / "baseline").exists()


def test_a_stale_lock_of_a_dead_search_is_taken_over_with_a_message(
    holder, tmp_path, capsys
) -> None:
    proc, out = holder
    kill_tree(proc.pid)  # the search dies without cleaning up: its lock file still names it
    proc.wait(timeout=30)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == proc.pid
    with search_lock(out):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] != proc.pid
    err = capsys.readouterr().err
    assert "taking over the lock" in err and f"PID {proc.pid}" in err


def test_the_lock_is_released_when_the_search_ends(tmp_path, capsys) -> None:
    # a second holder, even in this process, is refused: flock locks an open file description
    inner = pytest.raises(RuntimeError, match="another search is running")
    with search_lock(tmp_path), inner, search_lock(tmp_path):
        pass
    with search_lock(tmp_path):  # taken again, and not reported as stale
        pass
    assert "taking over" not in capsys.readouterr().err


def test_readers_take_no_lock(holder, tmp_path) -> None:
    """`pareto` on a locked folder gets past the lock (here to its own "no database" answer)."""
    _, out = holder
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment("locked", out=str(out))))
    done = run_prunetune("pareto", str(config), cwd=tmp_path, env=subprocess_env(), timeout=120)
    assert "another search" not in done.stderr
    assert "no MLflow database" in done.stderr
