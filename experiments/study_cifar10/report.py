"""`study.py report`: RESULTS.md, figures and the first seed's models from a finished study.

Test accuracy is computed here, once every selection is over: the held-out `test` images are
loaded for the first time in this step.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pruning import schedule as schedule_io
from pruning.data import DataSpec, load_dataset
from pruning.models import load_vgg19
from pruning.train import evaluate

ARMS = {
    "recipe": "1. Torch-Pruning recipe (one shot, then B epochs, step LR)",
    "iterative": "2. hand-made iterative (N equal stages in log speed-up, B/N epochs each)",
    "searched": "3. prunetune search (best trial by val acc, replayed on new seeds)",
}
ROOT = Path(__file__).resolve().parents[2]  # the repository: commands run from here
PACKAGES = ("torch", "torchvision", "torch-pruning", "ray", "optuna", "mlflow", "numpy")


def _runs(study: Any, arm: str) -> list[tuple[int, Path]]:
    return [(s, study.out / "arms" / arm / f"seed{s}") for s in study.c["seeds"]]


def test_accuracies(study: Any) -> dict[str, dict[int, float]]:
    """Each final model on the held-out test images (cached in test.json next to it)."""
    spec = DataSpec(**{k: v for k, v in study.data_section().items()})
    data = None
    out: dict[str, dict[int, float]] = {}
    for arm in ARMS:
        out[arm] = {}
        for seed, run in _runs(study, arm):
            cached = run / "test.json"
            if not cached.exists():
                data = data or load_dataset(spec, "cpu")
                assert data.test is not None, "the study's data has no held-out test split"
                model = load_vgg19(run / "pruned.pt")
                acc, _ = evaluate(model, data.test, data.mean, data.std, torch.device("cpu"))
                cached.write_text(json.dumps({"test_acc": acc}) + "\n")
            out[arm][seed] = json.loads(cached.read_text())["test_acc"]
    return out


def portable_command(command: str) -> str:
    """A recorded command as run from the repository root: no folder of this machine in it
    (commands.json of older runs holds absolute paths)."""
    words = [os.path.relpath(w, ROOT) if w.startswith(f"{ROOT}/") else w for w in command.split()]
    home = str(Path.home())
    return " ".join("~" + w[len(home) :] if w.startswith(f"{home}/") else w for w in words)


def _mean_std(values: list[float], scale: float = 1.0, fmt: str = ".2f") -> str:
    v = [x * scale for x in values]
    std = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):{fmt}} ± {std:{fmt}}"


def arm_rows(study: Any, tests: dict[str, dict[int, float]]) -> list[dict[str, Any]]:
    rows = []
    for arm, label in ARMS.items():
        ms = {s: json.loads((run / "metrics.json").read_text()) for s, run in _runs(study, arm)}
        rows.append(
            {
                "arm": arm,
                "label": label,
                "schedule": ms[study.c["seeds"][0]]["schedule"],
                "per_seed": ms,
                "val": [m["val_acc"] for m in ms.values()],
                "test": [tests[arm][s] for s in ms],
                "params": [m["params"] for m in ms.values()],
                "macs": [m["macs"] for m in ms.values()],
                "speedup": [m["speedup"] for m in ms.values()],
                "wall": [m["wall_seconds"] for m in ms.values()],
                "train": [m["train_seconds"] for m in ms.values()],
            }
        )
    return rows


def summary_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| arm | schedule | val acc (%) | test acc (%) | params (M) | MACs (M) | speed-up | "
        "wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | `{r['schedule']}` | {_mean_std(r['val'], 100)} | "
            f"{_mean_std(r['test'], 100)} | {_mean_std(r['params'], 1e-6, '.4f')} | "
            f"{_mean_std(r['macs'], 1e-6, '.3f')} | {_mean_std(r['speedup'], 1, '.3f')}x | "
            f"{_mean_std(r['wall'], 1, '.0f')} |"
        )
    return "\n".join(lines)


def seed_table(rows: list[dict[str, Any]], tests: dict[str, dict[int, float]]) -> str:
    lines = ["| arm | seed | val acc (%) | test acc (%) | speed-up | train s | wall s |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        for seed, m in r["per_seed"].items():
            lines.append(
                f"| {r['arm']} | {seed} | {100 * m['val_acc']:.2f} | "
                f"{100 * tests[r['arm']][seed]:.2f} | {m['speedup']:.3f}x | "
                f"{m['train_seconds']:.0f} | {m['wall_seconds']:.0f} |"
            )
    return "\n".join(lines)


def versions() -> str:
    pkgs = ", ".join(f"{p} {metadata.version(p)}" for p in PACKAGES)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    cpu = torch.get_num_threads()
    return (
        f"- packages: {pkgs}\n- python {platform.python_version()}, git commit `{commit or '?'}`\n"
        f"- machine: {platform.machine()}, {cpu} torch threads available, no GPU"
    )


def keep_models(study: Any, results: Path) -> list[str]:
    """The first seed's exported model of each arm: weights, schedule and metrics."""
    kept = []
    seed = study.c["seeds"][0]
    for arm in ARMS:
        src, dst = study.out / "arms" / arm / f"seed{seed}", results / "models" / arm
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "pruned.pt", dst / "pruned.pt")
        # metrics.json's data description names the data folder: relative to the repository.
        metrics = (src / "metrics.json").read_text().replace(f"{ROOT}/", "")
        (dst / "metrics.json").write_text(metrics)
        # Re-written, not copied: its paths become relative to the committed copy's folder.
        schedule, run = schedule_io.load(src / "schedule.yaml")
        schedule_io.save(dst / "schedule.yaml", schedule, run, project=ROOT)
        kept.append(f"`models/{arm}/` ({(dst / 'pruned.pt').stat().st_size / 1e3:.0f} kB)")
    return kept


