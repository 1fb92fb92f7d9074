"""Overhead of a search trial (Ray Tune + MLflow + checkpoints) against `prunetune replay`.

The same schedule on the same baseline and data, both on 1 CPU thread: once as the only trial of
a search (its Ray `time_total_s`), once with `prunetune replay` (wall time of the command, data
loading included). Prints both and the overhead in %.

    PYTHONPATH=. python experiments/bench/trial_overhead.py \
        --data imagefolder:~/.cache/prunetune-data/cifar10-jpeg
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import ray
import torch

from pruning import schedule as schedule_io
from pruning.data import DataSpec
from pruning.run_info import RunInfo
from pruning.schedule import Training
from search.cli import main as cli
from search.config import ExperimentConfig, SpaceConfig
from search.tuner import baseline_weights, run_search
from trainables import tracking
from trainables.point import reference_point


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=4, help="total fine-tune epochs (2 stages)")
    p.add_argument("--out", type=Path, default=Path("runs/bench_trial_overhead"))
    p.add_argument("--json-out", type=Path)
    args = p.parse_args()

    name, _, root = args.data.partition(":")
    data = DataSpec(
        name=name,
        root=str(Path(root).expanduser()) if root else None,
        train_subset=args.images,
        samples=int(args.images * 1.2),
    )
    space = SpaceConfig(max_stages=2, total_epochs=(args.epochs,))
    point = dataclasses.replace(reference_point(space), n_stages=2, lr_schedule="cosine")
    config = ExperimentConfig(
        name="overhead",
        width=0.25,
        data=data,
        reference_trial=False,
        points=(point.to_config(),),
        space=space,
        num_trials=1,
        max_concurrent=1,
        device="cpu",
        out=str(args.out),
    ).resolve()

    _, baseline = baseline_weights(config)  # pretrained once, outside both timings
    # Started before the clock, as on a long-lived cluster: Ray, and MLflow's database tables.
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    tracking.check_reachable(config.tracking_uri)
    start = time.perf_counter()
    outcome = run_search(config)
    search_seconds = time.perf_counter() - start
    trial_seconds = outcome.results[0]["metrics"]["time_total_s"]
    trial_acc = outcome.results[0]["metrics"]["val_acc"]

    schedule = point.schedule(config.target_speedup, Training(), 5e-4)
    path = schedule_io.save(
        config.out_dir / "schedule.yaml",
        schedule,
        RunInfo(data=data, seed=0, threads=1),
    )
    start = time.perf_counter()
    cli(
        [
            "replay",
            str(path),
            "--checkpoint",
            baseline,
            "--out",
            str(config.out_dir / "replay"),
            "--device",
            "cpu",
        ]
    )
    replay_seconds = time.perf_counter() - start
    replay_acc = json.loads((config.out_dir / "replay" / "metrics.json").read_text())["val_acc"]

    print(
        f"schedule: {schedule.summary()}; data: {data.name}, {args.images} images; "
        f"torch {torch.__version__}, 1 thread"
    )
    rows = {
        "replay (in-process, wall)": replay_seconds,
        "trial (Ray time_total_s)": trial_seconds,
        "one-trial search (wall: Tuner, actor start, MLflow, checkpoints)": search_seconds,
    }
    for label, seconds in rows.items():
        print(f"{label:<66} {seconds:7.1f} s  {100 * (seconds / replay_seconds - 1):+6.1f}%")
    print(f"val acc: replay {replay_acc:.4f}, trial {trial_acc:.4f}")
    if args.json_out:
        result = rows | {"replay_acc": replay_acc, "trial_acc": trial_acc}
        args.json_out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
