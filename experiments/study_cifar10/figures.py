"""The study's figures, drawn with prunetune's own plots (search/report/plots.py) where one fits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pruning import schedule as schedule_io
from pruning.prune import channel_floor
from search.pareto import front
from search.report.plots import (
    StagePoint,
    plot_front,
    plot_schedule_accuracy,
    plot_widths,
    pyplot,
    save,
)
from search.trials import load_rows


def _first_seed(study: Any, arm: str) -> Path:
    return study.out / "arms" / arm / f"seed{study.c['seeds'][0]}"


def _points(metrics: dict[str, Any]) -> list[StagePoint]:
    return [
        StagePoint(
            stage=s["stage"],
            speedup=s["speedup"],
            epochs_before=s["epochs_used"] - s["epochs"],
            epochs_after=s["epochs_used"],
            acc_after_prune=s["val_acc_after_prune"],
            acc=s["val_acc"],
        )
        for s in metrics["stages"]
    ]


def search_front(study: Any, path: Path) -> Path:
    from search.config import load_config

    config = load_config(study.out / "search.yaml")
    rows = load_rows(config.tracking_uri, config.experiment_name)
    usable = [r for r in rows if r.usable]
    best = max(usable, key=lambda r: r.val_acc)
    return plot_front(rows, front(rows), path, pick=best, pick_label="pick (best val acc)")


def widths(study: Any, arm: str, path: Path) -> list[str]:
    run = _first_seed(study, arm)
    metrics = json.loads((run / "metrics.json").read_text())
    schedule, _ = schedule_io.load(run / "schedule.yaml")
    output = list(metrics["original_widths"])[-1]  # the classes: never pruned
    original = {k: v for k, v in metrics["original_widths"].items() if k != output}
    kept = {k: metrics["stages"][-1]["widths"][k] for k in original}
    floors = {
        name: channel_floor(c, schedule.min_channels, schedule.min_channel_ratio, schedule.round_to)
        for name, c in original.items()
    }
    title = f"{arm}: channels kept per layer at {metrics['speedup']:.2f}x ({schedule.summary()})"
    return plot_widths(kept, original, floors, path, title)


def arms_accuracy(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(rows):
        for offset, key, marker in ((-0.12, "val", "o"), (0.12, "test", "s")):
            values = [100 * v for v in r[key]]
            ax.scatter([i + offset] * len(values), values, marker=marker, color=f"C{i}", s=40)
            ax.hlines(sum(values) / len(values), i + offset - 0.08, i + offset + 0.08, "k")
    ax.scatter([], [], marker="o", c="w", edgecolors="k", label="val (selection split)")
    ax.scatter([], [], marker="s", c="w", edgecolors="k", label="test (held out)")
    ax.set_xticks(range(len(rows)), [r["arm"] for r in rows])
    ax.set_ylabel("accuracy (%) at the target speed-up")
    ax.set_title("final accuracy per seed (bar: mean)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def draw_figures(study: Any, rows: list[dict[str, Any]], results: Path) -> dict[str, str]:
    """name -> file (relative to results) of every figure RESULTS.md shows."""
    figures = {
        "final accuracy per arm and seed": arms_accuracy(rows, results / "arms_accuracy.png"),
        "the search's trials: accuracy vs. cost": search_front(study, results / "search_front.png"),
    }
    curves = {
        r["arm"]: _points(json.loads((_first_seed(study, r["arm"]) / "metrics.json").read_text()))
        for r in rows
    }
    base = json.loads((_first_seed(study, rows[0]["arm"]) / "metrics.json").read_text())
    figures["accuracy through each arm's schedule (first seed)"] = plot_schedule_accuracy(
        curves, results / "schedules.png", "accuracy through the schedule", base["base_val_acc"]
    )
    for r in rows:
        path = results / f"widths_{r['arm']}.png"
        widths(study, r["arm"], path)
        figures[f"per-layer widths: {r['arm']}"] = path
    return {name: Path(p).name for name, p in figures.items()}
