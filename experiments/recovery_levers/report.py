"""`ablation.py report`: RESULTS.md, the figures and the committed baseline, from the runs.

Test accuracy is computed here, after every selection (the cosine lr) is over: the held-out test
images are read for the first time in this step. Only (arm, budget) cells whose every seed
finished are reported; the others are named as missing.
"""

from __future__ import annotations

import json
import platform
import shutil
import statistics
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pruning.data import DataSpec, load_dataset
from pruning.models import load_pruned
from pruning.train import evaluate
from search.report.plots import pyplot, save

PACKAGES = ("torch", "torchvision", "torch-pruning", "numpy")
Cell = dict[str, Any]  # one arm at one budget: per-seed lists of the measured values


class TestSet:
    """The held-out test split, loaded on first use only; a run's accuracy on it is cached in
    the run's test.json (the strategies benchmark uses it too)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec, self.data = spec, None

    def accuracy(self, run: Path) -> float:
        cached = run / "test.json"
        if not cached.exists():
            self.data = self.data or load_dataset(DataSpec(**self.spec), "cpu")
            assert self.data.test is not None, "the data tree has no held-out test split"
            model = load_pruned(run / "pruned.pt")
            d, cpu = self.data, torch.device("cpu")
            acc, _ = evaluate(model, d.test, d.mean, d.std, cpu)
            cached.write_text(json.dumps({"test_acc": acc}) + "\n")
        return json.loads(cached.read_text())["test_acc"]


def _finished(run: Path) -> dict[str, Any] | None:
    path = run / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    return metrics if metrics.get("completed") == 1.0 else None


def collect(ab: Any) -> tuple[list[Cell], list[str]]:
    """The finished cells (every seed done) and the names of the unfinished ones."""
    from experiments.recovery_levers.ablation import ARMS

    tests = TestSet(ab.data())
    cells, missing = [], []
    for budget in ab.c["budgets"]:
        for arm in ARMS:
            if ab.schedule(arm, budget, lr=0.01) is None:
                continue  # the arm does not fit in this budget (the report says where it ran)
            runs = [ab.out / "runs" / arm / f"b{budget}" / f"seed{s}" for s in ab.c["seeds"]]
            found = [_finished(r) for r in runs]
            if not all(found):
                missing.append(f"{arm} at budget {budget}")
                continue
            first = [m["stages"][0] for m in found]
            cells.append(
                {
                    "arm": arm,
                    "budget": budget,
                    "schedule": found[0]["schedule"],
                    "val": [m["val_acc"] for m in found],
                    "test": [tests.accuracy(r) for r in runs],
                    "tmacs": [m["train_tmacs"] for m in found],
                    "train_s": [m["train_seconds"] for m in found],
                    "wall_s": [m["wall_seconds"] for m in found],
                    "speedup": [m["speedup"] for m in found],
                    "after_prune": [s["val_acc_after_prune"] for s in first],
                    "after_recal": [s["val_acc_after_recal"] for s in first],
                }
            )
    return cells, missing


def ms(values: list[float], scale: float = 100.0, fmt: str = ".2f") -> str:
    """mean ± sample std (scaled; accuracies to %)."""
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:{fmt}} ± {std:{fmt}}"


def welch_t(a: list[float], b: list[float]) -> float:
    se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    return (statistics.mean(a) - statistics.mean(b)) / se if se > 0 else float("inf")


def table(cells: list[Cell]) -> str:
    head = (
        "| budget | arm | schedule | val acc (%) | test acc (%) | train TMACs | train s | "
        "wall s | speed-up | val right after the first prune → after BN recal (%) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {c['budget']} | {c['arm']} | `{c['schedule']}` | {ms(c['val'])} | {ms(c['test'])} "
        f"| {ms(c['tmacs'], 1.0, '.3f')} | {ms(c['train_s'], 1.0, '.0f')} "
        f"| {ms(c['wall_s'], 1.0, '.0f')} | {statistics.mean(c['speedup']):.3f}x "
        f"| {ms(c['after_prune'])} → {ms(c['after_recal'])} |"
        for c in cells
    ]
    return head + "\n".join(lines) + "\n"


def gaps(cells: list[Cell]) -> str:
    """Per budget: every arm against the recipe on test (mean gap, Welch t)."""
    out = []
    for budget in sorted({c["budget"] for c in cells}):
        at = {c["arm"]: c for c in cells if c["budget"] == budget}
        if "recipe" not in at:
            continue
        base = at["recipe"]["test"]
        for arm, c in at.items():
            if arm == "recipe":
                continue
            gap = 100 * (statistics.mean(c["test"]) - statistics.mean(base))
            out.append(
                f"| {budget} | {arm} | {gap:+.2f} | {welch_t(c['test'], base):+.1f} |"
                f" {statistics.mean(c['tmacs']) / statistics.mean(at['recipe']['tmacs']):.2f} |"
            )
    head = (
        "| budget | arm | test gap vs recipe (points) | Welch t | compute vs recipe |\n"
        "|---|---|---|---|---|\n"
    )
    return head + "\n".join(out) + "\n"


def baseline_curve(history: list[dict[str, float]], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = list(range(1, len(history) + 1))
    ax.plot(epochs, [100 * h["val_acc"] for h in history], "o-", ms=3, label="val")
    ax.plot(epochs, [100 * h["train_acc"] for h in history], "s-", ms=3, label="train")
    ax.set_xlabel("epoch (cosine lr to 0)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("baseline: VGG19 x0.25, 40,000 CIFAR-10 training images", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def accuracy_vs_compute(cells: list[Cell], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, arm in enumerate(dict.fromkeys(c["arm"] for c in cells)):
        mine = [c for c in cells if c["arm"] == arm]
        x = [statistics.mean(c["tmacs"]) for c in mine]
        y = [100 * statistics.mean(c["test"]) for c in mine]
        err = [100 * statistics.stdev(c["test"]) for c in mine]
        ax.errorbar(x, y, yerr=err, marker="os^D"[i % 4], capsize=3, label=arm, color=f"C{i}")
    ax.set_xlabel("fine-tune compute (train TMACs)")
    ax.set_ylabel("held-out test accuracy (%), mean ± std")
    ax.set_title("recovery at 8.84x MACs against compute (3 seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def keep_baseline(ab: Any, results: Path) -> dict[str, Any]:
    """The baseline's state dict and metrics, committed beside RESULTS.md (no machine paths)."""
    metrics = json.loads((ab.baseline.parent / "metrics.json").read_text())
    metrics.pop("checkpoint", None)
    # the data line names the folder it read: keep it relative to the repository
    metrics["data"] = metrics["data"].replace(str(ab.study.data_root), "runs/recovery/data")
    metrics["config"]["out"] = "experiments/recovery_levers/baseline"
    metrics["config"]["data"]["root"] = "runs/recovery/data"
    keep = results / "baseline"
    keep.mkdir(exist_ok=True)
    shutil.copyfile(ab.baseline, keep / "baseline.pt")
    (keep / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def versions() -> str:
    found = ", ".join(f"{p} {metadata.version(p)}" for p in PACKAGES)
    return f"{found}; Python {platform.python_version()}"


def write_report(ab: Any, results: Path) -> Path:
    cells, missing = collect(ab)
    base = keep_baseline(ab, results)
    baseline_curve(base["history"], results / "baseline_curve.png")
    if cells:
        accuracy_vs_compute(cells, results / "accuracy_vs_compute.png")
    lr_pick = {
        p.parent.name: json.loads((p / "metrics.json").read_text())["val_acc"]
        for p in sorted((ab.out / "runs" / "lr_pick").glob("lr*/seed0"))
    }
    text = _markdown(ab, base, cells, missing, lr_pick)
    path = results / "RESULTS.md"
    path.write_text(text)
    return path


def _markdown(
    ab: Any, base: dict[str, Any], cells: list[Cell], missing: list[str], lr_pick: dict
) -> str:
    c, last = ab.c, base["history"][-5:]
    picks = ", ".join(f"{k[2:]}: {100 * v:.2f}%" for k, v in lr_pick.items())
    return f"""# Recovery levers at equal compute (issue 11)

Generated by `experiments/recovery_levers/ablation.py report` from the runs of `... run`.
What the numbers mean is in `analysis.md`.

## Setup
- Data: the real CIFAR-10 training JPEGs, with the CIFAR-10 study's splits: 500 images per class
  held out as **test** (seed {c["data"]["holdout_seed"]}), {c["data"]["val_size"]} carved as
  **val** (seed {c["data"]["split_seed"]}); fine-tuning uses the study's stratified
  {c["data"]["train_subset"]}-image training subset.
- Baseline: VGG19 x{c["width"]} pretrained on all 40,000 remaining training images,
  {c["pretrain"]["epochs"]} epochs, lr {c["pretrain"]["lr"]} {c["pretrain"]["lr_schedule"]}:
  **val acc {100 * base["val_acc"]:.2f}%** (best epoch {base["best_epoch"]});
  the last five epochs' val: {", ".join(f"{100 * h['val_acc']:.2f}" for h in last)} (%).
  Curve: `baseline_curve.png`. Weights and history: `baseline/`.
- Target 8.84x MACs. Budgets: {c["budgets"]} plain one-shot fine-tune epochs' worth of compute
  (train TMACs, pruning.compute). Seeds {c["seeds"]}; {c["threads"]} torch thread per run,
  {c["parallel"]} runs at a time.
- The cosine arm's lr was chosen on val (seed 0, budget {c["budgets"][len(c["budgets"]) // 2]}):
  {picks}.

## Results (mean ± std over {len(c["seeds"])} seeds)
{table(cells)}
Missing (not every seed finished): {", ".join(missing) or "none"}.

## Gaps to the recipe on test
{gaps(cells)}
![accuracy vs compute](accuracy_vs_compute.png)

![baseline curve](baseline_curve.png)

## Machine
2 vCPUs, no GPU; {versions()}. Wall times were measured while other jobs shared the machine.
"""
