"""The MACs speed-up against the measured latency speed-up of the study's three committed models.

For each of experiments/study_cifar10/models/{recipe,iterative,searched}: the pruned model
(pruned.pt) and the same architecture unpruned (its schedule's run.model, random init: latency
does not depend on the weights), both timed on the CPU at batch 1 and batch 64 with
pruning.latency (median of --runs after --warmup, in --threads torch threads). The dense model is
measured right before each pruned one, so each pair sees the same machine load.

With --baseline (an unpruned state dict of the schedules' run.model, e.g. the converged x0.25
baseline at runs/recovery/baseline/baseline.pt), each schedule is also re-pruned from it at
round_to 1 and at round_to 8 and timed the same way: the schedule's importance, ranking, floor
and stages, structure only (no fine-tune and no BatchNorm recalibration: latency depends on the
widths alone, not on the weights). Channels are scored on the baseline's weights at every stage,
so a multi-stage schedule's later stages may cut other channels than its fine-tuned run did; the
round_to 1 row is the like-for-like reference for the round_to 8 one, at the same MACs.

    PYTHONPATH=. python experiments/bench/latency.py --threads 2 --json-out out.json \
        --baseline runs/recovery/baseline/baseline.pt
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
from pruning.models import build_model, example_input, layer_widths, load_pruned
from pruning.prune import count_macs_params, prune_to_speedup
from pruning.run_info import model_from_checkpoint

MODELS = Path(__file__).resolve().parents[1] / "study_cifar10" / "models"
NAMES = ("recipe", "iterative", "searched")
ROUND_TOS = (1, 8)  # the re-pruned rows: any width (the committed models'), and multiples of 8


def dense_of(folder: Path, pruned: torch.nn.Module) -> torch.nn.Module:
    """The schedule's run.model unpruned, at the pruned model's input size."""
    _, run = schedule_io.load(folder / "schedule.yaml")
    assert run is not None, f"{folder / 'schedule.yaml'} has no run section"
    spec = pruned.prunetune_spec
    torch.manual_seed(0)
    return build_model(run.model.spec(spec.num_classes, spec.input_size)).eval()


def repruned(folder: Path, baseline: Path, round_to: int) -> torch.nn.Module:
    """The schedule's stages applied to `baseline`, structure only (no fine-tune, no BN
    recalibration), with every pruned width a multiple of `round_to`."""
    schedule, run = schedule_io.load(folder / "schedule.yaml")
    assert run is not None and run.model is not None, f"{folder / 'schedule.yaml'}: no run.model"
    size = run.data.image_size if run.data else None
    classes = run.model.num_classes or (run.data.num_classes if run.data else None) or 10
    model, _ = model_from_checkpoint(baseline, run.model, classes, size)
    model.eval()
    example = example_input(model.prunetune_spec)
    first = None
    for index, stage in enumerate(schedule.stages):
        report = prune_to_speedup(
            model,
            example,
            stage.speedup,
            base_macs=first and first.base_macs,
            original_widths=first and first.original_widths,
            **(schedule.prune_options(index) | {"round_to": round_to}),
        )
        first = first or report
    return model.eval()


def bench_one(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The committed model of `folder`, timed beside its dense model."""
    pruned = load_pruned(folder / "pruned.pt").eval()
    return bench_pair(folder.name, folder, pruned, None, args)


def bench_pair(
    name: str,
    folder: Path,
    pruned: torch.nn.Module,
    round_to: int | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """A pruned model's MACs and latency speed-ups over its dense model (timed right before)."""
    dense = dense_of(folder, pruned)
    example = example_input(pruned.prunetune_spec)
    macs = count_macs_params(dense, example)[0] / count_macs_params(pruned, example)[0]
    kwargs = {"threads": args.threads, "warmup": args.warmup, "runs": args.runs}
    dense_lat = measure_batches(dense, example, BATCHES, **kwargs)
    pruned_lat = measure_batches(pruned, example, BATCHES, **kwargs)
    return {
        "model": name,
        "round_to": round_to,  # None: the committed model
        "widths": layer_widths(pruned),
        "macs_speedup": macs,
        "latency_speedup": {str(b): s for b, s in latency_speedup(dense_lat, pruned_lat).items()},
        "dense": {str(b): asdict(lat) for b, lat in dense_lat.items()},
        "pruned": {str(b): asdict(lat) for b, lat in pruned_lat.items()},
    }


def _multiples(widths: dict[str, int], n: int) -> str:
    """'13/16': how many pruned layers (the classifier's outputs left out) are multiples of n."""
    layers = list(widths.values())[:-1]
    return f"{sum(w % n == 0 for w in layers)}/{len(layers)}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | MACs speed-up | latency speed-up, batch 1 | latency speed-up, batch 64 "
        "| pruned median (IQR), batch 1 | pruned median (IQR), batch 64 | widths x8 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, p = r["latency_speedup"], r["pruned"]
        cells = [f"{p[b]['median_ms']:.2f} ms ({p[b]['iqr_ms']:.2f})" for b in ("1", "64")]
        lines.append(
            f"| {r['model']} | {r['macs_speedup']:.2f}x | {s['1']:.2f}x | {s['64']:.2f}x "
            f"| {cells[0]} | {cells[1]} | {_multiples(r['widths'], 8)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--runs", type=int, default=60, help="timed runs per measurement")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before them")
    p.add_argument("--json-out", type=Path, help="also write the results here")
    p.add_argument(
        "--baseline",
        type=Path,
        help="unpruned state dict of the schedules' run.model: also re-prune each schedule "
        f"from it (structure only) at round_to {' and '.join(map(str, ROUND_TOS))} and time those",
    )
    args = p.parse_args()
    rows = []
    for name in NAMES:
        rows.append(bench_one(MODELS / name, args))
        for r in ROUND_TOS if args.baseline else ():
            model = repruned(MODELS / name, args.baseline, r)
            rows.append(
                bench_pair(f"{name}, re-pruned, round_to {r}", MODELS / name, model, r, args)
            )
    print(
        f"CPU latency, {args.threads} threads, median of {args.runs} runs after {args.warmup} "
        f"warm-up; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs"
    )
    print(table(rows))
    result = {
        "threads": args.threads,
        "runs": args.runs,
        "warmup": args.warmup,
        "baseline": None if args.baseline is None else str(args.baseline),
        "rows": rows,
    }
    print(json.dumps(result))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
