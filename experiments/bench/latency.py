"""The MACs speed-up against the measured latency speed-up of the study's three committed models.

For each of experiments/study_cifar10/models/{recipe,iterative,searched}: the pruned model
(pruned.pt) and the same architecture unpruned (its schedule's run.model, random init: latency
does not depend on the weights), both timed on the CPU at batch 1 and batch 64 with
pruning.latency (median of --runs after --warmup, in --threads torch threads). The dense model is
measured right before each pruned one, so each pair sees the same machine load.

    PYTHONPATH=. python experiments/bench/latency.py --threads 2 --json-out out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pruning import schedule as schedule_io
from pruning.latency import BATCHES, latency_speedup, measure_batches
from pruning.models import build_model, example_input, load_pruned
from pruning.prune import count_macs_params

MODELS = Path(__file__).resolve().parents[1] / "study_cifar10" / "models"
NAMES = ("recipe", "iterative", "searched")


def dense_of(folder: Path, pruned: torch.nn.Module) -> torch.nn.Module:
    """The schedule's run.model unpruned, at the pruned model's input size."""
    _, run = schedule_io.load(folder / "schedule.yaml")
    assert run is not None, f"{folder / 'schedule.yaml'} has no run section"
    spec = pruned.prunetune_spec
    torch.manual_seed(0)
    return build_model(run.model.spec(spec.num_classes, spec.input_size)).eval()


def bench_one(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    pruned = load_pruned(folder / "pruned.pt").eval()
    dense = dense_of(folder, pruned)
    example = example_input(pruned.prunetune_spec)
    macs = count_macs_params(dense, example)[0] / count_macs_params(pruned, example)[0]
    kwargs = {"threads": args.threads, "warmup": args.warmup, "runs": args.runs}
    dense_lat = measure_batches(dense, example, BATCHES, **kwargs)
    pruned_lat = measure_batches(pruned, example, BATCHES, **kwargs)
    return {
        "model": folder.name,
        "macs_speedup": macs,
        "latency_speedup": {str(b): s for b, s in latency_speedup(dense_lat, pruned_lat).items()},
        "dense": {str(b): asdict(lat) for b, lat in dense_lat.items()},
        "pruned": {str(b): asdict(lat) for b, lat in pruned_lat.items()},
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | MACs speed-up | latency speed-up, batch 1 | latency speed-up, batch 64 "
        "| pruned median (IQR), batch 1 | pruned median (IQR), batch 64 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, p = r["latency_speedup"], r["pruned"]
        cells = [f"{p[b]['median_ms']:.2f} ms ({p[b]['iqr_ms']:.2f})" for b in ("1", "64")]
        lines.append(
            f"| {r['model']} | {r['macs_speedup']:.2f}x | {s['1']:.2f}x | {s['64']:.2f}x "
            f"| {cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--runs", type=int, default=60, help="timed runs per measurement")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before them")
    p.add_argument("--json-out", type=Path, help="also write the results here")
    args = p.parse_args()
    rows = [bench_one(MODELS / name, args) for name in NAMES]
    print(
        f"CPU latency, {args.threads} threads, median of {args.runs} runs after {args.warmup} "
        f"warm-up; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(table(rows))
    result = {"threads": args.threads, "runs": args.runs, "warmup": args.warmup, "rows": rows}
    print(json.dumps(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
