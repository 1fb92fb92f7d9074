"""The CIFAR-10 study's pipeline end to end on a tiny generated JPEG tree: every arm, the
search, the replays, the held-out test split and RESULTS.md (`make study` runs it for real)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.procs import ROOT

TINY = [
    "width=0.0625",
    "data.test_per_class=4",
    "data.val_size=40",
    "data.train_subset=120",
    "pretrain.epochs=1",
    "budget_epochs=3",
    "search.num_trials=2",
    "search.min_channel_ratios=[0.0]",
    "seeds=[1,2]",
]


def jpeg_tree(root: Path, classes: int = 10, per_class: int = 20) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            pixels[:, :, c % 3] = 25 * c  # a class signal
            Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=75)


@pytest.mark.slow
def test_study_runs_every_arm_and_writes_its_results(tmp_path: Path) -> None:
    jpeg_tree(tmp_path / "images")
    out, results = tmp_path / "study", tmp_path / "results"
    common = ["--out", str(out), "--images", str(tmp_path / "images"), "--results", str(results)]
    script = str(ROOT / "experiments" / "study_cifar10" / "study.py")
    for step in ("run", "report"):
        done = subprocess.run(
            [sys.executable, script, step, *TINY, *common],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    # The held-out test images are never among the training images.
    test = {p.resolve() for p in (out / "data" / "test").rglob("*.jpg")}  # the source files
    train = {p.resolve() for p in (out / "data" / "train").rglob("*.jpg")}
    assert len(test) == 40 and not test & train
    text = (results / "RESULTS.md").read_text()
    for arm in ("recipe", "iterative", "searched"):
        for seed in (1, 2):
            run = out / "arms" / arm / f"seed{seed}"
            metrics = json.loads((run / "metrics.json").read_text())
            assert metrics["completed"] == 1.0 and abs(metrics["speedup"] / 8.84 - 1) < 0.01
            assert 0.0 <= json.loads((run / "test.json").read_text())["test_acc"] <= 1.0
        assert (results / "models" / arm / "pruned.pt").stat().st_size > 0
        assert (results / f"widths_{arm}.png").stat().st_size > 0
        assert f"| {arm} | 2 |" in text  # a per-seed row
    assert "prunetune search" in text and "prunetune replay" in text  # the exact commands
    # Finished steps are skipped on a rerun: nothing is trained again.
    again = subprocess.run(
        [sys.executable, script, "run", *TINY, *common],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0 and "prunetune replay" not in again.stderr
