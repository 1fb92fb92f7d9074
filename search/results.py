"""Reading trials back from MLflow: the Pareto front, tagging it, and export."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.pareto import Pick, choose, non_dominated
from trainables import tracking

DIRECTIONS = ("maximize", "minimize")  # val_acc, cost


@dataclass(frozen=True)
class TrialRow:
    run_id: str
    trial_id: str
    status: str  # MLflow run status
    completed: bool  # reached the last stage of its schedule
    val_acc: float
    cost: float  # fine-tune (+ sparse) epochs
    speedup: float
    macs: float
    params: float
    train_seconds: float
    schedule: str
    reference: bool  # Torch-Pruning's one-shot recipe, run as the search's first trial
    checkpoint: str = ""  # rows read from Ray's storage (run_id ""): the trial's checkpoint

    @property
    def usable(self) -> bool:
        """Only trials that ran their whole schedule: ASHA-stopped or failed ones never count."""
        return self.completed and self.status == "FINISHED"


def rows_from_runs(runs: list[Any]) -> list[TrialRow]:
    rows = []
    for run in runs:
        m, tags = run.data.metrics, run.data.tags
        rows.append(
            TrialRow(
                run_id=run.info.run_id,
                trial_id=tags.get(tracking.TRIAL_TAG, "?"),
                status=run.info.status,
                completed=m.get("completed", 0.0) == 1.0,
                val_acc=m.get("val_acc", float("nan")),
                cost=m.get("cost", float("nan")),
                speedup=m.get("speedup", float("nan")),
                macs=m.get("macs", float("nan")),
                params=m.get("params", float("nan")),
                train_seconds=m.get("train_seconds", float("nan")),
                schedule=tags.get("schedule", ""),
                reference=tags.get("reference") == "true",
            )
        )
    return sorted(rows, key=lambda r: r.trial_id)


def load_rows(uri: str, experiment: str, parent_id: str | None = None) -> list[TrialRow]:
    parent_id = parent_id or tracking.latest_parent(uri, experiment)
    return rows_from_runs(tracking.trial_runs(uri, experiment, parent_id))


def front(rows: list[TrialRow]) -> list[TrialRow]:
    usable = [r for r in rows if r.usable]
    if not usable:
        return []
    mask = non_dominated(np.array([[r.val_acc, r.cost] for r in usable]), DIRECTIONS)
    return sorted((r for r, on in zip(usable, mask, strict=True) if on), key=lambda r: r.cost)


def tag_front(uri: str, rows: list[TrialRow], on_front: list[TrialRow]) -> None:
    ids = {r.run_id for r in on_front}
    for r in rows:
        tracking.set_tags(uri, r.run_id, {"pareto": str(r.run_id in ids).lower()})


def format_front(rows: list[TrialRow], on_front: list[TrialRow]) -> str:
    usable = sum(r.usable for r in rows)
    lines = [
        f"{len(on_front)} of {usable} completed trials on the front "
        f"({len(rows) - usable} not completed or failed, never on it)",
        f"{'trial':<14} {'val acc':>8} {'epochs':>7} {'speed-up':>9} {'MACs':>8} "
        f"{'train s':>8}  schedule",
    ]
    lines += [_line(r) for r in on_front]
    for r in rows:
        if r.reference:
            state = "on the front" if r in on_front else "not on the front"
            lines.append(f"reference (Torch-Pruning one-shot recipe, {state}):")
            lines.append(_line(r))
    return "\n".join(lines)


def _line(r: TrialRow) -> str:
    return (
        f"{r.trial_id:<14} {r.val_acc:>8.2%} {r.cost:>7g} {r.speedup:>8.2f}x "
        f"{r.macs / 1e6:>7.2f}M {r.train_seconds:>8.0f}  {r.schedule}"
    )


def front_json(on_front: list[TrialRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in on_front]


def pick(rows: list[TrialRow], how: Pick) -> TrialRow:
    usable = [r for r in rows if r.usable]
    if not usable:
        raise ValueError("no trial completed its whole schedule: nothing to export")
    acc = np.array([r.val_acc for r in usable])
    cost = np.array([r.cost for r in usable])
    return usable[choose(acc, cost, how)]


def export(uri: str, row: TrialRow, out: Path, how: str) -> dict[str, Any]:
    """schedule.yaml, pruned.pt, widths.json, metrics.json and report.md in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".download"
    if row.run_id:
        final = tracking.download(uri, row.run_id, "final", staging)
    else:  # MLflow unreachable: the bundle the trial also put in its Ray checkpoint
        final = Path(row.checkpoint) / "final"
    for name in ("schedule.yaml", "pruned.pt", "widths.json", "metrics.json"):
        shutil.copyfile(final / name, out / name)
    shutil.rmtree(staging, ignore_errors=True)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics |= {"run_id": row.run_id, "trial_id": row.trial_id, "pick": how, "tracking_uri": uri}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "report.md").write_text(_report(row, metrics, how, out))
    return metrics


def _report(row: TrialRow, metrics: dict[str, Any], how: str, out: Path) -> str:
    return (
        f"# Exported pruning schedule ({how})\n\n"
        f"- trial `{row.trial_id}`, MLflow run `{row.run_id}`\n"
        f"- schedule: {row.schedule}\n"
        f"- validation accuracy {row.val_acc:.2%} at {row.speedup:.3f}x MACs speed-up "
        f"({row.macs / 1e6:.2f}M MACs, {row.params / 1e6:.3f}M params)\n"
        f"- cost: {row.cost:g} fine-tune epochs, {row.train_seconds:.0f} s of training\n\n"
        "Files: `schedule.yaml` (the recipe, with the data, seed and baseline it ran on), "
        "`pruned.pt` (plain state dict; `pruning.models.load_vgg19`), `widths.json`, "
        "`metrics.json`.\n\n"
        f"Replay it: `prunetune replay {out / 'schedule.yaml'}`\n"
    )