def write_report(study: Any, results: Path) -> Path:
    from experiments.study_cifar10.figures import draw_figures

    results.mkdir(parents=True, exist_ok=True)
    tests = test_accuracies(study)
    rows = arm_rows(study, tests)
    figures = draw_figures(study, rows, results)
    models = keep_models(study, results)
    text = _markdown(study, rows, tests, figures, models)
    path = results / "RESULTS.md"
    path.write_text(text)
    print(f"wrote {path}")
    return path


def _search_cost(study: Any) -> str:
    from search.config import load_config
    from search.trials import load_rows

    config = load_config(study.out / "search.yaml")
    trials = load_rows(config.tracking_uri, config.experiment_name)
    done = [t for t in trials if t.usable]
    secs = sum(t.train_seconds for t in trials if t.train_seconds == t.train_seconds)
    wall = study.timings.get("search", float("nan"))
    return (
        f"{len(trials)} trials ({len(done)} completed, {len(trials) - len(done)} failed or "
        f"stopped), {sum(t.cost for t in done):g} fine-tune epochs in all, "
        f"{secs:.0f} s of trial training time, {wall:.0f} s of search wall time "
        f"({study.c['search']['max_concurrent']} trials at a time on this machine)"
    )


def _markdown(
    study: Any,
    rows: list[dict[str, Any]],
    tests: dict[str, dict[int, float]],
    figures: dict[str, str],
    models: list[str],
) -> str:
    c = study.c
    base = json.loads((study.baseline.parent / "metrics.json").read_text())
    notes = Path(__file__).with_name("analysis.md")  # the author's reading of these numbers
    analysis = notes.read_text().strip() if notes.exists() else ""
    commands = "\n".join(portable_command(c) for c in study.commands.values())
    figs = "\n\n".join(f"![{name}]({file})" for name, file in figures.items())
    return f"""# CIFAR-10 study: searched schedule vs. Torch-Pruning's recipe at the same budget

Generated by `make study` (`experiments/study_cifar10/study.py run` then `report`); the numbers
below are measured on this machine and rewritten on every run.

## Setup
- Data: the real CIFAR-10 training split (JPEG copy, 50,000 images). {c["data"]["test_per_class"]}
  images per class are held out as **test** (never seen by any selection); from the rest,
  {c["data"]["val_size"]} images are carved (stratified, seed {c["data"]["split_seed"]}) as
  **val**, which pretraining's best epoch, the search and the pick use; training uses a
  stratified subset of {c["data"]["train_subset"]} images.
- Model: VGG19 at width {c["width"]}, pretrained with `prunetune pretrain` for
  {base["epochs"]} epochs (lr {c["pretrain"]["lr"]}, {c["pretrain"]["lr_schedule"]}):
  **baseline val acc {100 * base["val_acc"]:.2f}%** (best epoch {base["best_epoch"]}).
- Target: {c["target_speedup"]}x MACs speed-up. Budget B = {c["budget_epochs"]} fine-tune
  epochs for every arm and every search trial.
- Arms: {"; ".join(ARMS.values())}. Final runs use seeds {c["seeds"]} (the search used seed 0),
  {c["threads"]} torch thread(s) each, {c["parallel"]} at a time.
- Search: {_search_cost(study)}.

## Results (mean ± std over {len(c["seeds"])} seeds)
{summary_table(rows)}

Per seed:

{seed_table(rows, tests)}

{analysis}

## Figures
{figs}

## Models
The first seed's final model of each arm (plain state dict, `pruning.models.load_vgg19`, with the
schedule file that reproduces it): {", ".join(models)}. Their `run` sections name the data and
the baseline relative to the file (the `runs/study_cifar10/` folder of a `make study` run), with
the baseline's sha256: `prunetune replay` says so when the baseline it finds is another one.

## Exact commands
```
make study
{commands}
```

## Versions
{versions()}
"""
