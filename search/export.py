"""`prunetune export`: one trial's files (schedule.yaml, pruned.pt, widths.json, metrics.json), a
short report.md about it, and, from MLflow, the search's plots and report.html."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pruning import schedule as schedule_io
from pruning.models import load_pruned, save_pruned
from pruning.onnx_export import ONNX_FILE, OnnxExport, OnnxVerificationError, export_pruned
from search.trials import TrialRow
from trainables import mlflow_models, tracking

FILES = ("schedule.yaml", "pruned.pt", "widths.json", "metrics.json")  # from the trial's final/


def export_trial(uri: str, row: TrialRow, out: Path, how: str) -> dict[str, Any]:
    """The trial's FILES and report.md in `out`; returns its metrics (with where they came from).
    `uri` "" and `row.checkpoint` set: the files come from the trial's Ray checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".download"
    if row.run_id:
        final = tracking.download(uri, row.run_id, "final", staging)
    else:  # MLflow unreachable: the bundle the trial also put in its Ray checkpoint
        final = Path(row.checkpoint) / "final"
    for name in FILES[2:]:
        shutil.copyfile(final / name, out / name)
    # Read and written again: a search from before the model registry kept a plain VGG19 state
    # dict; the export is always structure + weights, so load_pruned rebuilds any model.
    model = load_pruned(final / FILES[1])
    save_pruned(out / FILES[1], model, model.prunetune_spec)
    # Re-written, not copied: the run section's paths become relative to `out` where they can
    # (pruning.run_info), so the exported file names no folder of this machine.
    schedule, run = schedule_io.load(final / FILES[0])
    schedule_io.save(out / FILES[0], schedule, run)
    shutil.rmtree(staging, ignore_errors=True)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics |= {"run_id": row.run_id, "trial_id": row.trial_id, "pick": how, "tracking_uri": uri}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    model_text = run.model.describe() if run and run.model else ""
    (out / "report.md").write_text(trial_summary_md(row, how, out, model_text))
    return metrics


def export_onnx(out: Path, macs_speedup: float | None = None) -> OnnxExport:
    """ONNX_FILE beside the exported files, verified with onnxruntime on the val images of the
    data in schedule.yaml's run section, with its line in report.md (a failure's too)."""
    _, run = schedule_io.load(out / FILES[0])
    try:
        result = export_pruned(out / FILES[1], out / ONNX_FILE, run, macs_speedup=macs_speedup)
    except OnnxVerificationError as err:
        _add_to_report(out, f"- ONNX: verification FAILED: {err}")
        raise
    _add_to_report(out, result.report_line())
    return result


def register(
    uri: str, name: str, row: TrialRow, out: Path, metrics: dict[str, Any]
) -> mlflow_models.Registered:
    """The trial's logged model as a new version of the registered model `name`, tagged with
    its speed-ups, accuracy and schedule (and its search, by trainables.mlflow_models). Runs
    after the files are written: an error names the folder that holds them."""
    tags = {
        "macs_speedup": f"{row.speedup:.4f}",
        "val_acc": f"{row.val_acc:.4f}",
        "schedule": row.schedule,
        "trial_id": row.trial_id,
    }
    if metrics.get("latency_speedup") is not None:  # the trial measured its latency
        tags["latency_speedup"] = f"{metrics['latency_speedup']:.4f}"
    try:
        registered = mlflow_models.register(
            uri, name, row.run_id, out / FILES[1], tags, row.speedup
        )
    except (RuntimeError, ValueError) as err:
        raise type(err)(f"{err} (the exported files are in {out})") from None
    _add_to_report(out, f"- MLflow Model Registry: `{registered.uri}` (at {uri})")
    return registered


def _add_to_report(out: Path, line: str) -> None:
    with (out / "report.md").open("a") as f:
        f.write(f"\n{line}\n")


def _latency_line(row: TrialRow) -> str:
    """The measured speed-up beside the MACs one (metrics.json has every batch size), or ''
    when the search measured no latency."""
    if row.latency_speedup != row.latency_speedup:  # NaN
        return ""
    return (
        f"- measured latency {row.latency_ms:.3g} ms per batch, {row.latency_speedup:.2f}x "
        "faster than the unpruned model (same process and threads, first of latency.batches; "
        "metrics.json: latency_ms_b<batch>, latency_speedup_b<batch>)\n"
    )


def trial_summary_md(row: TrialRow, how: str, out: Path, model: str = "") -> str:
    """report.md: what was exported, its numbers, and how to replay it."""
    return (
        f"# Exported pruning schedule ({how})\n\n"
        + (f"- model: {model}\n" if model else "")
        + f"- trial `{row.trial_id}`, MLflow run `{row.run_id}`\n"
        f"- schedule: {row.schedule}\n"
        f"- validation accuracy {row.val_acc:.2%} at {row.speedup:.3f}x MACs speed-up "
        f"({row.macs / 1e6:.2f}M MACs, {row.params / 1e6:.3f}M params)\n"
        + _latency_line(row)
        + f"- cost: {row.train_tmacs:.4g} TMACs of fine-tune compute (10^12 MACs), "
        f"{row.epochs_used:g} fine-tune epochs, {row.train_seconds:.0f} s of training\n\n"
        "Files: `schedule.yaml` (the recipe, with the data, seed and baseline it ran on), "
        "`pruned.pt` (the pruned model as structure + weights, no pickles: "
        "`pruning.models.load_pruned(path)` rebuilds it), `widths.json`, "
        "`metrics.json`.\n\n"
        f"Replay it: `prunetune replay {out / 'schedule.yaml'}`\n"
    )
