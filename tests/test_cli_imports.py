"""The command line starts without the libraries a command does not use: `--help`,
`search --dry-run` and a config error answer without importing Ray, MLflow, Optuna, torchvision
or matplotlib (seconds each on import). Checked by what a fresh interpreter has imported, not by
timing; experiments/bench/cli_startup.py measures the time."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml
from support.experiment import tiny_experiment
from support.procs import ROOT, subprocess_env

LAZY = ("ray", "mlflow", "optuna", "torchvision", "matplotlib")

# Runs in a fresh interpreter: each command through search.cli.main, then which of LAZY it
# imported so far, one JSON object per step on the last line.
CHILD = """
import contextlib, io, json, sys
from search.cli import main

def loaded():
    return sorted(m for m in {lazy} if m in sys.modules)

seen = {{"import": loaded()}}
for step, argv in {steps}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as exit:
            rc = exit.code
    seen[step] = {{"rc": rc, "loaded": loaded()}}
print(json.dumps(seen))
"""


def imported_by(steps: list[tuple[str, list[str]]], cwd) -> dict:
    code = CHILD.format(lazy=repr(LAZY), steps=repr(steps))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=subprocess_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_help_dry_run_and_config_errors_import_no_heavy_library(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment("imports", out=str(tmp_path / "out"))))
    seen = imported_by(
        [
            ("help", ["--help"]),
            ("search help", ["search", "--help"]),
            ("export help", ["export", "--help"]),
            ("dry run", ["search", str(config), "--dry-run"]),
            ("config error", ["search", str(config), "target_speedup=-1"]),
            ("unknown name", ["search", str(config), "strategy=tpee"]),
        ],
        cwd=ROOT,
    )
    assert seen["import"] == []
    assert seen["help"] == {"rc": 0, "loaded": []}
    assert seen["search help"] == {"rc": 0, "loaded": []}
    assert seen["export help"] == {"rc": 0, "loaded": []}
    assert seen["dry run"] == {"rc": 0, "loaded": []}
    assert seen["config error"] == {"rc": 2, "loaded": []}
    assert seen["unknown name"] == {"rc": 2, "loaded": []}
    assert not (tmp_path / "out").exists()  # nothing was run or written
